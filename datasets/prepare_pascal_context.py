#!/usr/bin/env python3
"""PASCAL Context: the labels of PC-59 and PC-459 for the 5,104 validation images.

Input:  <root>/JPEGImages (VOC2010), the image list (default: pascalcontext_val.txt next to this
        script, one image id per line), and
        - PC-59:  <root>/trainval_merged.json (Detail API format: "images" with "image_id" and
          "file_name"; "annos_segmentation" with "image_id", "category_id" and an RLE
          "segmentation", painted in order);
        - PC-459: <root>/trainval/<id>.mat, whose uint16 "LabelMap" holds 1..459 (0 = unlabelled).
Output: <root>/annotations_detectron2/pc59_val/<id>.png: 0..58 = pc59.json, 255 = background
        (the other 400 classes and unlabelled pixels);
        <root>/annotations_detectron2/pc459_val/<id>.tif: uint16, LabelMap - 1 = pc459.json,
        459 = unlabelled.
"""
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import scipy.io
from pycocotools import mask as mask_util

from _common import argument_parser, datasets_root, require, run, save_label

# Category ids (= PC-459 LabelMap values) of the 59 classes of pc59.json, in its order.
PC59_CATEGORY_IDS = [
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98,
    104, 105, 113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296,
    308, 324, 326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454,
    458,
]
assert len(PC59_CATEGORY_IDS) == 59
PC59_IGNORE = 255
PC459_CLASSES = 459
PC459_IGNORE = 459
SETS = ("pc59", "pc459")


def pc59_lookup_table() -> np.ndarray:
    """Category id (0..65535) -> PC-59 class, 255 for the background and other categories."""
    table = np.full(65536, PC59_IGNORE, dtype=np.uint8)
    table[PC59_CATEGORY_IDS] = np.arange(len(PC59_CATEGORY_IDS))
    return table


def decode(segmentation: Dict, height: int, width: int) -> np.ndarray:
    """An H x W bool mask from a compressed (string counts) or uncompressed (list) RLE."""
    if isinstance(segmentation["counts"], list):
        segmentation = mask_util.frPyObjects(segmentation, height, width)
    return mask_util.decode(segmentation).astype(bool)


def convert_pc59(item: Tuple[Dict, List[Dict], Path]) -> None:
    image, annotations, target = item
    height, width = image["height"], image["width"]
    categories = np.zeros((height, width), dtype=np.int64)
    for annotation in annotations:
        categories[decode(annotation["segmentation"], height, width)] = annotation["category_id"]
    save_label(pc59_lookup_table()[categories], target)


def convert_pc459(paths: Tuple[Path, Path]) -> None:
    source, target = paths
    label_map = scipy.io.loadmat(source)["LabelMap"].astype(np.int64)
    if label_map.min(initial=0) < 0 or label_map.max(initial=0) > PC459_CLASSES:
        raise ValueError(f"{source}: LabelMap values outside 0..{PC459_CLASSES}")
    label = np.where(label_map == 0, PC459_IGNORE, label_map - 1)
    save_label(label.astype(np.uint16), target)


def warn_missing(what: str, missing: List[str]) -> None:
    if missing:
        print(
            f"warning: {len(missing)} image(s) of the list have no {what} and are skipped: "
            + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""),
            file=sys.stderr,
        )


def prepare_pc59(root: Path, ids: List[str], workers: int) -> None:
    json_file = require(
        root / "trainval_merged.json", "PC-59 annotations",
        "Download trainval_merged.json into the VOC2010 folder (see datasets/README.md).",
    )
    print(f"reading {json_file} ...", file=sys.stderr)
    with open(json_file) as f:
        data = json.load(f)
    images = {Path(image["file_name"]).stem: image for image in data["images"]}
    annotations: Dict[int, List[Dict]] = {}
    for annotation in data["annos_segmentation"]:
        annotations.setdefault(annotation["image_id"], []).append(annotation)

    target_dir = root / "annotations_detectron2" / "pc59_val"
    wanted = [i for i in ids if i in images]
    warn_missing("entry in trainval_merged.json", [i for i in ids if i not in images])
    items = [
        (images[i], annotations.get(images[i]["image_id"], []), target_dir / f"{i}.png")
        for i in wanted
    ]
    run(convert_pc59, items, workers, "pascal context 59")
    print(f"wrote {len(items)} labels to {target_dir}")


def prepare_pc459(root: Path, ids: List[str], workers: int) -> None:
    mat_dir = require(
        root / "trainval", "PC-459 annotation folder",
        "Unpack trainval.tar.gz into the VOC2010 folder (see datasets/README.md).",
    )
    target_dir = root / "annotations_detectron2" / "pc459_val"
    sources = {i: mat_dir / f"{i}.mat" for i in ids}
    warn_missing(".mat file in trainval/", [i for i, path in sources.items() if not path.is_file()])
    pairs = [(path, target_dir / f"{i}.tif") for i, path in sources.items() if path.is_file()]
    run(convert_pc459, pairs, workers, "pascal context 459")
    print(f"wrote {len(pairs)} labels to {target_dir}")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--root", type=Path, default=datasets_root() / "VOCdevkit" / "VOC2010",
        help="the VOC2010 folder (default: $DETECTRON2_DATASETS/VOCdevkit/VOC2010)",
    )
    parser.add_argument(
        "--image-list", type=Path,
        default=Path(__file__).resolve().parent / "pascalcontext_val.txt",
        help="image ids to convert (default: the 5,104 validation images, pascalcontext_val.txt)",
    )
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    args = parser.parse_args(argv)

    require(
        args.root / "JPEGImages", "VOC2010 image folder",
        "Unpack VOCtrainval_03-May-2010.tar into $DETECTRON2_DATASETS (see datasets/README.md).",
    )
    list_file = require(args.image_list, "image list")
    ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if "pc59" in args.sets:
        prepare_pc59(args.root, ids, args.workers)
    if "pc459" in args.sets:
        prepare_pc459(args.root, ids, args.workers)


if __name__ == "__main__":
    main()
