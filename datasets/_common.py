"""Helpers shared by the ``prepare_*.py`` scripts of this folder (plain numpy/Pillow code, so the
scripts run without LMSeg installed)."""
import argparse
import os
import sys
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, List, Sequence, Tuple, TypeVar

import numpy as np
from PIL import Image

T = TypeVar("T")
R = TypeVar("R")


def datasets_root() -> Path:
    """``$DETECTRON2_DATASETS``, default ``datasets`` (relative to the working directory)."""
    return Path(os.getenv("DETECTRON2_DATASETS", "datasets"))


def argument_parser(description: str) -> argparse.ArgumentParser:
    """A parser whose help starts with the script's docstring, and has ``--workers``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workers", type=int, default=1,
        help="processes converting files in parallel (default: 1)",
    )
    return parser


def require(path: Path, what: str, hint: str = "See datasets/README.md.") -> Path:
    """Exit with a message naming ``path`` if it does not exist."""
    if not path.exists():
        raise SystemExit(f"error: {what} not found: {path}\n{hint}")
    return path


def run(function: Callable[[T], R], items: Sequence[T], workers: int, desc: str) -> List[R]:
    """``[function(item) for item in items]``, in ``workers`` processes, printing progress."""
    total = len(items)
    results: List[R] = []
    step = max(1, total // 20)

    def report(done: int) -> None:
        if done % step == 0 or done == total:
            print(f"{desc}: {done}/{total}", file=sys.stderr, flush=True)

    if workers > 1:
        with Pool(workers) as pool:
            for result in pool.imap(function, items, chunksize=max(1, min(64, total // workers))):
                results.append(result)
                report(len(results))
    else:
        for item in items:
            results.append(function(item))
            report(len(results))
    return results


def convert_label_folder(
    convert: Callable[[Tuple[Path, Path]], None], source_dir: Path, target_dir: Path, workers: int, desc: str
) -> None:
    """Convert every label PNG of ``source_dir`` into the file of the same name in ``target_dir``,
    calling ``convert((source, target))`` in ``workers`` processes."""
    sources = sorted(source_dir.glob("*.png"))
    if not sources:
        raise SystemExit(f"error: no label PNGs in {source_dir}")
    pairs = [(source, target_dir / source.name) for source in sources]
    run(convert, pairs, workers, desc)
    print(f"wrote {len(pairs)} labels to {target_dir}")


def read_single_channel(path: Path) -> np.ndarray:
    """A label PNG's stored values (grey levels or palette indices), checked to be 8-bit."""
    with Image.open(path) as image:
        if image.mode not in ("L", "P"):
            raise ValueError(f"{path}: expected an 8-bit single-channel PNG, got mode {image.mode}")
        return np.array(image)


def save_label(label: np.ndarray, path: Path) -> None:
    """Save a label: uint8 as an 8-bit PNG/TIFF, uint16 as a 16-bit one (by the extension)."""
    if label.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"labels are saved as uint8 or uint16, not {label.dtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label).save(path)
