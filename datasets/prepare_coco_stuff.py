#!/usr/bin/env python3
"""COCO-Stuff: convert the ``stuffthingmaps_trainval2017`` label PNGs to the 171 classes of
``coco.json``.

Input:  <root>/annotations/{train2017,val2017}/*.png, from stuffthingmaps_trainval2017.zip: per
        pixel the COCO category id minus 1 (0 = person ... 181 = wood), 255 = unlabelled.
Output: <root>/annotations_detectron2/{train2017,val2017}/*.png: 0..170, 255 = ignored.
The images stay in <root>/images/{train2017,val2017} (COCO 2017's train2017.zip and val2017.zip).
"""
import functools
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from _common import argument_parser, convert_label_folder, datasets_root, read_single_channel, require, save_label

# COCO category ids 1..182 that no annotation uses: 11 of the 91 thing ids. The 80 used thing ids
# and the 91 stuff ids 92..182 are, in increasing order, the 171 classes of coco.json.
UNUSED_COCO_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
RAW_VALUES = [i - 1 for i in range(1, 183) if i not in UNUSED_COCO_IDS]  # PNG value = id - 1
assert len(RAW_VALUES) == 171

IGNORE = 255


def lookup_table() -> np.ndarray:
    """Raw PNG value -> class index (255 for unlabelled and unused values)."""
    table = np.full(256, IGNORE, dtype=np.uint8)
    table[RAW_VALUES] = np.arange(len(RAW_VALUES))
    return table


def convert(paths: Tuple[Path, Path], table: np.ndarray) -> None:
    source, target = paths
    save_label(table[read_single_channel(source)], target)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--root", type=Path, default=datasets_root() / "coco-stuff",
        help="the coco-stuff folder (default: $DETECTRON2_DATASETS/coco-stuff)",
    )
    parser.add_argument("--splits", nargs="+", default=["train2017", "val2017"])
    args = parser.parse_args(argv)

    table = lookup_table()
    for split in args.splits:
        source_dir = require(
            args.root / "annotations" / split, f"COCO-Stuff {split} label folder",
            "Unzip stuffthingmaps_trainval2017.zip into <root>/annotations "
            "(see datasets/README.md).",
        )
        target_dir = args.root / "annotations_detectron2" / split
        convert_label_folder(functools.partial(convert, table=table), source_dir, target_dir, args.workers,
                             f"coco-stuff {split}")


if __name__ == "__main__":
    main()
