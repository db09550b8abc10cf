"""Upsampling decoder guided by intermediate CLIP features: (N, D, T, g, g) -> (N, T, g*2^k, g*2^k).

Each stage doubles the resolution of every class's map with a transposed convolution, concatenates
CLIP guidance brought to that resolution (a transposed convolution of the guidance layer's tokens,
then a 3x3 projection), and mixes with two 3x3 convolutions. A 3x3 head gives one logit per pixel.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from .activation_checkpointing import run_checkpointed


def _conv_norm_relu(cin: int, cout: int, group_size: int) -> List[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(max(1, cout // group_size), cout),
        nn.ReLU(),
    ]


class UpStage(nn.Module):
    """2x transposed convolution to ``in_dim - guidance_dim`` channels, concatenation with the
    guidance, then two (conv 3x3, GroupNorm, ReLU) to ``out_dim`` channels."""

    def __init__(self, in_dim: int, out_dim: int, guidance_dim: int, group_size: int):
        super().__init__()
        if guidance_dim >= in_dim:
            raise ValueError(
                f"decoder guidance of {guidance_dim} channels leaves no room in a {in_dim}-channel stage "
                "(MODEL.DECODER.GUIDANCE_DIMS must be smaller than the stage's input width)"
            )
        self.up = nn.ConvTranspose2d(in_dim, in_dim - guidance_dim, kernel_size=2, stride=2)
        self.conv = nn.Sequential(*_conv_norm_relu(in_dim, out_dim, group_size), *_conv_norm_relu(out_dim, out_dim, group_size))

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), guidance], dim=1))


class Decoder(nn.Module):
    """
    Args:
        embed_dim: D, channels of the aggregated cost.
        guidance_width: channels of the CLIP tokens used as guidance (the visual width).
        dims: output channels of each stage.
        guidance_dims: guidance channels each stage concatenates.
        guidance_upsample_dims: channels of the transposed convolutions bringing the guidance of
            stage i to 2^(i+1) times the grid.
        class_chunk: (view, class) pairs decoded at once, bounding memory.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 128,
        guidance_width: int,
        dims: Sequence[int] = (64, 32),
        guidance_dims: Sequence[int] = (32, 16),
        guidance_upsample_dims: Sequence[int] = (256, 128),
        norm_group_size: int = 16,
        class_chunk: int = 128,
    ):
        super().__init__()
        if not len(dims) == len(guidance_dims) == len(guidance_upsample_dims):
            raise ValueError(
                "MODEL.DECODER.DIMS, GUIDANCE_DIMS and GUIDANCE_UPSAMPLE_DIMS need one entry per stage; got "
                f"{list(dims)}, {list(guidance_dims)}, {list(guidance_upsample_dims)}"
            )
        self.class_chunk = class_chunk
        self.guidance_upsample = nn.ModuleList(
            nn.ConvTranspose2d(guidance_width, c, kernel_size=2 ** (i + 1), stride=2 ** (i + 1))
            for i, c in enumerate(guidance_upsample_dims)
        )
        self.guidance_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cu, cg, kernel_size=3, padding=1), nn.ReLU())
            for cu, cg in zip(guidance_upsample_dims, guidance_dims)
        )
        ins = [embed_dim, *dims[:-1]]
        self.stages = nn.ModuleList(
            UpStage(cin, cout, cg, norm_group_size) for cin, cout, cg in zip(ins, dims, guidance_dims)
        )
        self.head = nn.Conv2d(dims[-1], 1, kernel_size=3, padding=1)
        # recompute the stages' activations in backward instead of storing them (set by LMSeg)
        self.checkpoint_activations = False

    def _decode(self, y: torch.Tensor, view: torch.Tensor, *guides: torch.Tensor) -> torch.Tensor:
        """Logits (K, 1, H, W) of K (view, class) rows y (K, D, g, g); ``view`` indexes the guidance."""
        for stage, g in zip(self.stages, guides):
            y = stage(y, g[view])
        return self.head(y)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def forward(self, x: torch.Tensor, guidance: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            x: (N, D, T, g, g) aggregated cost.
            guidance: one (N, width, g, g) CLIP token map per stage.

        Returns:
            logits (N, T, g * 2^stages, g * 2^stages).
        """
        if len(guidance) != self.num_stages:
            raise ValueError(f"the decoder has {self.num_stages} stages but got {len(guidance)} guidance maps")
        n, d, t, h, w = x.shape
        guides = [proj(up(g)) for g, up, proj in zip(guidance, self.guidance_upsample, self.guidance_proj)]
        rows = x.transpose(1, 2).reshape(n * t, d, h, w)
        out = []
        for start in range(0, n * t, self.class_chunk):
            y = rows[start : start + self.class_chunk]
            view = torch.arange(start, start + y.shape[0], device=x.device) // t
            out.append(run_checkpointed(self.checkpoint_activations, self._decode, y, view, *guides))
        out = torch.cat(out)
        return out.view(n, t, *out.shape[-2:])
