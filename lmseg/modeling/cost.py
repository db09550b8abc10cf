"""Cost volume (cosine similarity of image features and class prompts) and its embedding."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cost_volume(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every position with every prompt.

    Args:
        features: (N, C, h, w) image features, not normalised.
        text: (T, P, C) or per-image (N, T, P, C) L2-normalised prompt embeddings.

    Returns:
        (N, P, T, h, w).
    """
    feats = F.normalize(features, dim=1)
    if text.dim() == 3:
        return torch.einsum("nchw,tpc->npthw", feats, text.to(feats.dtype))
    return torch.einsum("nchw,ntpc->npthw", feats, text.to(feats.dtype))


class CostEmbedding(nn.Module):
    """Embed the P prompt costs of each class into ``embed_dim`` channels with one convolution.

    (N, P, T, h, w) -> (N, D, T, h, w); the convolution runs per class over the P channels.
    """

    def __init__(self, num_prompts: int, embed_dim: int = 128, kernel_size: int = 7):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"MODEL.COST.KERNEL_SIZE={kernel_size} must be odd")
        self.num_prompts = num_prompts
        self.conv = nn.Conv2d(num_prompts, embed_dim, kernel_size, padding=kernel_size // 2)

    def forward(self, cost: torch.Tensor) -> torch.Tensor:
        n, p, t, h, w = cost.shape
        if p != self.num_prompts:
            raise ValueError(f"cost volume has {p} prompts per class, the embedding expects {self.num_prompts}")
        x = self.conv(cost.transpose(1, 2).reshape(n * t, p, h, w))  # (N*T, D, h, w)
        return x.view(n, t, -1, h, w).transpose(1, 2)
