#!/usr/bin/env python3
"""PASCAL VOC 2012: write the two label sets of VOC-20 and VOC-20b from SegmentationClassAug.

Input:  <root>/SegmentationClassAug/<id>.png (0 = background, 1..20 = classes, 255 = boundary /
        difficult) for the ids of <root>/ImageSets/Segmentation/val.txt.
Output: <root>/annotations_detectron2/val/<id>.png     0..19 = voc20.json, background -> 255
        <root>/annotations_detectron2_bg/val/<id>.png  0..19 = voc20.json, background -> 20
A label whose pixels are all ignored is not written (its image then drops out of the dataset,
which lists the label files): in the first set that happens to images of background only.
"""
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from _common import argument_parser, datasets_root, read_single_channel, require, run, save_label

IGNORE = 255
OUTPUTS = {"annotations_detectron2": IGNORE, "annotations_detectron2_bg": 20}  # folder: background


def lookup_table(background: int) -> np.ndarray:
    """SegmentationClassAug value -> label value: classes 1..20 -> 0..19, 0 -> background."""
    table = np.full(256, IGNORE, dtype=np.uint8)
    table[1:21] = np.arange(20)
    table[0] = background
    return table


def convert(item: Tuple[Path, Dict[Path, np.ndarray]]) -> List[bool]:
    """Write one image's labels; return, per output, whether it was written (not all ignored)."""
    source, targets = item
    label = read_single_channel(source)
    bad = np.setdiff1d(np.unique(label), np.r_[0:21, IGNORE])
    if bad.size:
        raise ValueError(f"{source}: values {bad.tolist()} are neither classes 0..20 nor 255")
    written = []
    for target, table in targets.items():
        converted = table[label]
        keep = bool((converted != IGNORE).any())
        if keep:
            save_label(converted, target)
        written.append(keep)
    return written


def main(argv: Optional[List[str]] = None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--root", type=Path, default=datasets_root() / "VOCdevkit" / "VOC2012",
        help="the VOC2012 folder (default: $DETECTRON2_DATASETS/VOCdevkit/VOC2012)",
    )
    parser.add_argument(
        "--labels", default="SegmentationClassAug",
        help="label folder under the root (default: SegmentationClassAug; SegmentationClass has "
        "the same values for the val split)",
    )
    parser.add_argument("--splits", nargs="+", default=["val"])
    args = parser.parse_args(argv)

    label_dir = require(
        args.root / args.labels, "VOC label folder",
        "Unzip SegmentationClassAug.zip into the VOC2012 folder (see datasets/README.md).",
    )
    tables = {folder: lookup_table(background) for folder, background in OUTPUTS.items()}
    for split in args.splits:
        id_file = require(
            args.root / "ImageSets" / "Segmentation" / f"{split}.txt", "VOC image list"
        )
        ids = [line.strip() for line in id_file.read_text().splitlines() if line.strip()]
        items = []
        for image_id in ids:
            source = require(label_dir / f"{image_id}.png", "VOC label")
            targets = {
                args.root / folder / split / f"{image_id}.png": table
                for folder, table in tables.items()
            }
            items.append((source, targets))
        written = run(convert, items, args.workers, f"voc {split}")
        for i, folder in enumerate(OUTPUTS):
            kept = sum(w[i] for w in written)
            print(
                f"wrote {kept} labels to {args.root / folder / split} "
                f"({len(ids) - kept} entirely ignored, skipped)"
            )


if __name__ == "__main__":
    main()
