"""Cost aggregation: spatial (Swin) blocks per class and linear-attention blocks across classes.

The cost embedding (N, D, T, h, w) passes through ``num_layers`` layers, each a pair of Swin blocks
over the h x w grid of every class (window attention, the second block shifted), whose queries and
keys also see the projected image features (appearance guidance), then a linear-attention block over
the T classes at every position, whose queries and keys also see the projected class text (text
guidance). Classes are padded to a fixed count with learned tokens before class attention, as in
CAT-Seg, so that the attention normalisation does not depend on the vocabulary size.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .activation_checkpointing import run_checkpointed


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(M, H, W, C) -> (M * H/window * W/window, window * window, C), windows in row-major order."""
    return rearrange(x, "m (h p) (w q) c -> (m h w) (p q) c", p=window, q=window)


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """Additive mask (windows, L, L) of a shifted window: -100 between cells of different regions,
    0 elsewhere (float32, on the CPU).

    After the cyclic shift, a window at the border holds cells from opposite sides of the image;
    they must not attend to each other. (CAT-Seg's checkpoints store this mask as a buffer.)
    """
    region = torch.zeros(1, h, w, 1)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in cuts:
        for ws in cuts:
            region[:, hs, ws, :] = label
            label += 1
    ids = window_partition(region, window).squeeze(-1)  # (windows, L)
    mask = torch.zeros(ids.shape[0], window * window, window * window)
    return mask.masked_fill(ids[:, None, :] != ids[:, :, None], -100.0)


@lru_cache(maxsize=16)
def _shift_mask(h: int, w: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    return shifted_window_mask(h, w, window, shift).to(device)


class GuidedWindowAttention(nn.Module):
    """Multi-head attention inside windows; queries and keys from [x, guidance], values from x."""

    def __init__(self, dim: int, guidance_dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MODEL.AGGREGATOR.NUM_HEADS={num_heads} does not divide EMBED_DIM={dim}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, xg: torch.Tensor, window: int, dim: int, mask: torch.Tensor = None) -> torch.Tensor:
        """Attention within the ``window`` x ``window`` windows of (M, H, W, dim + guidance) maps.

        ``mask``: (windows, L, L) additive mask of each window (windows in row-major order), or None.
        """
        m, h, w, _ = xg.shape
        windows, cells, heads = (h // window) * (w // window), window * window, self.num_heads
        # (M, H, W, C) -> (M, L, windows, C): the L cells of every window, windows side by side
        tokens = rearrange(xg, "m (a p) (b q) c -> m (p q) (a b) c", p=window, q=window)
        # Each window of a map is one more head: (M, L, windows, heads * d) -> (M, windows * heads, L, d),
        # a view; the mask of a window then broadcasts over the M maps instead of being copied to each.
        q, k, v = (
            t.view(m, cells, windows * heads, -1).transpose(1, 2)
            for t in (self.q(tokens), self.k(tokens), self.v(tokens[..., :dim]))
        )
        if mask is not None:
            mask = mask.to(q.dtype).repeat_interleave(heads, dim=0)[None]  # (1, windows * heads, L, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.proj(out.transpose(1, 2).reshape(m, cells, windows, dim))
        return rearrange(out, "m (p q) (a b) c -> m (a p) (b q) c", p=window, a=h // window)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """A Swin Transformer block (no relative position bias) with appearance guidance."""

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GuidedWindowAttention(dim, guidance_dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        # x: (M, H, W, D); guidance: (M, H, W, G), already normalised
        m, h, w, d = x.shape
        xg = torch.cat([self.norm1(x), guidance.to(x.dtype)], dim=-1)
        mask = None
        if self.shift:
            xg = torch.roll(xg, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask = _shift_mask(h, w, self.window, self.shift, x.device)
        out = self.attn(xg, self.window, d, mask)
        if self.shift:
            out = torch.roll(out, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + out
        return x + self.mlp(self.norm2(x))


class SpatialAggregation(nn.Module):
    """Two Swin blocks (shift 0, then half a window) over the grid of every class.

    Args:
        class_chunk: (view, class) pairs processed at once, bounding memory.
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, window: int, mlp_ratio: float, class_chunk: int):
        super().__init__()
        self.guidance_norm = nn.LayerNorm(guidance_dim)
        self.block1 = SwinBlock(dim, guidance_dim, num_heads, window, 0, mlp_ratio)
        self.block2 = SwinBlock(dim, guidance_dim, num_heads, window, window // 2, mlp_ratio)
        self.class_chunk = class_chunk
        # recompute the blocks' activations in backward instead of storing them (set by LMSeg)
        self.checkpoint_activations = False

    def _blocks(self, chunk: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(chunk, g), g)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        # x: (N, D, T, h, w); guidance: (N, G, h, w)
        n, d, t, h, w = x.shape
        rows = x.permute(0, 2, 3, 4, 1).reshape(n * t, h, w, d)
        guidance = self.guidance_norm(guidance.permute(0, 2, 3, 1))  # (N, h, w, G)
        out = []
        for start in range(0, n * t, self.class_chunk):
            chunk = rows[start : start + self.class_chunk]
            g = guidance[torch.arange(start, start + chunk.shape[0], device=x.device) // t]
            out.append(run_checkpointed(self.checkpoint_activations, self._blocks, chunk, g))
        return torch.cat(out).view(n, t, h, w, d).permute(0, 4, 1, 2, 3)


def _guided_linear(layer: nn.Linear, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``layer(cat([y, g broadcast over positions], -1))`` for y (N, S, T, D) and g (N, T, G)."""
    d = y.shape[-1]
    return F.linear(y, layer.weight[:, :d]) + F.linear(g, layer.weight[:, d:], layer.bias)[:, None]


def linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra=None, eps: float = 1e-6
) -> torch.Tensor:
    """Linear attention with elu + 1 feature maps, over the S axis of (M, S, heads, d) tensors.

    ``extra = (k_e, v_e, count)``, with (heads, d) tensors, adds ``count`` further keys/values,
    all equal to (k_e, v_e), to every row without materialising them.
    """
    q, k = F.elu(q) + 1, F.elu(k) + 1
    kv = torch.einsum("mshd,mshe->mhde", k, v)
    k_sum = k.sum(dim=1)
    if extra is not None:
        k_e, v_e, count = extra
        k_e = F.elu(k_e) + 1
        kv = kv + count * torch.einsum("hd,he->hde", k_e, v_e)
        k_sum = k_sum + count * k_e
    z = 1.0 / (torch.einsum("mshd,mhd->msh", q, k_sum) + eps)
    return torch.einsum("mshd,mhde,msh->mshe", q, kv, z)


class ClassAggregation(nn.Module):
    """Linear attention across classes at every (pooled) position, guided by the class text.

    Classes are padded to ``pad_to`` with learned tokens (and guidance) that take part in the
    attention. The block's output is upsampled back to the grid and added to its input.
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, mlp_ratio: float, pad_to: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MODEL.AGGREGATOR.NUM_HEADS={num_heads} does not divide EMBED_DIM={dim}")
        self.num_heads = num_heads
        self.pad_to = pad_to
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, dim))
        self.padding_guidance = nn.Parameter(torch.zeros(1, 1, guidance_dim))
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        # recompute the block's activations in backward instead of storing them (set by LMSeg)
        self.checkpoint_activations = False

    def forward(self, x: torch.Tensor, guidance: torch.Tensor, pooling: Tuple[int, int]) -> torch.Tensor:
        return run_checkpointed(self.checkpoint_activations, self._forward, x, guidance, tuple(pooling))

    def _forward(self, x: torch.Tensor, guidance: torch.Tensor, pooling: Tuple[int, int]) -> torch.Tensor:
        # x: (N, D, T, h, w); guidance: (N, T, G)
        n, d, t, h, w = x.shape
        pooled = x
        if tuple(pooling) != (1, 1):
            pooled = F.avg_pool2d(x.reshape(n, d * t, h, w), pooling).view(n, d, t, h // pooling[0], w // pooling[1])
        ph, pw = pooled.shape[-2:]
        tokens = pooled.permute(0, 3, 4, 2, 1).reshape(n * ph * pw, t, d)  # (M, T, D)
        heads = self.num_heads
        m = tokens.shape[0]
        y = self.norm1(tokens)
        g = guidance.to(tokens.dtype)
        # q(cat[y, g]) = y Wy + (g Wg + b): the guidance term is the same at every position of a
        # view, so it is computed once per view and broadcast, never copied to each position.
        q, k = (_guided_linear(layer, y.view(n, ph * pw, t, d), g).view(m, t, heads, -1) for layer in (self.q, self.k))
        v = self.v(y).view(m, t, heads, -1)
        # The pad tokens are the same at every position and their outputs are discarded: only
        # their keys and values matter, and they enter once, weighted by their number. At a full
        # class count that number is 0: they still enter (adding exact zeros), so that their
        # weights get a (zero) gradient in every step, which multi-process training requires of
        # every trainable weight whatever the vocabulary size.
        pad = self.norm1(self.padding_tokens.to(tokens.dtype)).view(1, d)
        pad_g = torch.cat([pad, self.padding_guidance.to(pad.dtype).view(1, -1)], dim=-1)
        extra = (self.k(pad_g).view(heads, -1), self.v(pad).view(heads, -1), max(self.pad_to - t, 0))
        tokens = tokens + linear_attention(q, k, v, extra).reshape(m, t, d)
        tokens = tokens + self.mlp(self.norm2(tokens))

        out = tokens.view(n, ph, pw, t, d).permute(0, 4, 3, 1, 2)  # (N, D, T, ph, pw)
        if (ph, pw) != (h, w):
            out = F.interpolate(out.reshape(n, d * t, ph, pw), size=(h, w), mode="bilinear", align_corners=True)
            out = out.view(n, d, t, h, w)
        return x + out


class AggregatorLayer(nn.Module):
    """Spatial aggregation then class aggregation; either may be left out (the ablations)."""

    def __init__(
        self, dim, appearance_dim, text_dim, num_heads, window, mlp_ratio, pad_to, class_chunk,
        spatial: bool = True, class_attention: bool = True,
    ):
        super().__init__()
        self.spatial = (
            SpatialAggregation(dim, appearance_dim, num_heads, window, mlp_ratio, class_chunk) if spatial else None
        )
        self.classwise = ClassAggregation(dim, text_dim, num_heads, mlp_ratio, pad_to) if class_attention else None

    def forward(self, x, appearance, text, pooling):
        if self.spatial is not None:
            x = self.spatial(x, appearance)
        if self.classwise is not None:
            x = self.classwise(x, text, pooling)
        return x


class Aggregator(nn.Module):
    """Project the guidance and run the aggregation layers.

    Args:
        feature_dim: width of the (fused) image features and of the text embeddings.
        embed_dim: D, the width of the cost embedding.
        pooling, test_pooling: spatial pooling before class attention in training / inference.
        pad_to: classes are padded to this count for class attention (the class cap).
        class_chunk: (view, class) pairs processed at once by the spatial blocks.
        spatial, class_attention: keep the spatial (Swin) and the class (linear attention) blocks
            of every layer. A branch left out takes its guidance projection with it; with both
            left out the cost embedding passes unchanged.
    """

    def __init__(
        self,
        *,
        feature_dim: int,
        embed_dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        window: int = 12,
        mlp_ratio: float = 4.0,
        appearance_guidance_dim: int = 128,
        text_guidance_dim: int = 128,
        pooling: Sequence[int] = (2, 2),
        test_pooling: Sequence[int] = (1, 1),
        pad_to: int = 256,
        class_chunk: int = 128,
        spatial: bool = True,
        class_attention: bool = True,
    ):
        super().__init__()
        if window % 2:
            raise ValueError(f"MODEL.AGGREGATOR.WINDOW_SIZE={window} must be even (the shift is half a window)")
        self.window = window
        self.pooling = tuple(pooling)
        self.test_pooling = tuple(test_pooling)
        # a guidance projection exists only where a block uses it (every trainable weight must
        # reach the loss, or multi-process training stops)
        self.appearance_guidance = None
        if spatial and num_layers:
            self.appearance_guidance = nn.Sequential(
                nn.Conv2d(feature_dim, appearance_guidance_dim, kernel_size=3, padding=1), nn.ReLU()
            )
        self.text_guidance = None
        if class_attention and num_layers:
            self.text_guidance = nn.Sequential(nn.Linear(feature_dim, text_guidance_dim), nn.ReLU())
        self.layers = nn.ModuleList(
            AggregatorLayer(
                embed_dim, appearance_guidance_dim, text_guidance_dim, num_heads, window, mlp_ratio, pad_to,
                class_chunk, spatial=spatial, class_attention=class_attention,
            )
            for _ in range(num_layers)
        )

    def check_grid(self, grid: int) -> None:
        """Raise if a g x g grid cannot be split into windows or pooled."""
        if grid % self.window:
            raise ValueError(
                f"the feature grid {grid}x{grid} is not a multiple of MODEL.AGGREGATOR.WINDOW_SIZE={self.window}"
            )
        for name, p in (("POOLING", self.pooling), ("TEST_POOLING", self.test_pooling)):
            if grid % p[0] or grid % p[1]:
                raise ValueError(f"the feature grid {grid}x{grid} is not divisible by MODEL.AGGREGATOR.{name}={list(p)}")

    def forward(self, x: torch.Tensor, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: cost embedding (N, D, T, h, w).
            features: image features (N, C, h, w).
            text: prompt embeddings (N, T, P, C).

        Returns:
            (N, D, T, h, w).
        """
        appearance = self.appearance_guidance(features) if self.appearance_guidance is not None else None
        if self.text_guidance is not None:
            text = self.text_guidance(F.normalize(text.mean(dim=2), dim=-1))  # (N, T, G)
        pooling = self.pooling if self.training else self.test_pooling
        for layer in self.layers:
            x = layer(x, appearance, text, pooling)
        return x
