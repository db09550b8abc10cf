"""Independent reference implementation of CAT-Seg's inference, for tests.

Plain functional PyTorch working directly on a CAT-Seg-format state dict (the key names of
``tests/data/catseg_checkpoint_format.md``: ``sem_seg_head.predictor.clip_model.*``,
``sem_seg_head.predictor.transformer.*``, ``upsample1/2.*``). It imports nothing from ``lmseg``:
tests compare LMSeg's CAT-Seg mode against it.

Public functions
----------------
- ``catseg_tensor_shapes(**sizes)``: name -> shape of every tensor of the format, in listing order.
- ``random_catseg_state_dict(**sizes, seed=0)``: those tensors with random values chosen so that a
  forward pass is numerically healthy and depends on every part.
- ``swin_shift_attn_mask(resolution, window, shift)``: the shifted-window mask (0 / -100).
- ``catseg_text_embeddings(sd, class_names)``: [T, 1, C] L2-normalised class embeddings.
- ``catseg_clip_visual(sd, images)``: dense CLIP features [B, 1+N, E] and the raw residual stream
  after the guidance blocks.
- ``catseg_model_logits(sd, clip_images, text_embeddings)``: the model proper on CLIP-normalised,
  CLIP-resolution images -> logits [B, T, 4g, 4g].
- ``catseg_reference_forward(sd, image, class_names, height=, width=, sliding=)``: CAT-Seg's
  whole-image or sliding-window inference on one 0-255 image -> probabilities [T, height, width].

Decisions where that listing is silent or could be read two ways, and their source
(CAT-Seg's public code, github.com/cvlab-kaist/CAT-Seg (= KU-CVLAB/CAT-Seg), files
cat_seg/cat_seg_model.py, cat_seg/modeling/transformer/{model,cat_seg_predictor}.py,
cat_seg/third_party/model_vpt.py, configs/, eval.sh; detectron2's ImageList / sem_seg_postprocess):

1. Every LayerNorm (CLIP towers, Swin norm1/norm2/guidance_norm, class-attention norm1/norm2) is
   ``nn.LayerNorm`` with the default eps 1e-5 and affine weights, computed in fp32 (model.py,
   model_vpt.py ``LayerNorm``).
2. GroupNorm: ``nn.GroupNorm(out_channels // 16, out_channels)``, default eps 1e-5, affine
   (model.py ``DoubleConv``: 64 -> 4 groups, 32 -> 2 groups).
3. Swin MLP: timm ``Mlp`` with hidden ``int(128 * 4.0) = 512``, exact (erf) GELU (``nn.GELU()``
   default), fc1 -> GELU -> fc2, no dropout at inference (model.py ``SwinTransformerBlock``).
4. Swin window partition order: windows in row-major order of (window row, window column) and
   tokens row-major inside a window; the stored ``attn_mask`` [nW, ws*ws, ws*ws] is indexed in that
   order and added to the scores of every head before the softmax (model.py ``window_partition``,
   ``WindowAttention``). Region labels for the mask use the slices [0, -ws), [-ws, -shift),
   [-shift, end) in both directions; -100 where the labels differ. q is scaled by head_dim^-0.5
   before q @ k^T. The guidance is concatenated before the roll, so it is rolled with x.
   The forward pass uses the ``attn_mask`` tensor of the state dict (a buffer in CAT-Seg, loaded
   from the checkpoint), not a recomputed one.
5. Class attention: CAT-Seg divides v by S (the padded class count) before K^T v and multiplies
   the result by S again; this reference does the same, and computes Z = 1 / (Q . sum K + 1e-6)
   then multiplies, to stay as close as possible in rounding (model.py ``LinearAttention``). The
   pooled tokens are always passed through ``F.interpolate(bilinear, align_corners=True)`` back to
   the unpooled size (identity at 1x1 pooling), padded classes are removed after that, then the
   residual with the layer input (model.py ``ClassTransformerLayer``). The class-attention MLP is
   Linear(128, 512) -> ReLU -> Linear(512, 128).
6. More than ``pad`` classes: the score of a class is the max over P x H x W of the raw cosine;
   ``topk`` of CAT-Seg uses ``sorted=False`` (an implementation-defined order); the aggregator and
   decoder are equivariant to the order of classes, so this reference keeps the selected classes
   in ascending index order. Text guidance is built from the selected, L2-normalised embeddings
   only. The unselected classes get the logit -100 at every position of the 96x96 map; those
   logits then go through exactly the same resizes and sigmoid as the others (sigmoid(-100) is
   about 3.7e-44 in fp32) (model.py ``Aggregator.forward``, cat_seg_model.py).
7. Text: the first synonym ``name.split(", ")[0]``; this reference also strips it, which changes
   no token since CLIP's tokenizer collapses and strips whitespace anyway (ade150.json has
   "bed "). Tokens from ``open_clip.tokenize`` with the state dict's context length; the causal
   mask is -inf above the diagonal; the EOT position is ``argmax`` of the token ids; embeddings
   are divided by their norm (cat_seg_predictor.py ``get_text_embeds``, model_vpt.py
   ``encode_text``). In the cost volume CAT-Seg normalises again with ``F.normalize``; for the
   text guidance it averages over P and divides by the norm again; both are reproduced.
8. CLIP attention: ``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` with the three thirds of
   ``in_proj_bias``; scores scaled by head_dim^-0.5, softmax, out_proj (``nn.MultiheadAttention``
   semantics). Text heads = text width / 64, visual heads = visual width / 64 unless given.
9. Positional embedding of the image tower: resized only when the token count differs from the
   stored one (model_vpt.py ``VisualTransformer.forward``); the source grid is sqrt(L - 1), i.e.
   the stored grid; bicubic, align_corners=False, no antialias; CLS position unchanged.
10. Guidance features are the outputs of the guidance blocks (forward hooks in CAT-Seg), which must
    therefore not be the last block (that one runs ``forward_dense`` and fires no hook).
11. Whole-image path: padding to a multiple of ``size_divisibility`` (32: CAT-Seg reads
    ``MODEL.MASK_FORMER.SIZE_DIVISIBILITY``, whose default is 32) with the value 0 after
    normalisation (detectron2 ``ImageList.from_tensors``). The final resize is detectron2's
    ``sem_seg_postprocess(prob, image_size, height, width)``: it first crops the map to
    ``[:image_h, :image_w]`` (image_size = the unpadded size of the image the model received),
    which does nothing to the 96x96 map unless that image is smaller than 96 pixels on a side, and
    then resizes bilinearly (align_corners=False) to height x width. The crop is reproduced.
12. Sliding-window path: windows at offsets range(0, 640 - 384 + 1, 256) in each direction, in
    row-major order (``nn.Unfold``), followed by the global view; all five run as one batch (every
    operation is per image, so batching changes nothing but rounding). Overlaps are averaged by
    dividing the summed probabilities by the number of windows covering each pixel (``nn.Fold``
    of ones). ``sem_seg_postprocess(out, (640, 640), height, width)`` is a plain bilinear resize.
    The input is cast to float32 first (cat_seg_model.py ``inference_sliding_window``).
13. Every batch element is processed with its own class selection (T > pad); batch elements are
    independent (GroupNorm and LayerNorm are per sample / per token).
14. Aggregator hyper-parameters not stored in the checkpoint: 4 heads (``NUM_HEADS``), window 12
    (``WINDOW_SIZES``), shift = window // 2, pad 256 (``pad_len``), class-attention pooling 1x1
    (``POOLING_SIZES [1,1]`` in eval.sh; other poolings use ``F.avg_pool2d``), decoder widths
    (64, 32) and guidance widths (32, 16) (CAT-Seg's vitb_384.yaml).

Not from CAT-Seg: ``compact_padding`` (optional; see ``_class_attention_layer``) and the random
initialisation of ``random_catseg_state_dict``.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

CLIP_PREFIX = "sem_seg_head.predictor.clip_model."
AGG_PREFIX = "sem_seg_head.predictor.transformer."
TEMPLATE = "A photo of a {} in the scene"
CLIP_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_STD = (68.5005327, 66.6321579, 70.3231630)
LN_EPS = 1e-5
GN_EPS = 1e-5

# Head sizes that CAT-Seg's configs fix (config.yaml, vitb_384.yaml of CAT-Seg).
_DECODER_DIMS = (64, 32)
_DECODER_GUIDANCE_DIMS = (256, 128)
_DECODER_GUIDANCE_PROJ_DIMS = (32, 16)


# --------------------------------------------------------------------------------------------
# The format: names and shapes
# --------------------------------------------------------------------------------------------
def _clip_block_shapes(prefix: str, width: int) -> "OrderedDict[str, Tuple[int, ...]]":
    s = OrderedDict()
    s[prefix + "attn.q_proj_weight"] = (width, width)
    s[prefix + "attn.k_proj_weight"] = (width, width)
    s[prefix + "attn.v_proj_weight"] = (width, width)
    s[prefix + "attn.in_proj_bias"] = (3 * width,)
    s[prefix + "attn.out_proj.weight"] = (width, width)
    s[prefix + "attn.out_proj.bias"] = (width,)
    s[prefix + "ln_1.weight"] = (width,)
    s[prefix + "ln_1.bias"] = (width,)
    s[prefix + "mlp.c_fc.weight"] = (4 * width, width)
    s[prefix + "mlp.c_fc.bias"] = (4 * width,)
    s[prefix + "mlp.c_proj.weight"] = (width, 4 * width)
    s[prefix + "mlp.c_proj.bias"] = (width,)
    s[prefix + "ln_2.weight"] = (width,)
    s[prefix + "ln_2.bias"] = (width,)
    return s


def catseg_tensor_shapes(
    *,
    visual_width: int = 768,
    visual_layers: int = 12,
    visual_heads: Optional[int] = None,
    patch_size: int = 16,
    pos_grid: int = 14,
    text_width: int = 512,
    text_layers: int = 12,
    embed_dim: int = 512,
    vocab_size: int = 49408,
    context_length: int = 77,
    agg_layers: int = 2,
    hidden_dim: int = 128,
    feature_resolution: int = 24,
    window: int = 12,
) -> "OrderedDict[str, Tuple[int, ...]]":
    """Name -> shape of every tensor of a CAT-Seg checkpoint, in the order of the listing.

    ``visual_heads`` does not change any shape (accepted for symmetry with the other functions).
    ``hidden_dim`` is the aggregator width (128 in CAT-Seg), which is also the projected
    appearance/text guidance width; ``feature_resolution`` and ``window`` give the ``attn_mask``
    shape [(res/window)^2, window^2, window^2].
    """
    del visual_heads
    c, v, a = CLIP_PREFIX, CLIP_PREFIX + "visual.", AGG_PREFIX
    s: "OrderedDict[str, Tuple[int, ...]]" = OrderedDict()
    s[c + "positional_embedding"] = (context_length, text_width)
    s[c + "text_projection"] = (text_width, embed_dim)
    s[c + "logit_scale"] = ()
    s[v + "class_embedding"] = (visual_width,)
    s[v + "positional_embedding"] = (pos_grid * pos_grid + 1, visual_width)
    s[v + "proj"] = (visual_width, embed_dim)
    s[v + "conv1.weight"] = (visual_width, 3, patch_size, patch_size)
    s[v + "ln_pre.weight"] = (visual_width,)
    s[v + "ln_pre.bias"] = (visual_width,)
    for i in range(visual_layers):
        s.update(_clip_block_shapes(f"{v}transformer.resblocks.{i}.", visual_width))
    s[v + "ln_post.weight"] = (visual_width,)
    s[v + "ln_post.bias"] = (visual_width,)
    for i in range(text_layers):
        s.update(_clip_block_shapes(f"{c}transformer.resblocks.{i}.", text_width))
    s[c + "token_embedding.weight"] = (vocab_size, text_width)
    s[c + "ln_final.weight"] = (text_width,)
    s[c + "ln_final.bias"] = (text_width,)

    h = hidden_dim
    n_windows = (feature_resolution // window) ** 2
    for i in range(agg_layers):
        p = f"{a}layers.{i}."
        for blk in ("block_1", "block_2"):
            b = f"{p}swin_block.{blk}."
            if blk == "block_2":
                s[b + "attn_mask"] = (n_windows, window * window, window * window)
            s[b + "norm1.weight"] = (h,)
            s[b + "norm1.bias"] = (h,)
            for qk in ("q", "k"):
                s[f"{b}attn.{qk}.weight"] = (h, 2 * h)
                s[f"{b}attn.{qk}.bias"] = (h,)
            s[b + "attn.v.weight"] = (h, h)
            s[b + "attn.v.bias"] = (h,)
            s[b + "attn.proj.weight"] = (h, h)
            s[b + "attn.proj.bias"] = (h,)
            s[b + "norm2.weight"] = (h,)
            s[b + "norm2.bias"] = (h,)
            s[b + "mlp.fc1.weight"] = (4 * h, h)
            s[b + "mlp.fc1.bias"] = (4 * h,)
            s[b + "mlp.fc2.weight"] = (h, 4 * h)
            s[b + "mlp.fc2.bias"] = (h,)
        s[p + "swin_block.guidance_norm.weight"] = (h,)
        s[p + "swin_block.guidance_norm.bias"] = (h,)
        t = p + "attention."
        s[t + "padding_tokens"] = (1, 1, h)
        s[t + "padding_guidance"] = (1, 1, h)
        for qk in ("q", "k"):
            s[f"{t}attention.{qk}.weight"] = (h, 2 * h)
            s[f"{t}attention.{qk}.bias"] = (h,)
        s[t + "attention.v.weight"] = (h, h)
        s[t + "attention.v.bias"] = (h,)
        s[t + "MLP.0.weight"] = (4 * h, h)
        s[t + "MLP.0.bias"] = (4 * h,)
        s[t + "MLP.2.weight"] = (h, 4 * h)
        s[t + "MLP.2.bias"] = (h,)
        s[t + "norm1.weight"] = (h,)
        s[t + "norm1.bias"] = (h,)
        s[t + "norm2.weight"] = (h,)
        s[t + "norm2.bias"] = (h,)
    s[a + "conv1.weight"] = (h, 1, 7, 7)
    s[a + "conv1.bias"] = (h,)
    s[a + "guidance_projection.0.weight"] = (h, embed_dim, 3, 3)
    s[a + "guidance_projection.0.bias"] = (h,)
    s[a + "text_guidance_projection.0.weight"] = (h, embed_dim)
    s[a + "text_guidance_projection.0.bias"] = (h,)
    for j, (d, dp) in enumerate(zip(_DECODER_GUIDANCE_DIMS, _DECODER_GUIDANCE_PROJ_DIMS)):
        s[f"{a}decoder_guidance_projection.{j}.0.weight"] = (dp, d, 3, 3)
        s[f"{a}decoder_guidance_projection.{j}.0.bias"] = (dp,)
    in_ch = h
    for j, (out_ch, g) in enumerate(zip(_DECODER_DIMS, _DECODER_GUIDANCE_PROJ_DIMS)):
        d = f"{a}decoder{j + 1}."
        s[d + "up.weight"] = (in_ch, in_ch - g, 2, 2)
        s[d + "up.bias"] = (in_ch - g,)
        s[d + "conv.double_conv.0.weight"] = (out_ch, in_ch, 3, 3)
        s[d + "conv.double_conv.1.weight"] = (out_ch,)
        s[d + "conv.double_conv.1.bias"] = (out_ch,)
        s[d + "conv.double_conv.3.weight"] = (out_ch, out_ch, 3, 3)
        s[d + "conv.double_conv.4.weight"] = (out_ch,)
        s[d + "conv.double_conv.4.bias"] = (out_ch,)
        in_ch = out_ch
    s[a + "head.weight"] = (1, in_ch, 3, 3)
    s[a + "head.bias"] = (1,)
    s["upsample1.weight"] = (visual_width, _DECODER_GUIDANCE_DIMS[0], 2, 2)
    s["upsample1.bias"] = (_DECODER_GUIDANCE_DIMS[0],)
    s["upsample2.weight"] = (visual_width, _DECODER_GUIDANCE_DIMS[1], 4, 4)
    s["upsample2.bias"] = (_DECODER_GUIDANCE_DIMS[1],)
    return s


def swin_shift_attn_mask(resolution: int, window: int, shift: int) -> torch.Tensor:
    """Shifted-window attention mask [nW, window^2, window^2]: 0 within a region, -100 across."""
    labels = torch.zeros(resolution, resolution)
    bounds = ((0, resolution - window), (resolution - window, resolution - shift),
              (resolution - shift, resolution))
    region = 0
    for r0, r1 in bounds:
        for c0, c1 in bounds:
            labels[r0:r1, c0:c1] = region
            region += 1
    n = resolution // window
    # [n, ws, n, ws] -> [n, n, ws, ws] -> [nW, ws*ws], windows row-major
    win = labels.reshape(n, window, n, window).permute(0, 2, 1, 3).reshape(n * n, window * window)
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


def _init_std(name: str, shape: Tuple[int, ...]) -> float:
    """Standard deviation of the random value of a weight-like tensor (see random_catseg_state_dict)."""
    if name.startswith("upsample") or name.endswith("up.weight"):
        return shape[0] ** -0.5  # ConvTranspose2d [in, out, k, k], kernel == stride: fan_in = in
    if name.endswith(("visual.proj", "text_projection")):
        return shape[0] ** -0.5  # used as x @ W with W [in, out]
    if name == AGG_PREFIX + "conv1.weight":
        # the cosines fed to it are ~0.05 in size for random features (and small for trained
        # CLIP too): scale them up so that the cost volume drives the aggregator
        return 20.0 * math.prod(shape[1:]) ** -0.5
    if name == AGG_PREFIX + "text_guidance_projection.0.weight":
        return 1.0  # input is a unit vector
    return math.prod(shape[1:]) ** -0.5  # Linear [out, in], Conv2d [out, in, k, k]


def random_catseg_state_dict(
    *,
    visual_width: int = 768,
    visual_layers: int = 12,
    visual_heads: Optional[int] = None,
    patch_size: int = 16,
    pos_grid: int = 14,
    text_width: int = 512,
    text_layers: int = 12,
    embed_dim: int = 512,
    vocab_size: int = 49408,
    context_length: int = 77,
    agg_layers: int = 2,
    hidden_dim: int = 128,
    feature_resolution: int = 24,
    window: int = 12,
    seed: int = 0,
) -> Dict[str, torch.Tensor]:
    """Every tensor of the CAT-Seg format (``catseg_tensor_shapes``) with random fp32 values.

    Values: Linear/Conv weights N(0, 1/fan_in) (the aggregator's ``conv1`` 20x larger because its
    input cosines are small; ``text_guidance_projection`` N(0, 1) because its input is a unit
    vector), LayerNorm/GroupNorm weights 1 + N(0, 0.1^2) and biases N(0, 0.05^2), other biases
    N(0, 0.02^2), token/class embeddings N(0, 1), positional embeddings N(0, 0.5^2), padding
    tokens N(0, 1), ``logit_scale`` = ln(100), ``attn_mask`` the correct 0/-100 mask.
    """
    shapes = catseg_tensor_shapes(
        visual_width=visual_width, visual_layers=visual_layers, patch_size=patch_size,
        pos_grid=pos_grid, text_width=text_width, text_layers=text_layers, embed_dim=embed_dim,
        vocab_size=vocab_size, context_length=context_length, agg_layers=agg_layers,
        hidden_dim=hidden_dim, feature_resolution=feature_resolution, window=window)
    gen = torch.Generator().manual_seed(seed)

    def randn(shape, std):
        return torch.randn(shape, generator=gen) * std

    norm_markers = ("ln_", "norm1.", "norm2.", "guidance_norm.", "double_conv.1.", "double_conv.4.")
    sd: Dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "attn_mask":
            sd[name] = swin_shift_attn_mask(feature_resolution, window, window // 2)
        elif leaf == "logit_scale":
            sd[name] = torch.tensor(math.log(100.0))
        elif any(m in name for m in norm_markers) and leaf in ("weight", "bias"):
            sd[name] = 1.0 + randn(shape, 0.1) if leaf == "weight" else randn(shape, 0.05)
        elif leaf in ("bias", "in_proj_bias"):
            sd[name] = randn(shape, 0.02)
        elif leaf in ("class_embedding", "padding_tokens", "padding_guidance") \
                or name.endswith("token_embedding.weight"):
            sd[name] = randn(shape, 1.0)
        elif leaf == "positional_embedding":
            sd[name] = randn(shape, 0.5)
        else:
            sd[name] = randn(shape, _init_std(name, shape))
    return sd


# --------------------------------------------------------------------------------------------
# CLIP
# --------------------------------------------------------------------------------------------
def _ln(x: torch.Tensor, sd: Dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return F.layer_norm(x.float(), (x.shape[-1],), sd[prefix + ".weight"], sd[prefix + ".bias"], LN_EPS)


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _clip_mlp(x: torch.Tensor, sd: Dict[str, torch.Tensor], p: str) -> torch.Tensor:
    h = _quick_gelu(F.linear(x, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]))
    return F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])


def _clip_attention(x: torch.Tensor, sd: Dict[str, torch.Tensor], p: str, heads: int,
                    mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Multi-head self-attention of nn.MultiheadAttention with separate q/k/v weights. x: [B, L, D]."""
    B, L, D = x.shape
    bq, bk, bv = sd[p + "attn.in_proj_bias"].chunk(3)
    q = F.linear(x, sd[p + "attn.q_proj_weight"], bq)
    k = F.linear(x, sd[p + "attn.k_proj_weight"], bk)
    v = F.linear(x, sd[p + "attn.v_proj_weight"], bv)
    d = D // heads
    # [B, L, D] -> [B, heads, L, d]
    q, k, v = (t.reshape(B, L, heads, d).transpose(1, 2) for t in (q, k, v))
    scores = (q * d ** -0.5) @ k.transpose(-2, -1)  # [B, heads, L, L]
    if mask is not None:
        scores = scores + mask
    out = scores.softmax(dim=-1) @ v  # [B, heads, L, d]
    out = out.transpose(1, 2).reshape(B, L, D)
    return F.linear(out, sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"])


def _clip_block(x: torch.Tensor, sd: Dict[str, torch.Tensor], p: str, heads: int,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    x = x + _clip_attention(_ln(x, sd, p + "ln_1"), sd, p, heads, mask)
    return x + _clip_mlp(_ln(x, sd, p + "ln_2"), sd, p)


def _clip_block_value_only(x: torch.Tensor, sd: Dict[str, torch.Tensor], p: str) -> torch.Tensor:
    """CAT-Seg's last visual block (``forward_dense``): the value path for every token, plus the
    CLS token's input residual. x: [B, L, D]."""
    D = x.shape[-1]
    bv = sd[p + "attn.in_proj_bias"][2 * D:]
    v = F.linear(_ln(x, sd, p + "ln_1"), sd[p + "attn.v_proj_weight"], bv)
    y = F.linear(v, sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"]) + x[:, :1]
    return y + _clip_mlp(_ln(y, sd, p + "ln_2"), sd, p)


def _count_blocks(sd: Dict[str, torch.Tensor], prefix: str) -> int:
    marker = prefix + "transformer.resblocks."
    idx = {int(k[len(marker):].split(".", 1)[0]) for k in sd if k.startswith(marker)}
    return len(idx)


def catseg_text_embeddings(state_dict: Dict[str, torch.Tensor], class_names: Sequence[str], *,
                           text_heads: Optional[int] = None) -> torch.Tensor:
    """CAT-Seg's single-template class embeddings: [T, 1, C], L2-normalised."""
    import open_clip

    sd, c = state_dict, CLIP_PREFIX
    names = [name.split(", ")[0].strip() for name in class_names]
    context_length, width = sd[c + "positional_embedding"].shape
    tokens = open_clip.tokenize([TEMPLATE.format(n) for n in names], context_length=context_length)
    heads = text_heads or width // 64
    x = sd[c + "token_embedding.weight"][tokens].float() + sd[c + "positional_embedding"]  # [T, 77, W]
    causal = torch.full((context_length, context_length), float("-inf")).triu_(1)
    for i in range(_count_blocks(sd, c)):
        x = _clip_block(x, sd, f"{c}transformer.resblocks.{i}.", heads, causal)
    x = _ln(x, sd, c + "ln_final")
    eot = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]  # [T, W]
    emb = eot @ sd[c + "text_projection"]  # [T, C]
    emb = emb / emb.norm(dim=-1, keepdim=True)
    return emb.unsqueeze(1)


def catseg_clip_visual(state_dict: Dict[str, torch.Tensor], images: torch.Tensor, *,
                       visual_heads: Optional[int] = None,
                       guidance_layers: Sequence[int] = (3, 7),
                       dense: bool = True,
                       ) -> Tuple[torch.Tensor, Dict[int, torch.Tensor]]:
    """CLIP image tower as CAT-Seg runs it (``encode_image(dense=True)``).

    images: [B, 3, R, R] CLIP-normalised. Returns (features [B, 1 + g*g, E] after ln_post and proj
    on every token, {layer: raw residual stream [B, 1 + g*g, W] after that block}). With
    ``dense=False`` the last block is the ordinary one and the features are those of every
    token of an unmodified CLIP (used by the tests to compare with open_clip).
    """
    sd, v = state_dict, CLIP_PREFIX + "visual."
    w = sd[v + "conv1.weight"]
    width, patch = w.shape[0], w.shape[-1]
    heads = visual_heads or width // 64
    n_layers = _count_blocks(sd, v)
    assert all(0 <= l < n_layers - 1 for l in guidance_layers), "guidance blocks must precede the last"
    x = F.conv2d(images.float(), w, stride=patch)  # [B, W, g, g]
    B, _, g, _ = x.shape
    x = x.flatten(2).transpose(1, 2)  # [B, g*g, W] row-major
    cls = sd[v + "class_embedding"].expand(B, 1, width)
    x = torch.cat([cls, x], dim=1)  # [B, 1 + g*g, W]
    pos = sd[v + "positional_embedding"]
    if pos.shape[0] != x.shape[1]:
        g0 = int(round(math.sqrt(pos.shape[0] - 1)))
        grid = pos[1:].reshape(g0, g0, width).permute(2, 0, 1).unsqueeze(0)  # [1, W, g0, g0]
        grid = F.interpolate(grid, size=(g, g), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid[0].reshape(width, g * g).t()], dim=0)
    x = _ln(x + pos, sd, v + "ln_pre")
    taps: Dict[int, torch.Tensor] = {}
    for i in range(n_layers):
        p = f"{v}transformer.resblocks.{i}."
        if i == n_layers - 1 and dense:
            x = _clip_block_value_only(x, sd, p)
        else:
            x = _clip_block(x, sd, p, heads)
        if i in guidance_layers:
            taps[i] = x
    feats = _ln(x, sd, v + "ln_post") @ sd[v + "proj"]
    return feats, taps


# --------------------------------------------------------------------------------------------
# Aggregator and decoder
# --------------------------------------------------------------------------------------------
def _windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[T, H, W, C] -> [T, nW, ws*ws, C], windows row-major, tokens row-major in a window."""
    T, H, W, C = x.shape
    x = x.reshape(T, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(T, (H // ws) * (W // ws), ws * ws, C)


def _unwindows(x: torch.Tensor, ws: int, H: int, W: int) -> torch.Tensor:
    """Inverse of ``_windows``: [T, nW, ws*ws, C] -> [T, H, W, C]."""
    T, _, _, C = x.shape
    x = x.reshape(T, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(T, H, W, C)


def _swin_block(x: torch.Tensor, guidance: torch.Tensor, sd: Dict[str, torch.Tensor], p: str, *,
                window: int, shift: int, heads: int) -> torch.Tensor:
    """One guided Swin block. x: [T, H, W, C]; guidance: [H, W, Cg], already guidance-normed."""
    T, H, W, C = x.shape
    if min(H, W) <= window:  # CAT-Seg: no partition and no shift when the window covers the map
        window, shift = min(H, W), 0
    h = _ln(x, sd, p + "norm1")
    cat = torch.cat([h, guidance.expand(T, H, W, guidance.shape[-1])], dim=-1)  # [T, H, W, C+Cg]
    if shift:
        cat = torch.roll(cat, shifts=(-shift, -shift), dims=(1, 2))
    win = _windows(cat, window)  # [T, nW, N, C+Cg]
    nW, N = win.shape[1], win.shape[2]
    q = F.linear(win, sd[p + "attn.q.weight"], sd[p + "attn.q.bias"])
    k = F.linear(win, sd[p + "attn.k.weight"], sd[p + "attn.k.bias"])
    v = F.linear(win[..., :C], sd[p + "attn.v.weight"], sd[p + "attn.v.bias"])
    d = q.shape[-1] // heads
    # [T, nW, N, heads*d] -> [T, nW, heads, N, d]
    q, k, v = (t.reshape(T, nW, N, heads, d).transpose(2, 3) for t in (q, k, v))
    scores = torch.einsum("twhnd,twhmd->twhnm", q * d ** -0.5, k)  # [T, nW, heads, N, N]
    if shift:
        scores = scores + sd[p + "attn_mask"][None, :, None]
    out = torch.einsum("twhnm,twhmd->twhnd", scores.softmax(dim=-1), v)
    out = out.transpose(2, 3).reshape(T, nW, N, heads * d)
    out = F.linear(out, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
    out = _unwindows(out, window, H, W)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    x = x + out
    m = F.gelu(F.linear(_ln(x, sd, p + "norm2"), sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
    return x + F.linear(m, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])


def _class_attention_layer(x: torch.Tensor, text_guidance: torch.Tensor,
                           sd: Dict[str, torch.Tensor], p: str, *, heads: int, pad: int,
                           pooling: Tuple[int, int], compact_padding: bool) -> torch.Tensor:
    """Linear attention across classes at every (pooled) position.

    x: [T, C, H, W]; text_guidance: [T, Cg]. Returns [T, C, H, W].
    When T < pad the classes are padded to ``pad`` rows with ``padding_tokens`` /
    ``padding_guidance``. All pad rows are equal at every step (same input, same guidance), so
    ``compact_padding`` computes one pad row and weights it by pad - T in the sums over classes:
    the same value up to rounding, much faster for few classes.
    """
    T, C, H, W = x.shape
    xp = F.avg_pool2d(x, pooling) if tuple(pooling) != (1, 1) else x  # [T, C, h, w]
    _, _, h, w = xp.shape
    guid = text_guidance
    S = T
    mult = None  # how many classes each row stands for (compact padding only)
    if pad > 0 and T < pad:
        n_pad = 1 if compact_padding else pad - T
        xp = torch.cat([xp, sd[p + "padding_tokens"].reshape(1, C, 1, 1).expand(n_pad, C, h, w)], 0)
        guid = torch.cat([guid, sd[p + "padding_guidance"].reshape(1, -1).expand(n_pad, -1)], 0)
        S = pad
        if compact_padding:
            mult = torch.ones(T + 1)
            mult[T] = pad - T
    R = xp.shape[0]  # rows computed: S, or T + 1 with compact padding
    tok = xp.permute(2, 3, 0, 1).reshape(h * w, R, C)  # one sequence of classes per position
    guid = guid.unsqueeze(0).expand(h * w, R, guid.shape[-1])
    n1 = _ln(tok, sd, p + "norm1")
    qk_in = torch.cat([n1, guid], dim=-1)
    q = F.linear(qk_in, sd[p + "attention.q.weight"], sd[p + "attention.q.bias"])
    k = F.linear(qk_in, sd[p + "attention.k.weight"], sd[p + "attention.k.bias"])
    v = F.linear(n1, sd[p + "attention.v.weight"], sd[p + "attention.v.bias"])
    d = C // heads
    q, k, v = (t.reshape(h * w, R, heads, d) for t in (q, k, v))
    qf, kf = F.elu(q) + 1, F.elu(k) + 1
    if mult is not None:  # the identical padding rows, counted pad - T times in the sums over s
        kf_sum = kf * mult.view(1, R, 1, 1)
    else:
        kf_sum = kf
    kv = torch.einsum("nshd,nshe->nhde", kf_sum, v / S)  # sum_s K_s v_s^T, [n, heads, d, d]
    z = 1.0 / (torch.einsum("nshd,nhd->nsh", qf, kf_sum.sum(dim=1)) + 1e-6)  # [n, R, heads]
    att = torch.einsum("nshd,nhde,nsh->nshe", qf, kv, z) * S
    tok = tok + att.reshape(h * w, R, C)
    m = F.relu(F.linear(_ln(tok, sd, p + "norm2"), sd[p + "MLP.0.weight"], sd[p + "MLP.0.bias"]))
    tok = tok + F.linear(m, sd[p + "MLP.2.weight"], sd[p + "MLP.2.bias"])
    out = tok.reshape(h, w, R, C).permute(2, 3, 0, 1)  # [R, C, h, w]
    out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=True)
    return x + out[:T]


def _double_conv(x: torch.Tensor, sd: Dict[str, torch.Tensor], p: str) -> torch.Tensor:
    for conv, norm in ((0, 1), (3, 4)):
        wt = sd[f"{p}double_conv.{conv}.weight"]
        x = F.conv2d(x, wt, padding=1)
        x = F.group_norm(x, wt.shape[0] // 16, sd[f"{p}double_conv.{norm}.weight"],
                         sd[f"{p}double_conv.{norm}.bias"], GN_EPS)
        x = F.relu(x)
    return x


def _aggregate_one(img: torch.Tensor, text: torch.Tensor, guid_a: torch.Tensor,
                   guid_b: torch.Tensor, sd: Dict[str, torch.Tensor], *, pad: int,
                   window: int, heads: int, pooling: Tuple[int, int],
                   compact_padding: bool) -> torch.Tensor:
    """The head for one image. img: [E, g, g] dense CLIP features; text: [T, P, E];
    guid_a: [256, 2g, 2g] (upsample1 output); guid_b: [128, 4g, 4g] (upsample2 output).
    Returns logits [T, 4g, 4g]."""
    a = AGG_PREFIX
    T = text.shape[0]
    img_n = F.normalize(img.unsqueeze(0), dim=1)  # [1, E, g, g]
    text_n = F.normalize(text.unsqueeze(0), dim=-1)  # [1, T, P, E]
    corr = torch.einsum("bchw,btpc->bpthw", img_n, text_n)  # [1, P, T, g, g]
    keep = None
    text_for_guidance = text.unsqueeze(0)  # [1, T, P, E]
    if pad > 0 and T > pad:
        score = corr.permute(0, 2, 1, 3, 4).flatten(2).amax(dim=-1)[0]  # [T]
        keep = score.topk(pad).indices.sort().values
        text_for_guidance = text_n[:, keep]
        corr = torch.einsum("bchw,btpc->bpthw", img_n, text_for_guidance)
    Tk = corr.shape[2]
    # cost embedding: per class, P -> hidden with a 7x7 conv
    x = F.conv2d(corr[0].transpose(0, 1), sd[a + "conv1.weight"], sd[a + "conv1.bias"], padding=3)  # [Tk, C, g, g]
    app = F.relu(F.conv2d(img.unsqueeze(0), sd[a + "guidance_projection.0.weight"],
                          sd[a + "guidance_projection.0.bias"], padding=1))[0]  # [Cg, g, g]
    dec_g = [F.relu(F.conv2d(g_.unsqueeze(0), sd[f"{a}decoder_guidance_projection.{j}.0.weight"],
                             sd[f"{a}decoder_guidance_projection.{j}.0.bias"], padding=1))
             for j, g_ in enumerate((guid_a, guid_b))]  # [1, 32, 2g, 2g], [1, 16, 4g, 4g]
    tg = text_for_guidance[0].mean(dim=-2)  # [Tk, E]
    tg = tg / tg.norm(dim=-1, keepdim=True)
    tg = F.relu(F.linear(tg, sd[a + "text_guidance_projection.0.weight"],
                         sd[a + "text_guidance_projection.0.bias"]))  # [Tk, Cg]

    n_layers = len({k[len(a + "layers."):].split(".", 1)[0] for k in sd if k.startswith(a + "layers.")})
    for i in range(n_layers):
        p = f"{a}layers.{i}."
        gnorm = _ln(app.permute(1, 2, 0), sd, p + "swin_block.guidance_norm")  # [g, g, Cg]
        xs = x.permute(0, 2, 3, 1)  # [Tk, g, g, C]
        xs = _swin_block(xs, gnorm, sd, p + "swin_block.block_1.", window=window, shift=0, heads=heads)
        xs = _swin_block(xs, gnorm, sd, p + "swin_block.block_2.", window=window, shift=window // 2,
                         heads=heads)
        x = xs.permute(0, 3, 1, 2)  # [Tk, C, g, g]
        x = _class_attention_layer(x, tg, sd, p + "attention.", heads=heads, pad=pad, pooling=pooling,
                                   compact_padding=compact_padding)

    for j in (1, 2):
        d = f"{a}decoder{j}."
        x = F.conv_transpose2d(x, sd[d + "up.weight"], sd[d + "up.bias"], stride=2)
        g_ = dec_g[j - 1].expand(Tk, -1, -1, -1)
        x = _double_conv(torch.cat([x, g_], dim=1), sd, d + "conv.")
    logits = F.conv2d(x, sd[a + "head.weight"], sd[a + "head.bias"], padding=1)[:, 0]  # [Tk, 4g, 4g]
    if keep is not None:
        full = torch.full((T,) + logits.shape[1:], -100.0, dtype=logits.dtype)
        full[keep] = logits
        logits = full
    return logits


def catseg_model_logits(state_dict: Dict[str, torch.Tensor], clip_images: torch.Tensor,
                        text_embeddings: torch.Tensor, *, guidance_layers: Sequence[int] = (3, 7),
                        visual_heads: Optional[int] = None, class_attention_pad: int = 256,
                        window: int = 12, agg_heads: int = 4,
                        pooling: Tuple[int, int] = (1, 1),
                        compact_padding: bool = False) -> torch.Tensor:
    """CAT-Seg's model on CLIP-normalised images at CLIP resolution.

    clip_images: [B, 3, R, R]; text_embeddings: [T, P, E] (``catseg_text_embeddings``).
    Returns logits [B, T, 4g, 4g] (g = R / patch, 96x96 for CAT-Seg).
    """
    sd = state_dict
    feats, taps = catseg_clip_visual(sd, clip_images, visual_heads=visual_heads,
                                     guidance_layers=guidance_layers)
    B, L, E = feats.shape
    g = int(round(math.sqrt(L - 1)))
    img = feats[:, 1:].transpose(1, 2).reshape(B, E, g, g)  # row-major grid

    def grid(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].transpose(1, 2).reshape(B, t.shape[-1], g, g)

    res4 = F.conv_transpose2d(grid(taps[guidance_layers[0]]), sd["upsample1.weight"],
                              sd["upsample1.bias"], stride=2)  # [B, 256, 2g, 2g]
    res5 = F.conv_transpose2d(grid(taps[guidance_layers[1]]), sd["upsample2.weight"],
                              sd["upsample2.bias"], stride=4)  # [B, 128, 4g, 4g]
    out = [_aggregate_one(img[b], text_embeddings.float(), res4[b], res5[b], sd,
                          pad=class_attention_pad, window=window, heads=agg_heads, pooling=pooling,
                          compact_padding=compact_padding)
           for b in range(B)]
    return torch.stack(out)


# --------------------------------------------------------------------------------------------
# Inference paths
# --------------------------------------------------------------------------------------------
def _clip_normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN).view(-1, 1, 1)
    std = torch.tensor(CLIP_STD).view(-1, 1, 1)
    return (x - mean) / std


def _resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def catseg_reference_forward(
    state_dict: Dict[str, torch.Tensor],
    image: torch.Tensor,
    class_names: Sequence[str],
    *,
    height: int,
    width: int,
    sliding: bool,
    clip_resolution: int = 384,
    patch_size: Optional[int] = None,
    guidance_layers: Sequence[int] = (3, 7),
    visual_heads: Optional[int] = None,
    text_heads: Optional[int] = None,
    class_attention_pad: int = 256,
    window: int = 12,
    agg_heads: int = 4,
    pooling: Tuple[int, int] = (1, 1),
    size_divisibility: int = 32,
    sliding_kernel: int = 384,
    sliding_overlap: float = 0.333,
    sliding_out_res: int = 640,
    text_embeddings: Optional[torch.Tensor] = None,
    compact_padding: bool = False,
) -> torch.Tensor:
    """CAT-Seg's inference on one image: per-class probabilities [T, height, width].

    image: [3, H, W] RGB on the 0-255 scale (uint8 or float), as the model receives it (after the
    test mapper's resize); height, width: the size of the output (the original image).
    ``clip_resolution``: 384 for ViT-B/16, 336 for ViT-L/14@336. ``patch_size`` is read from the
    state dict (given, it must agree). ``text_embeddings`` [T, P, E] replaces the text tower
    (e.g. to reuse them); by default ``catseg_text_embeddings(state_dict, class_names)``.
    ``class_attention_pad`` (CAT-Seg: 256), ``window`` (12), ``agg_heads`` (4) and ``pooling``
    ((1, 1) as evaluated) are CAT-Seg's aggregator settings. ``compact_padding=True`` computes the
    identical padding classes once (same result up to fp32 rounding, ~1e-7; tens of times faster
    when T is small); the default computes all ``pad`` rows literally.
    """
    sd = state_dict
    stored_patch = sd[CLIP_PREFIX + "visual.conv1.weight"].shape[-1]
    assert patch_size is None or patch_size == stored_patch, (patch_size, stored_patch)
    if text_embeddings is None:
        text_embeddings = catseg_text_embeddings(sd, class_names, text_heads=text_heads)
    assert text_embeddings.shape[0] == len(class_names)
    res = (clip_resolution, clip_resolution)

    def model(clip_images: torch.Tensor) -> torch.Tensor:
        return catseg_model_logits(sd, clip_images, text_embeddings, guidance_layers=guidance_layers,
                                   visual_heads=visual_heads, class_attention_pad=class_attention_pad,
                                   window=window, agg_heads=agg_heads, pooling=pooling,
                                   compact_padding=compact_padding)

    if not sliding:
        _, H, W = image.shape
        x = _clip_normalize(image.float())
        Hp = -(-H // size_divisibility) * size_divisibility
        Wp = -(-W // size_divisibility) * size_divisibility
        x = F.pad(x, (0, Wp - W, 0, Hp - H), value=0.0)  # pad after normalisation
        x = _resize(x.unsqueeze(0), res)
        prob = model(x)[0].sigmoid()  # [T, 4g, 4g]
        prob = prob[:, :H, :W]  # sem_seg_postprocess's crop (no-op unless H or W < 4g)
        return _resize(prob.unsqueeze(0), (height, width))[0]

    k, out = sliding_kernel, sliding_out_res
    stride = int(k * (1 - sliding_overlap))
    img = image.float().unsqueeze(0)  # [1, 3, H, W]
    big = _resize(img, (out, out))
    starts = list(range(0, out - k + 1, stride))
    offsets = [(y, x) for y in starts for x in starts]  # row-major, as nn.Unfold
    crops = [big[:, :, y:y + k, x:x + k] for y, x in offsets]
    glob = _resize(img, (k, k))
    batch = _clip_normalize(torch.cat(crops + [glob], dim=0))  # [n + 1, 3, k, k]
    batch = _resize(batch, res)
    prob = _resize(model(batch), (k, k)).sigmoid()  # [n + 1, T, k, k]
    T = prob.shape[1]
    acc = torch.zeros(T, out, out)
    count = torch.zeros(1, out, out)
    for i, (y, x) in enumerate(offsets):
        acc[:, y:y + k, x:x + k] += prob[i]
        count[:, y:y + k, x:x + k] += 1.0
    folded = acc / count
    glob_prob = _resize(prob[-1:], (out, out))[0]
    merged = (folded + glob_prob) / 2.0
    return _resize(merged.unsqueeze(0), (height, width))[0]
