"""CAT-Seg's checkpoint format: recognising it, and renaming it to LMSeg's names and back.

CAT-Seg publishes detectron2 checkpoints (CLIP ViT-B/16 and ViT-L/14@336, trained on COCO-Stuff)
whose "model" entry stores CLIP under ``sem_seg_head.predictor.clip_model.``, the cost embedding,
aggregator and decoder under ``sem_seg_head.predictor.transformer.``, and the transposed
convolutions that bring the decoder guidance to its stages as ``upsample1`` and ``upsample2``.
LMSeg with SAM off and one prompt per class holds the same tensors under its own names. The
mapping is one to one and touches no value (the ViT-B position embedding stays at its stored
14 x 14 grid; the CLIP encoder resizes it at run time), so converting there and back gives the
same bits.

The one kind of tensor LMSeg does not store is the shifted-window mask of the second Swin block of
each aggregator layer (``attn_mask``, a buffer in CAT-Seg): LMSeg computes it, so on the way in it
is checked against that computation and dropped, and on the way out it is computed.

Both directions are strict: a tensor outside the format, or one of the format that is absent, is an
error that lists the names.
"""
from __future__ import annotations

import math
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..modeling.aggregator import shifted_window_mask

CLIP_PREFIX = "sem_seg_head.predictor.clip_model."
HEAD_PREFIX = "sem_seg_head.predictor.transformer."
# Where the numbered blocks of each format live: CLIP's image tower, its text tower, the aggregator.
_CATSEG_DEPTH_PREFIXES = (
    CLIP_PREFIX + "visual.transformer.resblocks.", CLIP_PREFIX + "transformer.resblocks.", HEAD_PREFIX + "layers."
)
_LMSEG_DEPTH_PREFIXES = (
    "clip.model.visual.transformer.resblocks.", "clip.model.transformer.resblocks.", "aggregator.layers."
)
# CAT-Seg's decoder always has two stages (decoder1/2, upsample1/2, decoder_guidance_projection.0/1).
_DECODER_STAGES = 2
# CAT-Seg's feature grid and Swin window, which decide the stored masks.
CATSEG_GRID = 24
CATSEG_WINDOW = 12

_CLIP_BLOCK = (
    "attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.in_proj_bias",
    "attn.out_proj.weight", "attn.out_proj.bias", "ln_1.weight", "ln_1.bias",
    "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias",
)


class CatSegFormatError(ValueError):
    """A state dict that does not fit CAT-Seg's format, or a CAT-Seg checkpoint that does not fit a model."""


def is_catseg_state(state: Mapping[str, object]) -> bool:
    """Whether a state dict uses CAT-Seg's names (of its CLIP or of its head)."""
    return any(isinstance(k, str) and k.startswith((CLIP_PREFIX, HEAD_PREFIX)) for k in state)


def _weight_bias(catseg: str, lmseg: str, leaves: Sequence[str] = ("weight", "bias")) -> List[Tuple[str, str]]:
    return [(f"{catseg}.{leaf}", f"{lmseg}.{leaf}") for leaf in leaves]


def catseg_name_pairs(visual_layers: int, text_layers: int, agg_layers: int) -> List[Tuple[str, Optional[str]]]:
    """(CAT-Seg name, LMSeg name) of every tensor of the format, in the order CAT-Seg stores them.

    The LMSeg name is None for the shifted-window masks, which LMSeg computes instead of storing.
    """
    clip = [
        "positional_embedding", "text_projection", "logit_scale", "visual.class_embedding",
        "visual.positional_embedding", "visual.proj", "visual.conv1.weight", "visual.ln_pre.weight",
        "visual.ln_pre.bias",
    ]
    clip += [f"visual.transformer.resblocks.{i}.{leaf}" for i in range(visual_layers) for leaf in _CLIP_BLOCK]
    clip += ["visual.ln_post.weight", "visual.ln_post.bias"]
    clip += [f"transformer.resblocks.{i}.{leaf}" for i in range(text_layers) for leaf in _CLIP_BLOCK]
    clip += ["token_embedding.weight", "ln_final.weight", "ln_final.bias"]
    pairs: List[Tuple[str, Optional[str]]] = [(CLIP_PREFIX + n, "clip.model." + n) for n in clip]

    head = HEAD_PREFIX
    for i in range(agg_layers):
        src, dst = f"{head}layers.{i}.", f"aggregator.layers.{i}."
        for b in (1, 2):
            if b == 2:
                pairs.append((f"{src}swin_block.block_2.attn_mask", None))
            for m in ("norm1", "attn.q", "attn.k", "attn.v", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
                pairs += _weight_bias(f"{src}swin_block.block_{b}.{m}", f"{dst}spatial.block{b}.{m}")
        pairs += _weight_bias(f"{src}swin_block.guidance_norm", f"{dst}spatial.guidance_norm")
        pairs += [(f"{src}attention.{p}", f"{dst}classwise.{p}") for p in ("padding_tokens", "padding_guidance")]
        for c, ours in (("attention.q", "q"), ("attention.k", "k"), ("attention.v", "v"), ("MLP.0", "mlp.0"),
                        ("MLP.2", "mlp.2"), ("norm1", "norm1"), ("norm2", "norm2")):
            pairs += _weight_bias(f"{src}attention.{c}", f"{dst}classwise.{ours}")
    pairs += _weight_bias(head + "conv1", "cost_embed.conv")
    pairs += _weight_bias(head + "guidance_projection.0", "aggregator.appearance_guidance.0")
    pairs += _weight_bias(head + "text_guidance_projection.0", "aggregator.text_guidance.0")
    for j in range(_DECODER_STAGES):
        pairs += _weight_bias(f"{head}decoder_guidance_projection.{j}.0", f"decoder.guidance_proj.{j}.0")
    for j in range(_DECODER_STAGES):
        src, dst = f"{head}decoder{j + 1}.", f"decoder.stages.{j}."
        pairs += _weight_bias(src + "up", dst + "up")
        for n in (0, 1, 3, 4):  # conv (no bias), GroupNorm, conv (no bias), GroupNorm
            leaves = ("weight",) if n in (0, 3) else ("weight", "bias")
            pairs += _weight_bias(f"{src}conv.double_conv.{n}", f"{dst}conv.{n}", leaves)
    pairs += _weight_bias(head + "head", "decoder.head")
    for j in range(_DECODER_STAGES):
        pairs += _weight_bias(f"upsample{j + 1}", f"decoder.guidance_upsample.{j}")
    return pairs


def _depths(state: Mapping[str, object], prefixes: Sequence[str]) -> List[int]:
    """Number of numbered blocks under each prefix (highest index + 1; a gap shows up as missing names)."""
    depths = []
    for prefix in prefixes:
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        found = [int(m.group(1)) for m in map(pattern.match, state) if m]
        depths.append(max(found) + 1 if found else 0)
    return depths


def _check_names(present: Sequence[str], expected: Sequence[str], what: str, hint: str = "") -> None:
    expected_set, present_set = set(expected), set(present)
    missing = [n for n in expected if n not in present_set]
    unknown = [n for n in present if n not in expected_set]
    if not missing and not unknown:
        return
    lines = [f"{what} does not fit CAT-Seg's checkpoint format:"]
    if missing:
        lines.append(f"missing tensors ({len(missing)}): {', '.join(missing)}")
    if unknown:
        lines.append(f"unknown tensors ({len(unknown)}): {', '.join(unknown)}")
    if hint:
        lines.append(hint)
    raise CatSegFormatError("\n".join(lines))


def _check_attn_mask(name: str, mask: torch.Tensor, grid: Optional[int], window: Optional[int]) -> None:
    """Check a stored (windows, L, L) mask against LMSeg's, for the grid and window its shape implies.

    With ``grid`` and ``window`` given (the model's), they must be the ones the mask was made for.
    """
    shape = tuple(mask.shape)
    side = math.isqrt(shape[-1]) if len(shape) == 3 else 0
    count = math.isqrt(shape[0]) if side else 0
    if not side or shape[1] != shape[2] or side * side != shape[1] or count * count != shape[0] or side % 2:
        raise CatSegFormatError(
            f"{name} has shape {list(shape)}; a shifted-window mask is (windows, L, L) with L the square of "
            "an even window size and a square number of windows"
        )
    mask_grid = count * side
    if grid is not None and (mask_grid, side) != (grid, window):
        raise CatSegFormatError(
            f"{name} is the mask of a {mask_grid}x{mask_grid} grid with window {side}, but the model has a "
            f"{grid}x{grid} grid (MODEL.CLIP.IMAGE_SIZE / patch size) and MODEL.AGGREGATOR.WINDOW_SIZE={window}"
        )
    if not torch.equal(mask.detach().float().cpu(), shifted_window_mask(mask_grid, mask_grid, side, side // 2)):
        raise CatSegFormatError(
            f"{name} is not the shifted-window mask (0 inside a region, -100 across) of a {mask_grid}x{mask_grid} "
            f"grid with window {side}, which LMSeg computes in its place"
        )


def convert_catseg_to_lmseg(
    state: Mapping[str, torch.Tensor], *, grid: Optional[int] = None, window: Optional[int] = None
) -> Dict[str, torch.Tensor]:
    """Rename a CAT-Seg state dict (the checkpoint's "model" entry) to LMSeg's names.

    The tensors are the same objects, unchanged; the ``attn_mask`` buffers are checked and dropped.
    ``grid`` and ``window``, when given, are the model's feature grid and Swin window, which the
    stored masks must have been made for.

    Raises:
        CatSegFormatError: not CAT-Seg's names, missing or unknown tensors (all listed), or a mask
            that LMSeg would not compute.
    """
    if not is_catseg_state(state):
        raise CatSegFormatError(
            f"not a CAT-Seg state dict: no tensor is named {CLIP_PREFIX}* or {HEAD_PREFIX}*"
        )
    pairs = catseg_name_pairs(*_depths(state, _CATSEG_DEPTH_PREFIXES))
    _check_names(list(state), [c for c, _ in pairs], "the CAT-Seg state dict")
    out = {}
    for catseg, lmseg in pairs:
        if lmseg is None:
            _check_attn_mask(catseg, state[catseg], grid, window)
        else:
            out[lmseg] = state[catseg]
    return out


def convert_lmseg_to_catseg(
    state: Mapping[str, torch.Tensor], *, grid: int = CATSEG_GRID, window: int = CATSEG_WINDOW
) -> Dict[str, torch.Tensor]:
    """Rename the state dict of an LMSeg model in CAT-Seg's setting (SAM off, one prompt per class) to
    CAT-Seg's names, in CAT-Seg's order.

    The tensors are the same objects, unchanged; the ``attn_mask`` buffers are computed for a
    ``grid`` x ``grid`` feature map and Swin window ``window`` (CAT-Seg's 24 and 12 by default).

    Raises:
        CatSegFormatError: missing or unknown tensors (all listed; e.g. SAM and fusion, which CAT-Seg
            lacks), or a cost embedding of several prompts per class.
    """
    pairs = catseg_name_pairs(*_depths(state, _LMSEG_DEPTH_PREFIXES))
    expected = [lmseg for _, lmseg in pairs if lmseg is not None]
    hint = ""
    if any(k.startswith(("sam.", "fusion.")) for k in state):
        hint = "CAT-Seg has no SAM branch or fusion: only LMSeg models with MODEL.SAM.ENABLED False convert."
    _check_names(list(state), expected, "the LMSeg state dict", hint)
    prompts = state["cost_embed.conv.weight"].shape[1]
    if prompts != 1:
        raise CatSegFormatError(
            f"cost_embed.conv.weight embeds {prompts} prompts per class; CAT-Seg's format has one"
        )
    if grid % window or window % 2:
        raise CatSegFormatError(f"a {grid}x{grid} grid cannot be split into windows of {window} (an even divisor)")
    mask = shifted_window_mask(grid, grid, window, window // 2)
    return {catseg: (mask.clone() if lmseg is None else state[lmseg]) for catseg, lmseg in pairs}
