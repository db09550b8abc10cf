"""Optimizer with LMSeg's parameter groups, and the learning-rate schedule."""
from __future__ import annotations

import logging
from typing import Dict, List

import torch
from detectron2.solver import build_lr_scheduler as build_d2_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn

logger = logging.getLogger(__name__)

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
# Parameters that are embeddings (tables of vectors, not weights of a map): no weight decay.
_EMBEDDING_NAMES = (
    "class_embedding",
    "positional_embedding",
    "pos_embed",
    "rel_pos_h",
    "rel_pos_w",
    "padding_tokens",
    "padding_guidance",
)
# Parameters that are not weights of a map either: the fusion weight w = sigmoid(weight_logit) of
# F = w * F_clip + (1 - w) * F_sam. Decay would pull its logit to 0, i.e. w to 0.5, whatever the data
# say: no weight decay.
_NO_DECAY_NAMES = ("weight_logit",)


def _is_norm(module: nn.Module) -> bool:
    # segment_anything's LayerNorm2d is a norm without subclassing nn.LayerNorm.
    return isinstance(module, _NORMS) or type(module).__name__ in ("LayerNorm2d", "LayerNormFp32")


def get_param_groups(cfg, model: nn.Module) -> List[Dict]:
    """Parameter groups of the trainable parameters.

    Learning rates: BASE_LR times CLIP_MULTIPLIER for CLIP, SAM_MULTIPLIER for SAM, 1 for the rest.
    Weight decay: WEIGHT_DECAY, except WEIGHT_DECAY_NORM for normalisation layers and
    WEIGHT_DECAY_EMBED for embeddings (token, position and padding tables), and none at all for
    the fusion weight w (``fusion.weight_logit``).
    """
    base_lr = cfg.SOLVER.BASE_LR
    groups: Dict[tuple, Dict] = {}
    seen = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{name}" if module_name else name
            lr = base_lr
            if full.startswith("clip."):
                lr *= cfg.SOLVER.CLIP_MULTIPLIER
            elif full.startswith("sam."):
                lr *= cfg.SOLVER.SAM_MULTIPLIER
            if name in _NO_DECAY_NAMES:
                wd = 0.0
            elif _is_norm(module):
                wd = cfg.SOLVER.WEIGHT_DECAY_NORM
            elif isinstance(module, nn.Embedding) or name in _EMBEDDING_NAMES:
                wd = cfg.SOLVER.WEIGHT_DECAY_EMBED
            else:
                wd = cfg.SOLVER.WEIGHT_DECAY
            group = groups.setdefault((lr, wd), {"params": [], "lr": lr, "weight_decay": wd})
            group["params"].append(param)
    return list(groups.values())


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW (or SGD) over :func:`get_param_groups`.

    "full_model" gradient clipping happens in the training loop (after AMP unscaling); the
    per-parameter types of detectron2 ("value", "norm") wrap the optimizer as detectron2 does.
    """
    params = get_param_groups(cfg, model)
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        cls, kwargs = torch.optim.AdamW, {}
    elif name == "SGD":
        cls, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r} is not one of ('ADAMW', 'SGD')")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE != "full_model":
        cls = maybe_add_gradient_clipping(cfg, cls)
    return cls(params, lr=cfg.SOLVER.BASE_LR, **kwargs)


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer):
    """detectron2's schedules (WarmupCosineLR, WarmupMultiStepLR) and DeepLab's WarmupPolyLR."""
    if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR":
        from detectron2.projects.deeplab.lr_scheduler import WarmupPolyLR

        return WarmupPolyLR(
            optimizer,
            cfg.SOLVER.MAX_ITER,
            warmup_factor=cfg.SOLVER.WARMUP_FACTOR,
            warmup_iters=cfg.SOLVER.WARMUP_ITERS,
            warmup_method=cfg.SOLVER.WARMUP_METHOD,
            power=cfg.SOLVER.POLY_LR_POWER,
            constant_ending=cfg.SOLVER.POLY_LR_CONSTANT_ENDING,
        )
    return build_d2_lr_scheduler(cfg, optimizer)
