"""What the command-line demo and the web page share: the model they run, the files they write, and
how they log.

Without a config file both run the best model that can be downloaded today, CAT-Seg's ViT-B
(``catseg_vitb.yaml`` with ``model_base.pth``, fetched once into ``~/.cache/lmseg`` or
``$LMSEG_CACHE``); where it cannot be fetched they say which file to put where and run the offline
installation check (``tiny.yaml``, an untrained model) instead.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..checkpoint import MissingWeightsError, check_weights_file
from ..api import Segmentation, Segmenter
from ..config import get_config_file
from ..download import CATSEG_VITB_URL, DownloadError, fetch, place_hint
from ..io import atomic_write
from ..visualize import draw_overlay

DEFAULT_CONFIG = get_config_file("catseg_vitb.yaml")
OFFLINE_CONFIG = get_config_file("tiny.yaml")
# The photo of `make demo` and of the web page's example: a CC0 photograph (coffee.jpg.license).
EXAMPLE_IMAGE = Path(__file__).resolve().parent / "coffee.jpg"
EXAMPLE_VOCABULARY = "cup|mug,coffee,saucer|plate,spoon,table,background"


class UsageError(Exception):
    """Nothing can be done (bad vocabulary, no inputs, no model): exit status 2."""


def build_segmenter(config_file: Optional[str], weights: Optional[str], opts: Sequence[str] = ()) -> Segmenter:
    """The demo's model: ``config_file`` with ``weights`` (a path or URL), or by default CAT-Seg's
    ViT-B, downloaded once (the offline check where that fails). Raises :class:`UsageError`."""
    config = config_file
    if config is None:
        config = DEFAULT_CONFIG
        if weights is None:
            try:
                weights = str(fetch(CATSEG_VITB_URL))
            except DownloadError as err:
                print(
                    f"Cannot fetch the default weights: {err}.\nTo get real results, {place_hint(CATSEG_VITB_URL)}.\n"
                    f"Running the offline installation check instead, on {Path(OFFLINE_CONFIG).name} (an untrained model).",
                    file=sys.stderr,
                )
                config = OFFLINE_CONFIG
    if weights and weights.startswith(("http://", "https://")):
        url = weights
        try:
            weights = str(fetch(url))
        except DownloadError as err:
            raise UsageError(f"{err}\nOr {place_hint(url)}") from None
    weights = weights and os.path.expanduser(weights)
    try:
        check_weights_file(weights, key="--weights")
    except MissingWeightsError as err:
        raise UsageError(str(err)) from None
    try:
        return Segmenter.from_config(config, weights=weights, opts=list(opts))
    except (FileNotFoundError, KeyError, ValueError, AssertionError, RuntimeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise UsageError(f"cannot build the model from {config}: {message}") from None


def write_outputs(image: np.ndarray, result: Segmentation, stem: Path, source: str) -> Tuple[List[int], List[int]]:
    """Write STEM.overlay.jpg, STEM.labels.png and STEM.json; return the legend's (shown, summarised)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    overlay, legend = draw_overlay(image, result.label_map, result.names, result.present, result.pixel_share)
    labels = result.label_map
    label_image = Image.fromarray(labels) if labels.dtype == np.uint8 else Image.fromarray(labels.astype(np.uint16))
    atomic_write(f"{stem}.overlay.jpg", lambda f: Image.fromarray(overlay).save(f, format="JPEG", quality=90))
    atomic_write(f"{stem}.labels.png", lambda f: label_image.save(f, format="PNG", compress_level=3))
    summary = {"input": source, **result.to_dict()}
    summary["legend"] = {
        "shown": [result.names[i] for i in legend.shown],
        "summarised": [result.names[i] for i in legend.summarised],
    }
    text = json.dumps(summary, ensure_ascii=False, indent=1)
    atomic_write(f"{stem}.json", lambda f: f.write(text.encode("utf-8")))
    return legend.shown, legend.summarised


def configure_logging() -> None:
    """Warnings to stderr as one plain line each (unless the caller has set logging up)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    # open_clip's own note on a randomly initialised CLIP repeats what lmseg says about the weights
    handler.addFilter(lambda record: not record.getMessage().startswith("No pretrained weights loaded"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
