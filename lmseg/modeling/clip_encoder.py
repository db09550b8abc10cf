"""CLIP encoder: dense image features, decoder guidance and the text tower, on an open_clip model.

open_clip builds the model and loads its weights; this module runs it the way dense prediction
needs, which open_clip's own forward does not:

* every patch token goes through ``ln_post`` and ``proj``, and the last visual block is run
  value-only (no query-key attention), which aligns patch tokens with the text space;
* the residual stream after chosen blocks is returned as decoder guidance;
* the stored position embedding is resized at run time to the input's patch grid;
* attention keeps separate query, key and value weights, so that fine-tuning can train exactly the
  query and value weights.
"""
from __future__ import annotations

import json
import logging
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from .activation_checkpointing import run_checkpointed

logger = logging.getLogger(__name__)

FINETUNE_MODES = ("none", "attention_qv", "attention", "full")

_CONFIG_DIR = Path(__file__).with_name("clip_configs")


@lru_cache(maxsize=None)
def _own_configs() -> Dict[str, str]:
    """open_clip model configs of the architectures LMSeg defines (``LMSeg-Tiny``), by name, as JSON
    text. They are built here, never added to open_clip's global list of models."""
    return {path.stem: path.read_text(encoding="utf-8") for path in sorted(_CONFIG_DIR.glob("*.json"))}


def create_open_clip(name: str, pretrained: str = "", *, quick_gelu: bool = True) -> Tuple[nn.Module, object]:
    """An open_clip model and its tokenizer: one of open_clip's architectures (weights from a
    pretrained tag or file, or random), or one LMSeg defines (random, or weights from a file)."""
    if name in _own_configs():
        cfg = json.loads(_own_configs()[name])
        cfg["quick_gelu"] = cfg.get("quick_gelu", False) or quick_gelu
        model = open_clip.CLIP(**cfg)
        if pretrained:
            open_clip.load_checkpoint(model, pretrained)
        return model, open_clip.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    model = open_clip.create_model(name, pretrained=pretrained or None, force_quick_gelu=quick_gelu)
    return model, open_clip.get_tokenizer(name)


class SplitQKVAttention(nn.Module):
    """Multi-head self-attention with separate query, key and value weights.

    The parameters are named as PyTorch's ``nn.MultiheadAttention`` names them when the three
    projections are separate (``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``, a packed
    ``in_proj_bias`` and ``out_proj``), which is also how CAT-Seg's checkpoints store CLIP.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_proj_weight = nn.Parameter(torch.empty(dim, dim))
        self.k_proj_weight = nn.Parameter(torch.empty(dim, dim))
        self.v_proj_weight = nn.Parameter(torch.empty(dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    @classmethod
    def from_multihead(cls, mha: nn.MultiheadAttention) -> "SplitQKVAttention":
        """Copy the weights of an ``nn.MultiheadAttention`` (packed or not) into a new module."""
        if not mha._qkv_same_embed_dim:
            raise ValueError("only self-attention with equal query/key/value widths is supported")
        attn = cls(mha.embed_dim, mha.num_heads)
        q, k, v = mha.in_proj_weight.detach().chunk(3)
        with torch.no_grad():
            attn.q_proj_weight.copy_(q)
            attn.k_proj_weight.copy_(k)
            attn.v_proj_weight.copy_(v)
            attn.in_proj_bias.copy_(mha.in_proj_bias.detach())
            attn.out_proj.load_state_dict(mha.out_proj.state_dict())
        return attn.to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)

    def forward(self, x: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
        # x: (B, L, D)
        b, n, d = x.shape
        bq, bk, bv = self.in_proj_bias.chunk(3)
        q = F.linear(x, self.q_proj_weight, bq)
        k = F.linear(x, self.k_proj_weight, bk)
        v = F.linear(x, self.v_proj_weight, bv)
        # (B, L, D) -> (B, heads, L, D / heads)
        q, k, v = (t.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))

    def forward_values(self, x: torch.Tensor) -> torch.Tensor:
        """The value path alone: out_proj(x W_v^T + b_v), as if every token attended to itself."""
        bv = self.in_proj_bias.chunk(3)[2]
        return self.out_proj(F.linear(x, self.v_proj_weight, bv))


def _block_forward(block: nn.Module, x: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
    x = x + block.ls_1(block.attn(block.ln_1(x), is_causal=is_causal))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _block_forward_values(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last visual block as CAT-Seg runs it for dense features.

    Every token takes the value path of the attention; the class token's input to the block is added
    as the residual of all tokens; then the MLP with its residual.
    """
    y = block.ls_1(block.attn.forward_values(block.ln_1(x))) + x[:, :1]
    return y + block.ls_2(block.mlp(block.ln_2(y)))


def resize_position_embedding(pos: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Resize a ViT position embedding (1 + n * n, D) bicubically to (1 + gh * gw, D)."""
    n = math.isqrt(pos.shape[0] - 1)
    if (n, n) == tuple(grid):
        return pos
    cls_pos, patch_pos = pos[:1], pos[1:]
    patch_pos = patch_pos.reshape(1, n, n, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
    return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])


def _check_standard_clip(model: nn.Module, name: str) -> None:
    visual = getattr(model, "visual", None)
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    ok = (
        isinstance(model, open_clip.CLIP)
        and blocks is not None
        and hasattr(visual, "conv1")
        and getattr(visual, "attn_pool", None) is None
        and isinstance(getattr(model, "text_projection", None), nn.Parameter)
        and all(isinstance(b.attn, nn.MultiheadAttention) for b in blocks)
        and all(isinstance(b.attn, nn.MultiheadAttention) for b in model.transformer.resblocks)
    )
    if not ok:
        raise ValueError(
            f"MODEL.CLIP.NAME={name!r} is not a plain ViT CLIP (conv patch embedding, standard "
            "attention blocks, class token, linear text projection); LMSeg supports OpenAI-style "
            "ViT CLIP models such as ViT-B-16, ViT-L-14, ViT-L-14-336 and LMSeg-Tiny."
        )


class ClipEncoder(nn.Module):
    """CLIP's two towers, run for dense prediction.

    Args:
        model: an open_clip ``CLIP`` model with ViT image tower (its attention is converted to
            :class:`SplitQKVAttention` in place).
        tokenizer: open_clip tokenizer of the model.
        image_size: square input resolution used inside LMSeg.
        guidance_layers: 0-based visual blocks whose residual stream is returned as guidance.
        finetune: one of :data:`FINETUNE_MODES`.
        dense: whether the dense features are needed. Without them (the ``sam_only`` fusion) the
            image tower runs only up to the last guidance layer, and the weights after it, which
            then take no part in the output, do not train.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        image_size: int,
        guidance_layers: Sequence[int],
        finetune: str = "attention_qv",
        text_batch_size: int = 1024,
        dense: bool = True,
    ):
        super().__init__()
        for blocks in (model.visual.transformer.resblocks, model.transformer.resblocks):
            for block in blocks:
                block.attn = SplitQKVAttention.from_multihead(block.attn)
        self.model = model
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.guidance_layers = tuple(guidance_layers)
        self.text_batch_size = text_batch_size
        self.dense = dense
        # recompute each visual block's activations in backward instead of storing them (set by LMSeg)
        self.checkpoint_activations = False

        visual = model.visual
        self.patch_size = visual.conv1.kernel_size[0]
        self.width = visual.conv1.out_channels
        self.embed_dim = visual.proj.shape[1]
        self.text_width = model.token_embedding.embedding_dim
        depth = len(visual.transformer.resblocks)
        if image_size % self.patch_size:
            raise ValueError(
                f"MODEL.CLIP.IMAGE_SIZE={image_size} is not a multiple of the patch size "
                f"{self.patch_size}"
            )
        bad = [i for i in self.guidance_layers if not 0 <= i < depth - 1]
        if bad:
            raise ValueError(
                f"MODEL.CLIP.GUIDANCE_LAYERS={list(guidance_layers)}: {bad} out of range; accepted: "
                f"0 to {depth - 2} (the image tower has {depth} blocks and the last runs value-only)"
            )
        if model.text_projection.shape[1] != self.embed_dim:
            raise ValueError(f"{type(model).__name__}: text and image embeddings differ in size")
        self.set_finetune(finetune)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def set_finetune(self, mode: str) -> None:
        """Set which CLIP weights train (``requires_grad``); see :data:`FINETUNE_MODES`."""
        if mode not in FINETUNE_MODES:
            raise ValueError(f"MODEL.CLIP.FINETUNE={mode!r} is not one of {FINETUNE_MODES}")
        depth = len(self.model.visual.transformer.resblocks)
        last_visual_attn = f"visual.transformer.resblocks.{depth - 1}.attn."
        # Weights the forward pass never uses cannot train (and would stall multi-process training,
        # where every trainable weight must get a gradient): the query and key of the value-only
        # last visual block, the contrastive logit scale, and without dense features every image
        # weight after the last guidance layer.
        unused = {last_visual_attn + "q_proj_weight", last_visual_attn + "k_proj_weight", "logit_scale"}
        if getattr(self.model, "logit_bias", None) is not None:
            unused.add("logit_bias")
        unused_prefixes = ()
        if not self.dense:
            after = range(max(self.guidance_layers, default=-1) + 1, depth)
            unused_prefixes = tuple(f"visual.transformer.resblocks.{i}." for i in after)
            unused_prefixes += ("visual.ln_post.",)
            unused.add("visual.proj")
        for name, param in self.model.named_parameters():
            if mode == "full":
                train = True
            elif mode == "attention":
                train = ".attn." in name
            elif mode == "attention_qv":
                train = name.endswith(("attn.q_proj_weight", "attn.v_proj_weight"))
            else:
                train = False
            param.requires_grad_(train and name not in unused and not name.startswith(unused_prefixes))

    def text_parameters(self) -> List[nn.Parameter]:
        """The parameters that decide text embeddings (used to key the text cache)."""
        m = self.model
        params = [m.token_embedding.weight, m.positional_embedding, m.text_projection]
        params += list(m.transformer.parameters()) + list(m.ln_final.parameters())
        return params

    # ----------------------------------------------------------------------------------- image
    def encode_image(self, images: torch.Tensor) -> Tuple[Optional[torch.Tensor], List[torch.Tensor]]:
        """Dense features and guidance of normalised images (N, 3, S, S), S = ``image_size``.

        Returns:
            dense: (N, embed_dim, g, g), g = S / patch size; not normalised. None when the
                encoder was built without dense features.
            guidance: one (N, width, g, g) residual stream per guidance layer.
        """
        visual = self.model.visual
        n = images.shape[0]
        x = visual.conv1(images)  # (N, width, g, g)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # (N, g*g, width)
        cls = visual.class_embedding.to(x.dtype).expand(n, 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self._position_embedding(grid).to(x.dtype)
        x = visual.ln_pre(x)

        blocks = visual.transformer.resblocks
        # without dense features, the blocks after the last guidance layer are not needed
        stop = len(blocks) - 1 if self.dense else max(self.guidance_layers, default=-1) + 1
        guidance = []
        for i, block in enumerate(blocks[:stop]):
            x = run_checkpointed(self.checkpoint_activations, _block_forward, block, x)
            if i in self.guidance_layers:
                guidance.append(self._tokens_to_map(x, grid))
        if not self.dense:
            return None, guidance
        x = _block_forward_values(blocks[-1], x)
        x = visual.ln_post(x) @ visual.proj  # (N, 1 + g*g, embed_dim)
        return self._tokens_to_map(x, grid), guidance

    def _position_embedding(self, grid: Tuple[int, int]) -> torch.Tensor:
        """The position embedding resized to ``grid``; without gradients, the resized copy is
        kept until the weights or the grid change (bicubic resizing is slow on GPUs)."""
        pos = self.model.visual.positional_embedding
        if torch.is_grad_enabled() and pos.requires_grad:
            return resize_position_embedding(pos, grid)
        key = (grid, pos.data_ptr(), pos._version, pos.device, pos.dtype)
        if getattr(self, "_pos_cache_key", None) != key:
            self._pos_cache = resize_position_embedding(pos.detach(), grid)
            self._pos_cache_key = key
        return self._pos_cache

    @staticmethod
    def _tokens_to_map(x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        # (N, 1 + gh*gw, D) -> (N, D, gh, gw), class token dropped
        return x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid)

    # ------------------------------------------------------------------------------------ text
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised embeddings (len(texts), embed_dim), encoded in bounded batches."""
        device = self.model.token_embedding.weight.device
        out = []
        for start in range(0, len(texts), self.text_batch_size):
            tokens = self.tokenize(texts[start : start + self.text_batch_size]).to(device)
            out.append(self.encode_tokens(tokens))
        return torch.cat(out)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings of token ids (N, context length)."""
        m = self.model
        eot = tokens.argmax(dim=-1)  # the end-of-text token has the largest id
        # With causal attention nothing after the end-of-text token reaches it: drop those tokens.
        length = int(eot.max()) + 1
        tokens = tokens[:, :length]
        x = m.token_embedding(tokens) + m.positional_embedding[:length].to(m.token_embedding.weight.dtype)
        for block in m.transformer.resblocks:
            x = _block_forward(block, x, is_causal=True)
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot] @ m.text_projection
        return F.normalize(x, dim=-1)


def build_clip_encoder(
    name: str,
    pretrained: str = "",
    *,
    quick_gelu: bool = True,
    image_size: int = 384,
    guidance_layers: Sequence[int] = (3, 7),
    finetune: str = "attention_qv",
    text_batch_size: int = 1024,
    dense: bool = True,
) -> ClipEncoder:
    """Build a :class:`ClipEncoder` from an open_clip architecture name and pretrained tag/file."""
    if name not in open_clip.list_models() and name not in _own_configs():
        known = [m for m in open_clip.list_models() if m.startswith("ViT-")] + list(_own_configs())
        raise ValueError(
            f"MODEL.CLIP.NAME={name!r} is not an open_clip architecture; accepted ViT names: "
            f"{', '.join(known)}"
        )
    if pretrained and not os.path.isfile(pretrained) and pretrained not in open_clip.list_pretrained_tags_by_model(name):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(
            f"MODEL.CLIP.PRETRAINED={pretrained!r} is neither a file nor a pretrained tag of {name}; "
            f"accepted tags: {tags or 'none'}, a checkpoint path, or '' for random weights"
        )
    try:
        model, tokenizer = create_open_clip(name, pretrained, quick_gelu=quick_gelu)
    except RuntimeError as err:
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not load CLIP weights MODEL.CLIP.PRETRAINED={pretrained!r} for {name}: {err}. "
            "Without network access, download the weights elsewhere and give their file path."
        ) from err
    _check_standard_clip(model, name)
    return ClipEncoder(
        model,
        tokenizer,
        image_size=image_size,
        guidance_layers=guidance_layers,
        finetune=finetune,
        text_batch_size=text_batch_size,
        dense=dense,
    )
