"""Every shipped config merges, and every ablation setting builds (with tiny encoders)."""
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

from lmseg.config import get_lmseg_cfg

from tests.helpers.model_helpers import REPO, TINY_CONFIG

CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml"))
ABLATIONS = [c for c in CONFIGS if "/ablations/" in c]


def _load(path):
    return get_lmseg_cfg(REPO / path)


@pytest.mark.parametrize("path", CONFIGS)
def test_config_merges(path):
    cfg = _load(path)
    assert cfg.MODEL.META_ARCHITECTURE == "LMSeg"


def test_ablations_cover_fusion_modes_sam_off_and_finetuning():
    assert len(ABLATIONS) >= 10
    seen = {(c.MODEL.FUSION.MODE, c.MODEL.SAM.ENABLED, c.MODEL.CLIP.FINETUNE, c.MODEL.SAM.FINETUNE) for c in map(_load, ABLATIONS)}
    assert {s[0] for s in seen} >= {"add", "concat", "attention", "sam_only", "clip_only", "weighted"}
    assert {s[2] for s in seen} >= {"none", "attention", "full", "attention_qv"}
    assert {s[3] for s in seen} >= {"none", "full", "qkv_proj"}
    branches = {(c.MODEL.AGGREGATOR.SPATIAL, c.MODEL.AGGREGATOR.CLASS) for c in map(_load, ABLATIONS)}
    assert branches >= {(True, False), (False, True)}


@pytest.mark.parametrize("path", ABLATIONS)
def test_ablation_builds_and_runs_with_tiny_encoders(path):
    cfg = _load(path)
    tiny = _load(str(Path(TINY_CONFIG).relative_to(REPO)))
    # keep the ablation's own choices, take every size from the tiny config
    for key in ("CLIP", "SAM", "COST", "AGGREGATOR", "DECODER", "LMSEG"):
        node = tiny.MODEL[key].clone()
        for own in ("FINETUNE", "ENABLED", "PER_CHANNEL", "SPATIAL", "CLASS"):
            if own in cfg.MODEL[key]:
                node[own] = cfg.MODEL[key][own]
        cfg.MODEL[key] = node
    cfg.MODEL.FUSION.ATTENTION_HEADS = 4
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN = ()
    model = build_model(cfg)
    model.set_vocabulary(["cat", "dog"])
    model.train()
    batch = [{"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8), "sem_seg": torch.randint(0, 2, (64, 64))}]
    model(batch)["loss_sem_seg"].backward()


@pytest.mark.parametrize("path", ["configs/vitb.yaml", "configs/vitl.yaml", "configs/catseg_vitb.yaml", "configs/catseg_vitl.yaml"])
def test_published_evaluation_protocol_by_default(path):
    """--eval-only and tools/evaluate_all.py follow the protocol of the published numbers:
    384 windows on a 640 grid averaged with the whole image, class-attention pooling 1x1,
    short side 640."""
    cfg = _load(path)
    assert cfg.TEST.SLIDING_WINDOW
    assert (cfg.TEST.SLIDING_GRID, cfg.TEST.SLIDING_WINDOW_SIZE) == (640, 384)
    assert list(cfg.MODEL.AGGREGATOR.TEST_POOLING) == [1, 1]
    assert cfg.INPUT.MIN_SIZE_TEST == 640


@pytest.mark.parametrize("path", ["configs/vitb.yaml", "configs/vitl.yaml"])
def test_training_recipe_is_catsegs(path):
    """Where the paper is silent, LMSeg trains as CAT-Seg does (GETTING_STARTED lists the rest)."""
    ours, catseg = _load(path), _load(path.replace("configs/", "configs/catseg_"))
    for key in ("MIN_SIZE_TRAIN", "MAX_SIZE_TRAIN", "COLOR_AUG_SSD", "RANDOM_FLIP", "SIZE_DIVISIBILITY"):
        assert ours.INPUT[key] == catseg.INPUT[key], key
    assert ours.INPUT.CROP == catseg.INPUT.CROP
    for key in ("IMS_PER_BATCH", "BASE_LR", "WEIGHT_DECAY", "MAX_ITER", "LR_SCHEDULER_NAME", "WARMUP_ITERS",
                "WARMUP_FACTOR", "CLIP_MULTIPLIER", "OPTIMIZER", "CLIP_GRADIENTS"):
        assert ours.SOLVER[key] == catseg.SOLVER[key], key
