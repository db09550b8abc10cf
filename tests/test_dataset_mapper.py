"""The dataset mapper: output format, ignore mapping, crop and padding, the single-category crop
limit, photometric distortion; and detectron2's test-time DatasetMapper on our labels."""
import random

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.projects.point_rend import ColorAugSSDTransform

from lmseg.config import get_lmseg_cfg
from lmseg.data import (
    SemanticSegmentationDatasetMapper,
    ensure_datasets_registered,
    register_all_benchmarks,
)
from lmseg.data.datasets.benchmarks import benchmarks
from tests.helpers.synthetic_datasets import write_benchmark, write_folder_dataset


def _cfg(dataset: str, min_size: int, crop=None, flip: str = "none", max_area: float = 1.0):
    cfg = get_lmseg_cfg()
    cfg.INPUT.FORMAT = "RGB"
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.DATASETS.TEST = (dataset,)
    cfg.INPUT.MIN_SIZE_TRAIN = (min_size,)
    cfg.INPUT.MAX_SIZE_TRAIN = 10000
    cfg.INPUT.MIN_SIZE_TEST = min_size
    cfg.INPUT.MAX_SIZE_TEST = 10000
    cfg.INPUT.RANDOM_FLIP = flip
    cfg.INPUT.CROP.ENABLED = crop is not None
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = crop or [1, 1]
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = max_area
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
    return cfg


def _folder(tmp_path, classes, labels):
    write_folder_dataset(str(tmp_path), classes, labels)
    name = f"sem_seg_folder:{tmp_path}"
    ensure_datasets_registered([name])
    return name


def test_output_format_crop_and_flip(tmp_path):
    labels = [np.random.default_rng(0).integers(0, 3, (40, 60)).astype(np.uint8)]
    name = _folder(tmp_path, ["a", "b", "c"], labels)
    cfg = _cfg(name, min_size=40, crop=[24, 16], flip="horizontal")
    cfg.INPUT.COLOR_AUG_SSD = True
    mapper = SemanticSegmentationDatasetMapper(cfg, is_train=True)
    record = DatasetCatalog.get(name)[0]
    out = mapper(record)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 24, 16)
    assert out["sem_seg"].dtype == torch.int64 and out["sem_seg"].shape == (24, 16)
    assert (out["height"], out["width"]) == (40, 60)
    assert out["file_name"] == record["file_name"]
    assert "sem_seg_file_name" not in out and "ignore_label" not in out
    assert set(out["sem_seg"].unique().tolist()) <= {0, 1, 2}
    assert DatasetCatalog.get(name)[0] == record  # the record is not modified


def test_16bit_ignore_becomes_the_model_ignore_value(tmp_path):
    label = np.array([[0, 1, 65535], [2, 65535, 1]], np.uint16)
    name = _folder(tmp_path, ["a", "b", "c"], [label])
    mapper = SemanticSegmentationDatasetMapper(_cfg(name, min_size=2), is_train=True)
    out = mapper(DatasetCatalog.get(name)[0])
    assert out["sem_seg"].tolist() == [[0, 1, 255], [2, 255, 1]]


def test_16bit_class_values_survive_resizing(tmp_path):
    label = np.full((4, 6), 300, np.uint16)
    label[:2] = 65535
    name = _folder(tmp_path, [str(i) for i in range(301)], [label])
    cfg = _cfg(name, min_size=8)
    with pytest.raises(ValueError, match="IGNORE_VALUE = 255 is a class index"):
        SemanticSegmentationDatasetMapper(cfg, is_train=True)
    SemanticSegmentationDatasetMapper(cfg, is_train=False)  # only the loss would be misled
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 65535
    out = SemanticSegmentationDatasetMapper(cfg, is_train=True)(DatasetCatalog.get(name)[0])
    assert out["sem_seg"].shape == (8, 12)
    assert (out["sem_seg"][:4] == 65535).all() and (out["sem_seg"][4:] == 300).all()


def test_padding_to_the_crop_size_uses_the_ignore_value(tmp_path):
    name = _folder(tmp_path, ["a", "b"], [np.ones((10, 12), np.uint8)])
    cfg = _cfg(name, min_size=10, crop=[16, 20])
    cfg.INPUT.SIZE_DIVISIBILITY = 8
    out = SemanticSegmentationDatasetMapper(cfg, is_train=True)(DatasetCatalog.get(name)[0])
    assert out["image"].shape == (3, 16, 24) and out["sem_seg"].shape == (16, 24)
    assert (out["sem_seg"][:10, :12] == 1).all()
    assert (out["sem_seg"][10:] == 255).all() and (out["sem_seg"][:, 12:] == 255).all()


def test_single_category_area_limit(tmp_path):
    # Top half class 0, bottom half class 1: a 32x32 crop of the 64x64 image covers y0 rows of
    # class 1 (y0 = 0..32), so one class exceeds 75% of it unless 8 < y0 < 24.
    label = np.zeros((64, 64), np.uint8)
    label[32:] = 1
    name = _folder(tmp_path, ["top", "bottom"], [label])
    record = DatasetCatalog.get(name)[0]

    def largest_class_fractions(max_area: float):
        mapper = SemanticSegmentationDatasetMapper(
            _cfg(name, min_size=64, crop=[32, 32], max_area=max_area), is_train=True
        )
        np.random.seed(0)
        fractions = []
        for _ in range(20):
            counts = torch.bincount(mapper(record)["sem_seg"].flatten(), minlength=2)
            fractions.append(counts.max().item() / counts.sum().item())
        return fractions

    assert max(largest_class_fractions(0.75)) < 0.75
    assert max(largest_class_fractions(1.0)) >= 0.75


def test_colour_augmentation_is_detectron2s(tmp_path):
    """INPUT.COLOR_AUG_SSD adds detectron2's ColorAugSSDTransform, which changes colours only."""
    label = np.zeros((64, 64), np.uint8)
    name = _folder(tmp_path, ["top", "bottom"], [label])
    record = DatasetCatalog.get(name)[0]
    cfg = _cfg(name, min_size=64, crop=[64, 64])
    cfg.INPUT.RANDOM_FLIP = "none"
    plain = SemanticSegmentationDatasetMapper(cfg, is_train=True)
    cfg.INPUT.COLOR_AUG_SSD = True
    mapper = SemanticSegmentationDatasetMapper(cfg, is_train=True)
    assert any(isinstance(getattr(a, "tfm", a), ColorAugSSDTransform) for a in mapper.augmentations.augs)
    assert not any(isinstance(getattr(a, "tfm", a), ColorAugSSDTransform) for a in plain.augmentations.augs)
    random.seed(0)  # ColorAugSSDTransform draws with Python's random module
    out = mapper(record)
    reference = plain(record)
    assert out["image"].shape == reference["image"].shape
    assert not torch.equal(out["image"], reference["image"])
    assert torch.equal(out["sem_seg"], reference["sem_seg"])


def test_test_time_mapping_of_benchmark_labels(tmp_path):
    """detectron2's DatasetMapper reads 8-bit labels right; ours also keeps 16-bit values."""
    register_all_benchmarks(str(tmp_path))
    try:
        by_name = {b.name: b for b in benchmarks()}
        label8 = np.array([[0, 5], [255, 19]], np.uint8)
        write_benchmark(str(tmp_path), by_name["voc_2012_test_sem_seg"], 1, labels=[label8])
        label16 = np.array([[0, 846], [65535, 300]], np.uint16)
        write_benchmark(str(tmp_path), by_name["ade20k_full_sem_seg_freq_val_all"], 1,
                        labels=[label16])

        cfg = _cfg("voc_2012_test_sem_seg", min_size=4)
        out = DatasetMapper(cfg, is_train=False)(DatasetCatalog.get("voc_2012_test_sem_seg")[0])
        assert out["image"].shape == (3, 4, 4) and (out["height"], out["width"]) == (2, 2)
        assert out["sem_seg"][::2, ::2].tolist() == label8.tolist()

        cfg = _cfg("ade20k_full_sem_seg_freq_val_all", min_size=4)
        cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 65535
        record = DatasetCatalog.get("ade20k_full_sem_seg_freq_val_all")[0]
        out = SemanticSegmentationDatasetMapper(cfg, is_train=False)(record)
        assert out["image"].shape == (3, 4, 4) and (out["height"], out["width"]) == (2, 2)
        assert out["sem_seg"][::2, ::2].tolist() == label16.tolist()
    finally:
        register_all_benchmarks()
