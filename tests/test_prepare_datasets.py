"""The datasets/prepare_*.py scripts on tiny inputs written in the official formats: raw-id label
PNGs (COCO-Stuff, ADE20K-150), the ADE20K 2021 index pickle with its _seg.png files, Pascal
Context's RLE JSON and .mat files, VOC's SegmentationClassAug."""
import importlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from detectron2.data import DatasetCatalog
from PIL import Image
from pycocotools import mask as mask_util

from lmseg.data import load_vocabulary, read_label, register_all_benchmarks
from tests.helpers.synthetic_datasets import write_image

DATASETS_DIR = Path(__file__).resolve().parents[1] / "datasets"


@pytest.fixture
def scripts(monkeypatch):
    """Import a prepare script as a module (they import their sibling _common.py)."""
    monkeypatch.syspath_prepend(str(DATASETS_DIR))
    return importlib.import_module


def _png(path: Path, values, mode: str = "L") -> None:
    image = Image.fromarray(np.asarray(values, dtype=np.uint8))
    if mode == "P":
        image = image.convert("P")  # palette indices equal the grey levels written
        image.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


# ---------------------------------------------------------------------------------------------
# COCO-Stuff


def test_coco_stuff_raw_ids_become_the_171_classes(scripts, tmp_path):
    prepare = scripts("prepare_coco_stuff")
    root = tmp_path / "coco-stuff"
    # Raw value = COCO id - 1: 0 person, 11 (id 12, unused), 12 stop sign, 90 (id 91, unused),
    # 91 banner (first stuff class), 181 wood (last), 255 unlabelled, 25 (id 26, unused), 182.
    raw = [[0, 11, 12], [90, 91, 181], [255, 25, 182]]
    for split in ("train2017", "val2017"):
        _png(root / "annotations" / split / "000000000139.png", raw)
    prepare.main(["--root", str(root), "--workers", "2"])

    coco = load_vocabulary("coco")
    assert (coco[0], coco[11], coco[80], coco[170]) == ("person", "stop sign", "banner", "wood")
    for split in ("train2017", "val2017"):
        out = read_label(root / "annotations_detectron2" / split / "000000000139.png")
        assert out.dtype == np.uint8
        assert out.tolist() == [[0, 255, 11], [255, 80, 170], [255, 255, 255]]


def test_coco_stuff_command_line_uses_detectron2_datasets(tmp_path):
    root = tmp_path / "coco-stuff"
    _png(root / "annotations" / "val2017" / "a.png", [[91, 0]])
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path))
    script = str(DATASETS_DIR / "prepare_coco_stuff.py")
    done = subprocess.run([sys.executable, script, "--splits", "val2017"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert read_label(root / "annotations_detectron2" / "val2017" / "a.png").tolist() == [[80, 0]]
    # A missing input is named, with the exit status of an error.
    done = subprocess.run([sys.executable, script, "--splits", "train2017"], env=env,
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert str(root / "annotations" / "train2017") in done.stderr


# ---------------------------------------------------------------------------------------------
# ADE20K-150 and ADE20K-847


def test_ade20k_150_labels_minus_one(scripts, tmp_path):
    prepare = scripts("prepare_ade20k_150")
    root = tmp_path / "ADEChallengeData2016"
    _png(root / "annotations" / "validation" / "ADE_val_00000001.png", [[0, 1, 150], [8, 2, 0]])
    prepare.main(["--root", str(root)])
    out = read_label(root / "annotations_detectron2" / "validation" / "ADE_val_00000001.png")
    assert out.tolist() == [[255, 0, 149], [7, 1, 255]]
    assert load_vocabulary("ade150")[7] == "bed "

    with pytest.raises(SystemExit, match=str(root / "annotations" / "training")):
        prepare.main(["--root", str(root), "--splits", "training"])


def _ade_seg_png(path: Path, class_values: np.ndarray) -> None:
    """An ADE20K _seg.png: R // 10 * 256 + G encodes the class (R's last digit is noise, B the
    instance)."""
    rgb = np.zeros(class_values.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = class_values // 256 * 10 + 3
    rgb[..., 1] = class_values % 256
    rgb[..., 2] = 7
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def test_ade20k_full_from_the_index_pickle(scripts, tmp_path):
    prepare = scripts("prepare_ade20k_full")
    root = tmp_path / "ADE20K_2021_17_01"
    folders = {
        "ADE_val_00000001.jpg": "ADE20K_2021_17_01/images/ADE/validation/home/bedroom",
        "ADE_train_00000001.jpg": "ADE20K_2021_17_01/images/ADE/training/home/bedroom",
        "ADE_val_00000002.jpg": "ADE20K_2021_17_01/images/ADE/validation/urban/street",
    }
    # wall (value 2978) -> 0, building (312) -> 1, adding machine (3148) -> 846, unlabelled (0)
    # and a class outside the 847 (5) -> 65535.
    small = np.array([[2978, 312, 3148], [0, 5, 2978]])
    large = np.zeros((600, 800), dtype=np.int64)  # short side 600 > 512: resized
    large[:300] = 312
    large[300:, 400:] = 3148
    for (name, folder), values in zip(folders.items(), [large, small, small]):
        image_dir = root / Path(folder).relative_to("ADE20K_2021_17_01")
        write_image(str(image_dir / name), values.shape[0], values.shape[1])
        _ade_seg_png(image_dir / name.replace(".jpg", "_seg.png"), values)
    index = {
        "filename": list(folders),
        "folder": list(folders.values()),
        "objectnames": ["-"] * 3688,
    }
    with open(root / "index_ade20k.pkl", "wb") as f:
        pickle.dump(index, f)
    prepare.main(["--root", str(root)])

    names = load_vocabulary("ade847")
    assert (names[0], names[1], names[846]) == ("wall", "building, edifice",
                                                "adding machine, totalizer, totaliser")
    images = root / "images_detectron2" / "validation"
    labels = root / "annotations_detectron2" / "validation"
    assert sorted(os.listdir(images)) == ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg"]
    assert sorted(os.listdir(labels)) == ["ADE_val_00000001.tif", "ADE_val_00000002.tif"]

    with Image.open(labels / "ADE_val_00000002.tif") as tif:
        assert tif.mode == "I;16"
    assert read_label(labels / "ADE_val_00000002.tif").tolist() == [[0, 1, 846], [65535, 65535, 0]]

    resized = read_label(labels / "ADE_val_00000001.tif")
    assert resized.shape == (512, 683) and resized.dtype == np.uint16
    with Image.open(images / "ADE_val_00000001.jpg") as image:
        assert image.size == (683, 512)
    assert (resized[:250] == 1).all() and (resized[260:, 350:] == 846).all()
    assert (resized[260:, :330] == 65535).all()


def test_ade20k_full_class_values_match_ade847(scripts):
    """The _seg.png class value is 1 + the class's position in the index's "objectnames", which
    lists names alphabetically, bar a few late additions (values above 3100). So, sorted by
    value, the names of ade847.json must come out in alphabetical order."""
    values = scripts("prepare_ade20k_full").CLASS_VALUES
    names = load_vocabulary("ade847")
    by_value = [name.lower() for value, name in sorted(zip(values, names)) if value < 3100]
    assert len(by_value) == 827 and by_value == sorted(by_value)


def test_ade20k_full_missing_index(scripts, tmp_path):
    with pytest.raises(SystemExit, match="index_ade20k.pkl"):
        scripts("prepare_ade20k_full").main(["--root", str(tmp_path)])


# ---------------------------------------------------------------------------------------------
# Pascal Context


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, zeros first."""
    flat = mask.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]])) if flat.size else []
    counts = np.diff(np.r_[0, changes]).tolist()
    return {"size": list(mask.shape), "counts": counts}


def test_pascal_context_59_and_459(scripts, tmp_path):
    prepare = scripts("prepare_pascal_context")
    root = tmp_path / "VOCdevkit" / "VOC2010"
    (root / "JPEGImages").mkdir(parents=True)
    image_list = tmp_path / "val.txt"
    image_list.write_text("2008_000002\n2008_000003\n2008_000404\n")  # the last has no annotation

    def mask(rows, cols, shape=(3, 4)):
        m = np.zeros(shape, dtype=np.uint8)
        m[rows, cols] = 1
        return m

    def compressed(m):
        rle = mask_util.encode(np.asfortranarray(m))
        return {"size": rle["size"], "counts": rle["counts"].decode()}

    data = {
        "images": [
            {"image_id": 1, "file_name": "2008_000002.jpg", "height": 3, "width": 4},
            {"image_id": 2, "file_name": "2008_000003.jpg", "height": 3, "width": 4},
            {"image_id": 3, "file_name": "2008_000007.jpg", "height": 3, "width": 4},
        ],
        "annos_segmentation": [
            # aeroplane (2) -> 0 on the top row, then wood (458) -> 58 over its right half.
            {"image_id": 1, "category_id": 2, "segmentation": compressed(mask(0, slice(None)))},
            {"image_id": 1, "category_id": 458, "segmentation": compressed(mask(0, slice(2, 4)))},
            # table (397) -> diningtable, 49; accordion (1) is not a PC-59 class -> 255.
            {"image_id": 1, "category_id": 397, "segmentation": _uncompressed_rle(mask(2, 0))},
            {"image_id": 1, "category_id": 1, "segmentation": compressed(mask(2, 1))},
            {"image_id": 2, "category_id": 284, "segmentation": compressed(mask(1, 1))},
            {"image_id": 3, "category_id": 284, "segmentation": compressed(mask(1, 1))},
        ],
    }
    (root / "trainval_merged.json").write_text(json.dumps(data))
    (root / "trainval").mkdir()
    scipy.io.savemat(root / "trainval" / "2008_000002.mat",
                     {"LabelMap": np.array([[1, 2, 459], [0, 397, 1]], dtype=np.uint16)})
    scipy.io.savemat(root / "trainval" / "2008_000003.mat",
                     {"LabelMap": np.array([[284]], dtype=np.uint16)})
    prepare.main(["--root", str(root), "--image-list", str(image_list)])

    pc59 = root / "annotations_detectron2" / "pc59_val"
    assert sorted(os.listdir(pc59)) == ["2008_000002.png", "2008_000003.png"]
    assert read_label(pc59 / "2008_000002.png").tolist() == [
        [0, 0, 58, 58],
        [255, 255, 255, 255],
        [49, 255, 255, 255],
    ]
    person = load_vocabulary("pc59").index("person")
    assert read_label(pc59 / "2008_000003.png")[1, 1] == person
    names = load_vocabulary("pc59")
    assert (names[0], names[49], names[58]) == ("aeroplane", "diningtable", "wood")

    pc459 = root / "annotations_detectron2" / "pc459_val"
    assert sorted(os.listdir(pc459)) == ["2008_000002.tif", "2008_000003.tif"]
    with Image.open(pc459 / "2008_000002.tif") as tif:
        assert tif.mode == "I;16"
    assert read_label(pc459 / "2008_000002.tif").tolist() == [[0, 1, 458], [459, 396, 0]]
    pc459_names = load_vocabulary("pc459")
    assert (pc459_names[0], pc459_names[1], pc459_names[396]) == ("accordion", "aeroplane", "table")


def test_pascal_context_default_list_has_5104_images():
    ids = (DATASETS_DIR / "pascalcontext_val.txt").read_text().split()
    assert len(ids) == len(set(ids)) == 5104 and ids[0] == "2008_000002"


def test_pascal_context_59_class_ids_name_the_459_classes(scripts):
    prepare = scripts("prepare_pascal_context")
    pc59, pc459 = load_vocabulary("pc59"), load_vocabulary("pc459")
    renamed = {"diningtable": "table"}
    assert [pc459[i - 1] for i in prepare.PC59_CATEGORY_IDS] == [renamed.get(n, n) for n in pc59]


# ---------------------------------------------------------------------------------------------
# PASCAL VOC


def test_voc_two_label_sets_and_skipped_images(scripts, tmp_path):
    prepare = scripts("prepare_voc")
    root = tmp_path / "VOCdevkit" / "VOC2012"
    labels = {
        "2007_000033": ([[0, 1, 20], [255, 15, 0]], "P"),  # VOC's palette PNGs
        "2007_000042": ([[0, 0], [0, 255]], "L"),  # background only
    }
    for image_id, (values, mode) in labels.items():
        _png(root / "SegmentationClassAug" / f"{image_id}.png", values, mode)
        write_image(str(root / "JPEGImages" / f"{image_id}.jpg"), *np.shape(values))
    write_image(str(root / "JPEGImages" / "2007_000999.jpg"), 2, 2)  # not in val.txt
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(labels) + "\n")
    prepare.main(["--root", str(root)])

    voc20 = root / "annotations_detectron2" / "val"
    voc20b = root / "annotations_detectron2_bg" / "val"
    assert read_label(voc20 / "2007_000033.png").tolist() == [[255, 0, 19], [255, 14, 255]]
    assert read_label(voc20b / "2007_000033.png").tolist() == [[20, 0, 19], [255, 14, 20]]
    assert not (voc20 / "2007_000042.png").exists()  # entirely ignored: skipped
    assert read_label(voc20b / "2007_000042.png").tolist() == [[20, 20], [20, 255]]

    # The registered datasets list the label files, so the skipped image drops out of VOC-20.
    register_all_benchmarks(str(tmp_path))
    try:
        assert len(DatasetCatalog.get("voc_2012_test_sem_seg")) == 1
        assert len(DatasetCatalog.get("voc_2012_test_background_sem_seg")) == 2
    finally:
        register_all_benchmarks()


def test_voc_rejects_values_that_are_not_voc_classes(scripts, tmp_path):
    prepare = scripts("prepare_voc")
    root = tmp_path / "VOC2012"
    _png(root / "SegmentationClassAug" / "x.png", [[0, 21]])
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("x\n")
    with pytest.raises(ValueError, match=r"x.png: values \[21\]"):
        prepare.main(["--root", str(root)])
    with pytest.raises(SystemExit, match="SegmentationClassAug"):
        prepare.main(["--root", str(tmp_path / "nowhere")])
