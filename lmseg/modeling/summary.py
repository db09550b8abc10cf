"""Parameter counts of each part of an LMSeg model, trainable and frozen."""
from __future__ import annotations

import logging
from typing import List, Tuple

from tabulate import tabulate
from torch import nn

logger = logging.getLogger(__name__)


def _parts(model: nn.Module) -> List[Tuple[str, List[nn.Parameter]]]:
    clip = model.clip.model
    visual = {id(p) for p in clip.visual.parameters()}
    parts = [
        ("CLIP image tower", list(clip.visual.parameters())),
        ("CLIP text tower", [p for p in clip.parameters() if id(p) not in visual]),
    ]
    if model.sam is not None:
        parts.append(("SAM image encoder", list(model.sam.parameters())))
    for name in ("fusion", "cost_embed", "aggregator", "decoder"):
        parts.append((name, list(getattr(model, name).parameters())))
    return parts


def parameter_summary(model: nn.Module) -> List[Tuple[str, int, int]]:
    """(part, trainable, frozen) parameter counts of an LMSeg model, plus a total row."""
    rows = []
    for name, params in _parts(model):
        trainable = sum(p.numel() for p in params if p.requires_grad)
        frozen = sum(p.numel() for p in params if not p.requires_grad)
        rows.append((name, trainable, frozen))
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    return rows


def format_parameter_summary(model: nn.Module) -> str:
    rows = [(name, f"{t:,}", f"{f:,}") for name, t, f in parameter_summary(model)]
    return tabulate(rows, headers=("part", "trainable", "frozen"), tablefmt="pipe", colalign=("left", "right", "right"))


def log_parameter_summary(model: nn.Module) -> None:
    logger.info("LMSeg parameters:\n%s", format_parameter_summary(model))
