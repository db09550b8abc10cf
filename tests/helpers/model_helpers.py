"""Shared helpers for the model tests: the tiny config, models built from it, synthetic batches."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import List, Sequence

import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.modeling import build_model
from segment_anything.modeling import ImageEncoderViT

from lmseg.config import get_lmseg_cfg
from lmseg.modeling.sam_encoder import SamEncoder

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = str(REPO / "configs" / "tiny.yaml")
VOCAB = ["cat", "dog", "sofa, couch", "window", "grass"]


def tiny_cfg(*opts, config_file: str = TINY_CONFIG):
    """The tiny config with ``KEY VALUE`` overrides and no datasets (so no vocabulary from them)."""
    cfg = get_lmseg_cfg(config_file)
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.merge_from_list(list(opts))
    return cfg


def tiny_model(*opts, vocabulary: Sequence[str] = VOCAB, seed: int = 0, eval: bool = True):
    torch.manual_seed(seed)
    model = build_model(tiny_cfg(*opts))
    model.set_vocabulary(vocabulary)
    return model.eval() if eval else model.train()


def train_batch(num_images: int = 2, size: int = 64, num_classes: int = len(VOCAB), seed: int = 0) -> List[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g),
            "sem_seg": torch.randint(0, num_classes, (size, size), generator=g),
        }
        for _ in range(num_images)
    ]


def eval_batch(num_images: int = 1, hw=(72, 96), out_hw=(90, 120), seed: int = 0) -> List[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(0, 256, (3, *hw), dtype=torch.uint8, generator=g),
            "height": out_hw[0],
            "width": out_hw[1],
        }
        for _ in range(num_images)
    ]


def scores(model, batch) -> List[torch.Tensor]:
    with torch.no_grad():
        return [o["sem_seg"] for o in model(batch)]


def tiny_sam_with_values(input_size: int, std: float = 0.2) -> SamEncoder:
    """The tiny SAM encoder (eval mode) with every tensor, position tables included, drawn from
    N(0, std), so that no part of it computes a trivial value."""
    sam = SamEncoder("tiny", input_size=input_size).eval()
    with torch.no_grad():
        for p in sam.parameters():
            p.normal_(0, std)
    return sam


def segment_anything_tiny_encoder(img_size: int) -> ImageEncoderViT:
    """segment_anything's own image encoder with the tiny SAM's architecture, built at ``img_size``."""
    return ImageEncoderViT(
        img_size=img_size, patch_size=16, embed_dim=32, depth=2, num_heads=2, window_size=4, global_attn_indexes=(1,),
        out_chans=32, use_rel_pos=True, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
    ).eval()


class PromptRecorder(DatasetEvaluator):
    """Keeps the prompts the model used for each image it was evaluated on."""

    def __init__(self, model):
        self.model, self.seen = model, []

    def reset(self):
        self.seen = []

    def process(self, inputs, outputs):
        self.seen.append([list(p) for p in self.model.vocab.prompts])

    def evaluate(self):
        return {}
