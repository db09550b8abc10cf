"""Fusion of CLIP's dense features with SAM's, after projecting SAM's to CLIP's width.

LMSeg's choice is the learnable weighted sum ``F = w * F_clip + (1 - w) * F_sam``; the other modes
are the ablations of the paper. Where SAM's features are combined with CLIP's, the SAM projection
starts at zero, so that a new model starts from CLIP's features alone (``F = w * F_clip`` in the
weighted sum: the cost volume is a cosine, blind to w, and a model started from a CAT-Seg checkpoint
has its appearance guidance compensated for w, see :func:`lmseg.checkpoint.load_catseg_state`) and
SAM's contribution is learned from there. In ``sam_only`` the projection is all there is: it keeps
PyTorch's default initialisation, since all-zero features would make the cosine cost volume 0/0.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

FUSION_MODES = ("weighted", "clip_only", "sam_only", "add", "concat", "attention")


class FeatureFusion(nn.Module):
    """Combine CLIP features (N, C, h, w) with SAM features (N, C_sam, h, w) into (N, C, h, w).

    Args:
        mode: one of :data:`FUSION_MODES`.
        clip_dim: C, the width of CLIP's dense features.
        sam_dim: C_sam, the width of SAM's features (ignored for "clip_only").
        weight_init: initial w of the weighted sum, in (0, 1).
        per_channel: one weight per channel instead of one scalar.
        attention_heads: heads of the "attention" mode.
    """

    def __init__(
        self,
        mode: str = "weighted",
        *,
        clip_dim: int,
        sam_dim: int = 256,
        weight_init: float = 0.5,
        per_channel: bool = False,
        attention_heads: int = 8,
    ):
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"MODEL.FUSION.MODE={mode!r} is not one of {FUSION_MODES}")
        self.mode = mode
        if mode == "clip_only":
            return
        self.sam_proj = nn.Conv2d(sam_dim, clip_dim, kernel_size=1)
        if mode != "sam_only":
            nn.init.zeros_(self.sam_proj.weight)
            nn.init.zeros_(self.sam_proj.bias)
        if mode == "weighted":
            if not 0.0 < weight_init < 1.0:
                raise ValueError(f"MODEL.FUSION.WEIGHT_INIT={weight_init} must lie strictly between 0 and 1")
            logit = math.log(weight_init / (1.0 - weight_init))
            self.weight_logit = nn.Parameter(torch.full((clip_dim if per_channel else 1,), logit))
        elif mode == "concat":
            self.merge = nn.Conv2d(2 * clip_dim, clip_dim, kernel_size=1)
        elif mode == "attention":
            if clip_dim % attention_heads:
                raise ValueError(
                    f"MODEL.FUSION.ATTENTION_HEADS={attention_heads} does not divide the feature width {clip_dim}"
                )
            self.attention = nn.MultiheadAttention(clip_dim, attention_heads, batch_first=True)
            self.norm = nn.LayerNorm(clip_dim)

    @property
    def uses_sam(self) -> bool:
        return self.mode != "clip_only"

    @property
    def weight(self) -> Optional[torch.Tensor]:
        """w of the weighted sum (1 or C values in [0, 1]); None for the other modes."""
        if self.mode != "weighted":
            return None
        return torch.sigmoid(self.weight_logit)

    def forward(self, clip_feats: torch.Tensor, sam_feats: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.mode == "clip_only":
            return clip_feats
        if sam_feats is None:
            raise ValueError(f"fusion mode {self.mode!r} needs SAM features")
        sam = self.sam_proj(sam_feats)  # (N, C, h, w)
        if self.mode == "sam_only":
            return sam
        if self.mode == "add":
            return clip_feats + sam
        if self.mode == "weighted":
            w = self.weight.to(clip_feats.dtype).view(1, -1, 1, 1)
            return w * clip_feats + (1.0 - w) * sam
        if self.mode == "concat":
            return self.merge(torch.cat([clip_feats, sam], dim=1))
        # attention: every CLIP position attends to all SAM positions; residual on CLIP.
        n, c, h, w = clip_feats.shape
        q = clip_feats.flatten(2).transpose(1, 2)  # (N, h*w, C)
        kv = self.norm(sam.flatten(2).transpose(1, 2))
        out, _ = self.attention(self.norm(q), kv, kv, need_weights=False)
        return (q + out).transpose(1, 2).reshape(n, c, h, w)


def crop_and_resize(features: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop boxes out of feature maps and reduce each to size x size by area averaging.

    Args:
        features: (N, C, H, W).
        boxes: (M, 5) rows of (index into N, x0, y0, x1, y1) in relative coordinates [0, 1].
        size: output side.

    Returns:
        (M, C, size, size). Each output cell is the mean of the input cells under its part of the
        box, each weighted by the area it shares with that part, so every input cell inside a box
        contributes (an anti-aliased reduction: for a whole map and a whole ratio it equals
        ``F.adaptive_avg_pool2d``). A part narrower than one input cell is widened to one cell
        around its centre, which makes upsampling bilinear (``F.interpolate(mode="bilinear")``).
        Near the map's border only the cells inside the map are averaged, so values are never
        blended with zeros.
    """
    idx = boxes[:, 0].long()
    h, w = features.shape[-2:]
    x0, y0, x1, y1 = boxes[:, 1:].float().unbind(1)
    wy = _area_weights(y0 * h, y1 * h, size, h)  # (M, size, H)
    wx = _area_weights(x0 * w, x1 * w, size, w)  # (M, size, W)
    dtype = features.dtype
    return torch.einsum("mih,mchw,mjw->mcij", wy.to(dtype), features[idx], wx.to(dtype))


def _area_weights(start: torch.Tensor, end: torch.Tensor, size: int, length: int) -> torch.Tensor:
    """Weights (M, size, length) of the input cells [j, j + 1) in each of ``size`` equal parts of
    the intervals [start, end) (M of them, in input cells), each row summing to one."""
    steps = torch.arange(size + 1, device=start.device, dtype=torch.float32) / size
    edges = start[:, None] + (end - start)[:, None] * steps  # (M, size + 1)
    centre = (edges[:, 1:] + edges[:, :-1]) / 2
    half = ((edges[:, 1:] - edges[:, :-1]) / 2).clamp(min=0.5)
    lo, hi = (centre - half)[..., None], (centre + half)[..., None]  # (M, size, 1)
    cells = torch.arange(length, device=start.device, dtype=torch.float32)
    overlap = (torch.minimum(hi, cells + 1) - torch.maximum(lo, cells)).clamp(min=0)
    return overlap / overlap.sum(dim=-1, keepdim=True)
