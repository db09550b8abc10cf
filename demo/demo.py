#!/usr/bin/env python
"""Segment your own images with any vocabulary.

    python demo/demo.py --config-file configs/catseg_vitb.yaml --input photo.jpg \
        --vocab "cat,sofa,window,floor" --output out/ MODEL.WEIGHTS model_base.pth

For each image it writes <name>_labels.png (class index per pixel, 16-bit above 255 classes),
<name>_overlay.jpg (colours and a legend) and prints the classes found with their areas. A
vocabulary comes from --vocab (comma-separated names) or --vocab-file (a JSON list of names, or a
benchmark vocabulary such as ade150). Trailing KEY VALUE pairs override the config.
"""
import argparse
import glob
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from lmseg.api import Segmenter  # noqa: E402
from lmseg.config import get_lmseg_cfg  # noqa: E402
from lmseg.data import load_vocabulary  # noqa: E402
from lmseg.visualize import classes_by_area, draw_overlay  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", required=True, nargs="+", help="image files, folders or glob patterns")
    vocab = parser.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--vocab", help='comma-separated class names, e.g. "cat,sofa,window"')
    vocab.add_argument("--vocab-file", help="a JSON list of class names, or a benchmark vocabulary (ade150, coco, ...)")
    parser.add_argument("--output", default="demo_output", help="folder for the results (default: demo_output)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def vocabulary(args):
    if args.vocab is not None:
        names = [n.strip() for n in args.vocab.split(",")]
        if not all(names):
            raise ValueError(f"--vocab {args.vocab!r} has an empty name; separate names with single commas")
        return names
    return load_vocabulary(args.vocab_file)


def image_paths(inputs):
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(p for p in glob.glob(os.path.join(item, "*")) if p.lower().endswith(IMAGE_SUFFIXES))
        elif any(c in item for c in "*?["):
            paths += sorted(glob.glob(item))
        else:
            paths.append(item)
    return paths


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        names = vocabulary(args)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    paths = image_paths(args.input)
    if not paths:
        print(f"error: no images found in {' '.join(args.input)}", file=sys.stderr)
        return 2
    predictor = Segmenter(get_lmseg_cfg(args.config_file, args.opts))
    try:
        predictor.set_vocabulary(names)
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    failed = 0
    for path in paths:
        try:
            image = np.asarray(Image.open(path).convert("RGB"))
        except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
            print(f"{path}: skipped, cannot read it as an image ({err})", file=sys.stderr)
            failed += 1
            continue
        labels = predictor(image).label_map
        stem = os.path.join(args.output, Path(path).stem)
        Image.fromarray(labels.astype(np.uint8 if len(names) <= 256 else np.uint16)).save(stem + "_labels.png")
        Image.fromarray(draw_overlay(image, labels, names)).save(stem + "_overlay.jpg", quality=90)
        found = ", ".join(f"{name} {frac:.0%}" for _, name, frac in classes_by_area(labels, names))
        print(f"{path}: {found} -> {stem}_labels.png, {stem}_overlay.jpg")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
