"""SAM encoder: Segment Anything's image encoder at any input size, with its checkpoint loading.

The encoder is segment_anything's own ``ImageEncoderViT``, built at its native resolution so that
the published checkpoints load unchanged. At another input size the absolute position embedding is
resized at run time; the relative position tables of the global-attention blocks are resized by
segment_anything itself.
"""
from __future__ import annotations

import logging
import os
from functools import partial
from typing import Dict

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.image_encoder import get_rel_pos, window_partition, window_unpartition
from torch import nn

from .activation_checkpointing import run_checkpointed

logger = logging.getLogger(__name__)

FINETUNE_MODES = ("none", "qkv_proj", "full")

# Encoder hyper-parameters of each SAM size (segment_anything's build_sam values); "tiny" is a
# random few-layer encoder for tests and installation checks.
SAM_ARCHS: Dict[str, dict] = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    "tiny": dict(
        embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4, out_chans=32, img_size=64
    ),
}
_COMMON = dict(img_size=1024, patch_size=16, window_size=14, out_chans=256, mlp_ratio=4.0)


class SamEncoder(nn.Module):
    """SAM's image encoder run at ``input_size``.

    Args:
        arch: a key of :data:`SAM_ARCHS`.
        input_size: square input resolution used inside LMSeg.
        finetune: one of :data:`FINETUNE_MODES`.
    """

    def __init__(self, arch: str = "vit_b", *, input_size: int = 1024, finetune: str = "qkv_proj"):
        super().__init__()
        if arch not in SAM_ARCHS:
            raise ValueError(f"MODEL.SAM.TYPE={arch!r} is not one of {tuple(SAM_ARCHS)}")
        params = {**_COMMON, **SAM_ARCHS[arch]}
        self.patch_size = params["patch_size"]
        if input_size % self.patch_size:
            raise ValueError(
                f"MODEL.SAM.INPUT_SIZE={input_size} is not a multiple of SAM's patch size {self.patch_size}"
            )
        self.input_size = input_size
        self.out_channels = params["out_chans"]
        # Where the weights come from, for the logs: the checkpoint loaded last, if any.
        self.weights_source = "random initialisation"
        self.encoder = ImageEncoderViT(
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            qkv_bias=True,
            use_rel_pos=True,
            **params,
        )
        self.set_finetune(finetune)
        # recompute each block's activations in backward instead of storing them (set by LMSeg)
        self.checkpoint_activations = False

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    def set_finetune(self, mode: str) -> None:
        """Set which SAM weights train (``requires_grad``); see :data:`FINETUNE_MODES`."""
        if mode not in FINETUNE_MODES:
            raise ValueError(f"MODEL.SAM.FINETUNE={mode!r} is not one of {FINETUNE_MODES}")
        for name, param in self.encoder.named_parameters():
            if mode == "full":
                train = True
            elif mode == "qkv_proj":
                train = name.startswith("blocks.") and name.endswith(("attn.qkv.weight", "attn.proj.weight"))
            else:
                train = False
            param.requires_grad_(train)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """SAM features (N, out_channels, S / 16, S / 16) of normalised images (N, 3, S, S)."""
        enc = self.encoder
        x = enc.patch_embed(images)  # (N, h, w, C)
        pos = enc.pos_embed
        if pos.shape[1:3] != x.shape[1:3]:
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bicubic", align_corners=False)
            pos = pos.permute(0, 2, 3, 1)
        x = x + pos.to(x.dtype)
        for block in enc.blocks:
            x = run_checkpointed(self.checkpoint_activations, _block_forward, block, x)
        return enc.neck(x.permute(0, 3, 1, 2))

    def load_checkpoint(self, path_or_url: str) -> None:
        """Load a SAM checkpoint (full SAM or encoder only) from a path or an http(s) URL.

        URLs are downloaded once into torch's hub cache. Missing or unexpected encoder tensors are an
        error that lists them.
        """
        state = _load_state(path_or_url)
        if any(k.startswith("image_encoder.") for k in state):
            state = {k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")}
        result = self.encoder.load_state_dict(state, strict=False)
        problems = []
        if result.missing_keys:
            problems.append(f"missing: {', '.join(result.missing_keys)}")
        if result.unexpected_keys:
            problems.append(f"unexpected: {', '.join(result.unexpected_keys)}")
        if problems:
            raise ValueError(
                f"MODEL.SAM.CHECKPOINT={path_or_url!r} does not fit the SAM image encoder of this "
                f"config (check MODEL.SAM.TYPE): {'; '.join(problems)}"
            )
        self.weights_source = path_or_url
        logger.info("Loaded SAM image encoder weights from %s", path_or_url)


def _block_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """segment_anything's ``Block.forward`` with :func:`_attention` in place of its attention."""
    shortcut = x
    x = block.norm1(x)
    if block.window_size > 0:
        h, w = x.shape[1:3]
        x, pad_hw = window_partition(x, block.window_size)
    x = _attention(block.attn, x)
    if block.window_size > 0:
        x = window_unpartition(x, block.window_size, pad_hw, (h, w))
    x = shortcut + x
    return x + block.mlp(block.norm2(x))


def _attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """segment_anything's attention with decomposed relative positions, computed by
    ``scaled_dot_product_attention`` so that no (tokens x tokens) matrix is materialised.

    SAM adds to the scaled logits q.k of query (qh, qw) and key (kh, kw) the terms
    q.Rh[qh, kh] and q.Rw[qw, kw]. Appending those per-query values to q, and one-hot codes of
    kh and kw to k, gives exactly the same logits as one dot product, which fused attention
    kernels compute without storing the attention matrix (a large saving at 1024 px, where the
    global blocks attend over 4096 tokens).
    """
    b, h, w, _ = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, heads, h*w, d)
    d = q.shape[-1]
    if attn.use_rel_pos:
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", q.reshape(b, heads, h, w, d), get_rel_pos(h, h, attn.rel_pos_h).to(q.dtype))
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", q.reshape(b, heads, h, w, d), get_rel_pos(w, w, attn.rel_pos_w).to(q.dtype))
        keys = torch.arange(h * w, device=x.device)
        code_h = F.one_hot(keys // w, h).to(q.dtype).expand(b, heads, -1, -1)
        code_w = F.one_hot(keys % w, w).to(q.dtype).expand(b, heads, -1, -1)
        q = torch.cat([q * attn.scale, rel_h.reshape(b, heads, h * w, h), rel_w.reshape(b, heads, h * w, w)], dim=-1)
        k = torch.cat([k, code_h, code_w], dim=-1)
        # fused kernels want equal head sizes, multiples of 8: zero padding changes no product
        width = -(-q.shape[-1] // 8) * 8
        q, k, v = (F.pad(t, (0, width - t.shape[-1])) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)[..., :d]
    else:
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    out = out.view(b, heads, h, w, d).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return attn.proj(out)


def _load_state(path_or_url: str) -> Dict[str, torch.Tensor]:
    if path_or_url.startswith(("http://", "https://")):
        try:
            state = torch.hub.load_state_dict_from_url(path_or_url, map_location="cpu", progress=True)
        except Exception as err:  # network errors come in many types
            raise RuntimeError(
                f"could not download MODEL.SAM.CHECKPOINT={path_or_url!r} ({err}). Download it on a "
                "machine with network access and set MODEL.SAM.CHECKPOINT to the file's path."
            ) from err
    else:
        if not os.path.isfile(path_or_url):
            raise FileNotFoundError(
                f"MODEL.SAM.CHECKPOINT={path_or_url!r}: no such file. Give the path of a SAM "
                "checkpoint (e.g. sam_vit_b_01ec64.pth), its URL, or '' for random weights."
            )
        state = torch.load(path_or_url, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"MODEL.SAM.CHECKPOINT={path_or_url!r} does not hold a state dict")
    return state


def build_sam_encoder(
    arch: str, checkpoint: str = "", *, input_size: int = 1024, finetune: str = "qkv_proj"
) -> SamEncoder:
    """Build a :class:`SamEncoder` and load ``checkpoint`` into it (a path, a URL, or "")."""
    encoder = SamEncoder(arch, input_size=input_size, finetune=finetune)
    if checkpoint:
        encoder.load_checkpoint(checkpoint)
    return encoder
