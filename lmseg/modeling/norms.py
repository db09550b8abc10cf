"""Normalisation layers that stay in the autocast dtype.

CUDA autocast runs ``layer_norm`` and ``group_norm`` in float32: every call copies its whole input
to float32 and returns float32, which the next matmul copies back to bfloat16/float16, and a
residual stream that passes a norm turns float32 for good. The layers here normalise a
bfloat16/float16 input in its own dtype instead when autocast is on; PyTorch's kernels accumulate
the statistics (mean and variance) in float32 whatever the input dtype, so only the output is
rounded. Without autocast, or on a float32 input, they are exactly the layers they replace.
"""
from __future__ import annotations

from typing import Optional

import open_clip
import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d as SamLayerNorm2d
from torch import nn


def _in_autocast_dtype(x: torch.Tensor) -> bool:
    kind = x.device.type
    return torch.is_autocast_enabled(kind) and x.dtype == torch.get_autocast_dtype(kind)


def _cast(p: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    return None if p is None else p.to(dtype)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` that keeps a bfloat16/float16 input's dtype under autocast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _in_autocast_dtype(x):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(
                x, self.normalized_shape, _cast(self.weight, x.dtype), _cast(self.bias, x.dtype), self.eps
            )


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that keeps a bfloat16/float16 input's dtype under autocast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _in_autocast_dtype(x):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return F.group_norm(x, self.num_groups, _cast(self.weight, x.dtype), _cast(self.bias, x.dtype), self.eps)


class LayerNorm2d(SamLayerNorm2d):
    """SAM's channel-wise LayerNorm of (N, C, H, W) maps; under autocast one fused layer norm in the
    input's dtype (SAM's own arithmetic would square and divide in float32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _in_autocast_dtype(x):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            y = F.layer_norm(
                x.permute(0, 2, 3, 1), x.shape[1:2], self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps
            )
        return y.permute(0, 3, 1, 2)


# Exact types replaced (open_clip's LayerNormFp32 is float32 on purpose and stays).
_LAYER_NORMS = (nn.LayerNorm, open_clip.transformer.LayerNorm)


def _replacement(module: nn.Module) -> Optional[nn.Module]:
    if type(module) in _LAYER_NORMS:
        new = LayerNorm(module.normalized_shape, module.eps, elementwise_affine=False)
        new.elementwise_affine = module.elementwise_affine
    elif type(module) is nn.GroupNorm:
        new = GroupNorm(module.num_groups, module.num_channels, module.eps, affine=False)
        new.affine = module.affine
    elif type(module) is SamLayerNorm2d:
        new = LayerNorm2d(module.weight.shape[0], module.eps)
    else:
        return None
    # the same Parameter objects: names, values and requires_grad are unchanged
    for name in ("weight", "bias"):
        setattr(new, name, getattr(module, name, None))
    return new.train(module.training)


def use_autocast_norms(module: nn.Module) -> nn.Module:
    """Replace, in place, every ``nn.LayerNorm``, ``nn.GroupNorm`` and SAM ``LayerNorm2d`` inside
    ``module`` by the layer of this file that shares its parameters; returns ``module``."""
    for name, child in module.named_children():
        new = _replacement(child)
        if new is None:
            use_autocast_norms(child)
        else:
            setattr(module, name, new)
    return module
