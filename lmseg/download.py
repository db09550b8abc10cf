"""Weights fetched once into a local cache, with a progress bar, a size check and resumption.

The cache is ``$LMSEG_CACHE`` or ``~/.cache/lmseg``. A file is downloaded to ``<name>.part`` and
renamed to ``<name>`` only once its size matches the server's Content-Length, so a file under its
own name is complete; an interrupted download keeps its ``.part`` and the next attempt asks the
server for the rest (an HTTP range request), or starts again where the server cannot resume.
"""
from __future__ import annotations

import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

# CAT-Seg's ViT-B checkpoint (it holds CLIP as well), loaded through configs/catseg_vitb.yaml: the
# best weights a user can download today (see MODEL_ZOO.md).
CATSEG_VITB_URL = "https://huggingface.co/spaces/hamacojr/CAT-Seg-weights/resolve/main/model_base.pth"

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download that could not be completed; the message says what to do."""


def cache_dir() -> Path:
    """Where downloaded weights live: ``$LMSEG_CACHE``, else ``~/.cache/lmseg``."""
    return Path(os.environ.get("LMSEG_CACHE") or Path.home() / ".cache" / "lmseg")


def cached_path(url: str) -> Path:
    """The file ``url`` is (or would be) cached as."""
    name = os.path.basename(urlparse(url).path)
    if not name:
        raise ValueError(f"{url!r} names no file")
    return cache_dir() / name


def fetch(url: str, *, progress: bool = True, timeout: float = 30.0) -> Path:
    """The cached copy of ``url``, downloaded first if it is not there (see the module docstring).

    Raises :class:`DownloadError` when the server cannot be reached, answers with an error, or
    sends a body whose size is not the announced one (the partial file is kept for resumption).
    """
    target = cached_path(url)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the range is past the end: the partial file is useless
            part.unlink()
            return fetch(url, progress=progress, timeout=timeout)
        raise DownloadError(f"{url}: the server answered {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"cannot reach {urlparse(url).netloc} to download {target.name} ({reason})") from None
    with response:
        if response.status == 206 and not _resumes_at(response, offset):
            part.unlink()  # the server sent another part of the file: start again
            return fetch(url, progress=progress, timeout=timeout)
        total = _total_size(response)
        if response.status != 206 or offset == 0:
            offset = 0  # the server sends the whole file: start again
        mode = "ab" if offset else "wb"
        received = offset
        bar = _progress_bar(target.name, total, offset) if progress else None
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (OSError, ValueError) as err:  # a reset connection, an incomplete read
                        raise DownloadError(
                            f"the download of {target.name} was interrupted after {received:,} bytes ({err}); "
                            "run the command again to resume it"
                        ) from None
                    if not chunk:
                        break
                    f.write(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and received != total:
        if received > total:
            part.unlink()
        raise DownloadError(
            f"{target.name}: received {received:,} bytes, the server announced {total:,}; the file was not "
            "kept under its name. Run the command again to "
            + ("resume the download" if received < total else "download it afresh")
        )
    os.replace(part, target)
    return target


def place_hint(url: str) -> str:
    """Where to put the file of ``url`` by hand, for a machine without network access."""
    return (
        f"download {url}\n  on a machine with network access and put it at {cached_path(url)} "
        "(or set LMSEG_CACHE to the folder that holds it)"
    )


def _resumes_at(response, offset: int) -> bool:
    """Whether a 206 answer continues at ``offset`` (its Content-Range starts there)."""
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
    return bool(match) and int(match.group(1)) == offset


def _total_size(response) -> Optional[int]:
    """The whole file's size from Content-Range (206) or Content-Length (200), if announced."""
    if response.status == 206:
        total = response.headers["Content-Range"].rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _progress_bar(name: str, total: Optional[int], done: int):
    from tqdm import tqdm

    width = min(shutil.get_terminal_size((100, 20)).columns, 100)
    return tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024, desc=name, ncols=width)
