#!/usr/bin/env python3
"""ADE20K-150 (ADEChallengeData2016): shift the labels so that class i of ``ade150.json`` is i.

Input:  <root>/annotations/validation/*.png: 0 = unlabelled, 1..150 = classes.
Output: <root>/annotations_detectron2/validation/*.png: value - 1, so 0..149 and 255 = ignored.
The images stay in <root>/images/validation.
"""
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from _common import argument_parser, convert_label_folder, datasets_root, read_single_channel, require, save_label


def convert(paths: Tuple[Path, Path]) -> None:
    source, target = paths
    label = read_single_channel(source)
    if label.max(initial=0) > 150:
        raise ValueError(f"{source}: values above 150 ({label.max()}); not an ADE20K-150 label")
    save_label(label - np.uint8(1), target)  # uint8 arithmetic: 0 wraps to 255


def main(argv: Optional[List[str]] = None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--root", type=Path, default=datasets_root() / "ADEChallengeData2016",
        help="the ADEChallengeData2016 folder (default: $DETECTRON2_DATASETS/ADEChallengeData2016)",
    )
    parser.add_argument(
        "--splits", nargs="+", default=["validation"],
        help="splits to convert (default: validation; 'training' also exists)",
    )
    args = parser.parse_args(argv)

    for split in args.splits:
        source_dir = require(
            args.root / "annotations" / split, f"ADE20K-150 {split} label folder",
            "Unzip ADEChallengeData2016.zip into $DETECTRON2_DATASETS (see datasets/README.md).",
        )
        target_dir = args.root / "annotations_detectron2" / split
        convert_label_folder(convert, source_dir, target_dir, args.workers, f"ade20k-150 {split}")


if __name__ == "__main__":
    main()
