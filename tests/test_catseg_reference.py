"""Checks of the CAT-Seg reference implementation (tests/helpers/catseg_reference.py) itself.

(a) its CLIP towers against open_clip with the same weights; (b) its state-dict format against the
listing of CAT-Seg's checkpoint format in tests/data/catseg_checkpoint_format.md; (c) smoke runs of both inference paths at
reduced depth, and properties the model must have.
"""
import math
import re
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import catseg_reference as ref

# The listing of CAT-Seg's checkpoint tensors (from the design notes), kept with the tests.
SPEC = Path(__file__).resolve().parent / "data" / "catseg_checkpoint_format.md"

# Reduced sizes that keep the format (24x24 feature grid, window 12, 128-wide head) and run fast.
SMALL = dict(visual_width=64, visual_layers=4, text_width=64, text_layers=2, embed_dim=64)
SMALL_GUIDANCE = (1, 2)
NAMES = ["wall", "cat, kitty", "sky", "chest of drawers"]


@pytest.fixture(scope="module")
def small_sd():
    return ref.random_catseg_state_dict(**SMALL, seed=0)


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth uint8 RGB image with some structure (3 x h x w)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 6, 8, generator=g)
    img = F.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)[0]
    return (img * 255).round().clamp(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------------------
# (a) CLIP towers against open_clip
# ------------------------------------------------------------------------------------------
def _to_open_clip(sd: dict) -> dict:
    """CAT-Seg CLIP tensors -> open_clip names, q/k/v packed back into in_proj_weight."""
    out = {}
    for k, v in sd.items():
        if not k.startswith(ref.CLIP_PREFIX):
            continue
        k = k[len(ref.CLIP_PREFIX):]
        if k.endswith("attn.q_proj_weight"):
            base = k[: -len("q_proj_weight")]
            out[base + "in_proj_weight"] = torch.cat(
                [v, sd[ref.CLIP_PREFIX + base + "k_proj_weight"], sd[ref.CLIP_PREFIX + base + "v_proj_weight"]])
        elif k.endswith(("attn.k_proj_weight", "attn.v_proj_weight")):
            continue
        else:
            out[k] = v
    return out


def _open_clip_model(sizes: dict, image_size: int) -> torch.nn.Module:
    model = open_clip.model.CLIP(
        embed_dim=sizes["embed_dim"],
        vision_cfg=dict(layers=sizes["visual_layers"], width=sizes["visual_width"],
                        patch_size=sizes["patch_size"], image_size=image_size, head_width=64),
        text_cfg=dict(context_length=77, vocab_size=49408, width=sizes["text_width"],
                      heads=sizes["text_width"] // 64, layers=sizes["text_layers"]),
        quick_gelu=True,
    )
    return model.eval()


OC_SIZES = dict(visual_width=128, visual_layers=3, patch_size=16, pos_grid=4, text_width=128,
                text_layers=2, embed_dim=64)


@pytest.fixture(scope="module")
def oc_pair():
    sd = ref.random_catseg_state_dict(**OC_SIZES, seed=3)
    model = _open_clip_model(OC_SIZES, image_size=16 * 4)
    model.load_state_dict(_to_open_clip(sd), strict=True)
    return sd, model


def test_text_embeddings_match_open_clip(oc_pair):
    sd, model = oc_pair
    names = ["wall", "bed ", "chest of drawers", "cat, kitty, pussycat", "traffic light"]
    ours = ref.catseg_text_embeddings(sd, names)
    assert ours.shape == (len(names), 1, OC_SIZES["embed_dim"])
    first = ["wall", "bed", "chest of drawers", "cat", "traffic light"]
    tokens = open_clip.tokenize([f"A photo of a {n} in the scene" for n in first])
    with torch.no_grad():
        theirs = F.normalize(model.encode_text(tokens), dim=-1)
    torch.testing.assert_close(ours[:, 0], theirs, atol=2e-6, rtol=0)
    # different names give clearly different embeddings
    cos = ours[:, 0] @ ours[:, 0].T
    assert cos[~torch.eye(len(names), dtype=torch.bool)].max() < 0.999


def _hooked_residuals(visual: torch.nn.Module, x: torch.Tensor):
    outs = []
    hooks = [blk.register_forward_hook(lambda m, i, o: outs.append(o)) for blk in visual.transformer.resblocks]
    try:
        with torch.no_grad():
            pooled = visual(x)
    finally:
        for h in hooks:
            h.remove()
    return pooled, outs


def test_visual_residual_stream_matches_open_clip(oc_pair):
    sd, model = oc_pair
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    pooled, outs = _hooked_residuals(model.visual, x)
    n = OC_SIZES["visual_layers"]
    feats, taps = ref.catseg_clip_visual(sd, x, guidance_layers=tuple(range(n - 1)), dense=False)
    for i in range(n - 1):
        torch.testing.assert_close(taps[i], outs[i], atol=2e-5, rtol=0)
    # an unmodified last block: CLS through ln_post and proj is open_clip's image embedding
    torch.testing.assert_close(feats[:, 0], pooled, atol=2e-5, rtol=0)

    # The value-only last block equals open_clip's block with every token attending only to
    # itself (attention output = out_proj(v_i)), with the residual x_i swapped for x_CLS.
    blk = model.visual.transformer.resblocks[n - 1]
    inp = outs[n - 2]
    L = inp.shape[1]
    self_only = torch.full((L, L), float("-inf")).fill_diagonal_(0.0)
    with torch.no_grad():
        y = inp + blk.attention(blk.ln_1(inp), attn_mask=self_only)
        y = y - inp + inp[:, :1]
        y = y + blk.mlp(blk.ln_2(y))
        expected = model.visual.ln_post(y) @ model.visual.proj
    dense, _ = ref.catseg_clip_visual(sd, x, guidance_layers=(), dense=True)
    torch.testing.assert_close(dense, expected, atol=2e-5, rtol=0)


def test_positional_embedding_resize_matches_open_clip():
    """At 384 px the stored 4x4 grid is resized to 24x24 (bicubic, align_corners=False, no
    antialias); open_clip's own resize gives the same residual stream."""
    sizes = dict(OC_SIZES, visual_layers=2)
    sd = ref.random_catseg_state_dict(**sizes, seed=4)
    model = _open_clip_model(sizes, image_size=384)
    oc_sd = _to_open_clip(sd)
    open_clip.model.resize_pos_embed(oc_sd, model, interpolation="bicubic", antialias=False)
    assert oc_sd["visual.positional_embedding"].shape == (577, sizes["visual_width"])
    model.load_state_dict(oc_sd, strict=True)
    x = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(1))
    _, outs = _hooked_residuals(model.visual, x)
    _, taps = ref.catseg_clip_visual(sd, x, guidance_layers=(0,), dense=True)
    torch.testing.assert_close(taps[0], outs[0], atol=2e-5, rtol=0)


# ------------------------------------------------------------------------------------------
# (b) The format against the listing of tests/data/catseg_checkpoint_format.md
# ------------------------------------------------------------------------------------------
def _spec_text() -> str:
    return SPEC.read_text()


def _listed_shapes() -> dict:
    text = _spec_text()
    section = text.split("## State dict", 1)[1]
    block = section.split("```", 2)[1]
    shapes = {}
    for line in block.strip().splitlines():
        m = re.fullmatch(r"(\S+) \[([\d, ]*)\]", line.strip())
        assert m, line
        name, dims = m.group(1), tuple(int(d) for d in m.group(2).split(",") if d.strip())
        repeats = 12 if "clip_model" in name else 2  # 12 CLIP blocks per tower, 2 aggregator layers
        for i in range(repeats if "{i}" in name else 1):
            shapes[name.replace("{i}", str(i))] = dims
    return shapes


def test_format_matches_listing_vitb():
    listed = _listed_shapes()
    assert len(listed) == 484
    shapes = ref.catseg_tensor_shapes()
    assert set(shapes) == set(listed)
    assert {k: tuple(v) for k, v in shapes.items()} == listed
    sd = ref.random_catseg_state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == listed
    assert all(v.dtype == torch.float32 for v in sd.values())
    n_params = sum(v.numel() for k, v in sd.items() if not k.endswith("attn_mask"))
    assert round(n_params / 1e6, 1) == 154.3
    assert sum(k.endswith("attn_mask") for k in sd) == 2


def test_format_vitl_sizes():
    text = _spec_text()
    para = text.split("For ViT-L/14@336:", 1)[1].split("```", 1)[0]
    named = dict(re.findall(r"`([\w.]+)`(?: is)? \[([\d, ]+)\]", para))
    assert set(named) == {"upsample1", "upsample2", "guidance_projection.0", "text_guidance_projection.0"}
    b = ref.catseg_tensor_shapes()
    l = ref.catseg_tensor_shapes(visual_width=1024, visual_layers=24, patch_size=14, pos_grid=24,
                                 text_width=768, text_layers=12, embed_dim=768)
    for short, dims in named.items():
        key = short + ".weight" if short.startswith("upsample") else ref.AGG_PREFIX + short + ".weight"
        assert l[key] == tuple(int(d) for d in dims.split(","))
    # the rest of the head is identical
    changed = {ref.AGG_PREFIX + "guidance_projection.0.weight", ref.AGG_PREFIX + "text_guidance_projection.0.weight"}
    for k, v in b.items():
        if k.startswith(ref.AGG_PREFIX) and k not in changed:
            assert l[k] == v, k
    assert l[ref.CLIP_PREFIX + "visual.positional_embedding"] == (577, 1024)
    assert sum(k.endswith("visual.transformer.resblocks.23.ln_2.bias") for k in l) == 1


def test_attn_mask_is_the_shifted_window_mask():
    """-100 exactly between tokens of a shifted window that came from opposite sides of the
    wrap-around of the roll by -6 (rows or columns), 0 elsewhere; windows row-major."""
    sd = ref.random_catseg_state_dict(**SMALL)
    res, ws, shift = 24, 12, 6
    n = res // ws
    expected = torch.zeros(n * n, ws * ws, ws * ws)
    for w in range(n * n):
        coords = [((w // n) * ws + t // ws, (w % n) * ws + t % ws) for t in range(ws * ws)]
        wrapped = torch.tensor([[r + shift >= res, c + shift >= res] for r, c in coords])
        differs = (wrapped[:, None, :] != wrapped[None, :, :]).any(-1)
        expected[w][differs] = -100.0
    for i in range(2):
        mask = sd[f"{ref.AGG_PREFIX}layers.{i}.swin_block.block_2.attn_mask"]
        assert torch.equal(mask, expected)
    assert (expected == -100).any(-1).sum() > 0 and (expected[0] == 0).all()


# ------------------------------------------------------------------------------------------
# (c) Smoke runs and properties
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sliding", [False, True])
def test_smoke_both_paths(small_sd, sliding):
    image = _image(640, 856)
    out = ref.catseg_reference_forward(small_sd, image, NAMES, height=427, width=571, sliding=sliding,
                                       guidance_layers=SMALL_GUIDANCE, compact_padding=True)
    assert out.shape == (len(NAMES), 427, 571)
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    assert out.std() > 0.02  # not saturated, not constant
    assert (out.min() > 1e-3) and (out.max() < 1 - 1e-3)


def test_class_score_depends_on_its_name(small_sd):
    image = _image(640, 640, seed=1)
    kw = dict(height=160, width=160, sliding=False, guidance_layers=SMALL_GUIDANCE, compact_padding=True)
    a = ref.catseg_reference_forward(small_sd, image, NAMES, **kw)
    b = ref.catseg_reference_forward(small_sd, image, NAMES[:2] + ["grass"] + NAMES[3:], **kw)
    changed = (a[2] - b[2]).abs().max()
    assert changed > 1e-2
    # classes interact only through the (padded) class attention: the others move far less
    others = max((a[i] - b[i]).abs().max() for i in (0, 1, 3))
    assert others < changed
    # the synonym after ", " is ignored
    c = ref.catseg_reference_forward(small_sd, image, ["wall", "cat, dog", "sky", "chest of drawers"], **kw)
    torch.testing.assert_close(a, c, atol=0, rtol=0)


def test_permuting_classes_permutes_outputs(small_sd):
    image = _image(640, 720, seed=2)
    kw = dict(height=100, width=120, sliding=False, guidance_layers=SMALL_GUIDANCE, compact_padding=True)
    a = ref.catseg_reference_forward(small_sd, image, NAMES, **kw)
    perm = [2, 0, 3, 1]
    b = ref.catseg_reference_forward(small_sd, image, [NAMES[i] for i in perm], **kw)
    torch.testing.assert_close(b, a[perm], atol=1e-5, rtol=0)


def test_compact_padding_equals_literal_padding(small_sd):
    g = torch.Generator().manual_seed(5)
    p = f"{ref.AGG_PREFIX}layers.0.attention."
    x = torch.randn(3, 128, 6, 6, generator=g)
    tg = torch.relu(torch.randn(3, 128, generator=g))
    kw = dict(heads=4, pad=256, pooling=(1, 1))
    full = ref._class_attention_layer(x, tg, small_sd, p, compact_padding=False, **kw)
    compact = ref._class_attention_layer(x, tg, small_sd, p, compact_padding=True, **kw)
    torch.testing.assert_close(compact, full, atol=1e-5, rtol=0)
    # the pads take part: without them the result differs
    no_pad = ref._class_attention_layer(x, tg, small_sd, p, compact_padding=False, heads=4, pad=0, pooling=(1, 1))
    assert (no_pad - full).abs().max() > 1e-3


def test_more_classes_than_pad_keeps_top_scoring(small_sd):
    """With T > pad, only the pad classes with the highest max cosine get real logits; the others
    get -100, i.e. a probability of about 0 everywhere."""
    names = ["wall", "sky", "tree", "road", "person", "car"]
    pad = 3
    image = _image(640, 640, seed=3)
    out = ref.catseg_reference_forward(small_sd, image, names, height=96, width=96, sliding=False,
                                       guidance_layers=SMALL_GUIDANCE, class_attention_pad=pad)
    x = ref._clip_normalize(image.float()).unsqueeze(0)
    x = F.interpolate(x, size=(384, 384), mode="bilinear", align_corners=False)
    feats, _ = ref.catseg_clip_visual(small_sd, x, guidance_layers=SMALL_GUIDANCE)
    text = ref.catseg_text_embeddings(small_sd, names)[:, 0]
    score = (F.normalize(feats[0, 1:], dim=-1) @ text.T).amax(0)
    kept = set(score.topk(pad).indices.tolist())
    for i in range(len(names)):
        if i in kept:
            assert out[i].min() > 1e-3
        else:
            assert out[i].max() < 1e-30
    # sliding: selection per window, every class kept somewhere or nowhere, all finite in [0, 1]
    s = ref.catseg_reference_forward(small_sd, image, names, height=64, width=64, sliding=True,
                                     guidance_layers=SMALL_GUIDANCE, class_attention_pad=pad)
    assert torch.isfinite(s).all() and s.min() >= 0 and s.max() <= 1


def test_vitl_geometry_smoke():
    """ViT-L/14@336 geometry: patch 14, 24x24 stored grid (no resize), 336 input."""
    sd = ref.random_catseg_state_dict(visual_width=64, visual_layers=3, patch_size=14, pos_grid=24,
                                      text_width=64, text_layers=1, embed_dim=64, seed=7)
    image = _image(640, 700, seed=4)
    for sliding in (False, True):
        out = ref.catseg_reference_forward(sd, image, NAMES[:2], height=64, width=70, sliding=sliding,
                                           clip_resolution=336, guidance_layers=(0, 1), compact_padding=True)
        assert out.shape == (2, 64, 70) and torch.isfinite(out).all()
        assert 0 < out.min() and out.max() < 1


def test_whole_image_crop_of_small_images(small_sd):
    """sem_seg_postprocess crops the 96x96 map to the received image size before resizing; with
    an image of at least 96 px on each side that is a no-op."""
    image = _image(80, 120, seed=6)
    kw = dict(sliding=False, guidance_layers=SMALL_GUIDANCE, compact_padding=True)
    out = ref.catseg_reference_forward(small_sd, image, NAMES[:2], height=80, width=120, **kw)
    x = ref._clip_normalize(image.float())
    x = F.pad(x, (0, 128 - 120, 0, 96 - 80)).unsqueeze(0)
    x = F.interpolate(x, size=(384, 384), mode="bilinear", align_corners=False)
    text = ref.catseg_text_embeddings(small_sd, NAMES[:2])
    prob = ref.catseg_model_logits(small_sd, x, text, guidance_layers=SMALL_GUIDANCE,
                                   compact_padding=True)[0].sigmoid()
    expected = F.interpolate(prob[None, :, :80, :], size=(80, 120), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_guided_swin_block_matches_torchvision(small_sd):
    """The guided Swin blocks against torchvision's ``shifted_window_attention`` (its own window
    partition, roll and -100 mask): [norm1(x), guidance] is its input, q/k read all of it and v
    only x, laid out as 4 heads of 64 channels whose last 32 are zero (q scaled by sqrt(2) to turn
    its 64^-0.5 into 32^-0.5)."""
    from torchvision.models.swin_transformer import shifted_window_attention

    g = torch.Generator().manual_seed(8)
    T, H, C, heads, d = 2, 24, 128, 4, 32
    x = torch.randn(T, H, H, C, generator=g)
    guid = torch.randn(H, H, C, generator=g)
    for blk, shift in (("block_1", 0), ("block_2", 6)):
        p = f"{ref.AGG_PREFIX}layers.1.swin_block.{blk}."
        sd = small_sd
        wq, wk, wv = sd[p + "attn.q.weight"], sd[p + "attn.k.weight"], sd[p + "attn.v.weight"]
        bq, bk, bv = sd[p + "attn.q.bias"], sd[p + "attn.k.bias"], sd[p + "attn.v.bias"]
        qkv_w = torch.zeros(3, heads, 2 * d, 2 * C)
        qkv_b = torch.zeros(3, heads, 2 * d)
        qkv_w[0, :, :d] = math.sqrt(2) * wq.reshape(heads, d, 2 * C)
        qkv_b[0, :, :d] = math.sqrt(2) * bq.reshape(heads, d)
        qkv_w[1, :, :d] = wk.reshape(heads, d, 2 * C)
        qkv_b[1, :, :d] = bk.reshape(heads, d)
        qkv_w[2, :, :d, :C] = wv.reshape(heads, d, C)
        qkv_b[2, :, :d] = bv.reshape(heads, d)
        proj_w = torch.zeros(2 * C, heads, 2 * d)
        proj_w[:C, :, :d] = sd[p + "attn.proj.weight"].reshape(C, heads, d)
        proj_b = torch.cat([sd[p + "attn.proj.bias"], torch.zeros(C)])
        h = F.layer_norm(x, (C,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-5)
        inp = torch.cat([h, guid.expand(T, H, H, C)], dim=-1)
        att = shifted_window_attention(
            inp, qkv_w.reshape(3 * 2 * C, 2 * C), proj_w.reshape(2 * C, 2 * C), torch.zeros(heads, 144, 144),
            [12, 12], heads, [shift, shift], qkv_bias=qkv_b.reshape(-1), proj_bias=proj_b, training=False)
        y = x + att[..., :C]
        m = F.layer_norm(y, (C,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-5)
        m = torch.nn.GELU()(F.linear(m, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
        expected = y + F.linear(m, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        ours = ref._swin_block(x, guid, sd, p, window=12, shift=shift, heads=heads)
        torch.testing.assert_close(ours, expected, atol=2e-5, rtol=0)


def test_class_attention_matches_quadratic_form(small_sd):
    """Linear attention written the quadratic way: out_l = sum_s (Q_l . K_s) v_s / sum_s Q_l . K_s,
    with the classes padded to ``pad`` and the layer returning x + (x + attention + MLP)."""
    g = torch.Generator().manual_seed(9)
    T, C, pad, heads, d = 3, 128, 8, 4, 32
    p = f"{ref.AGG_PREFIX}layers.0.attention."
    sd = small_sd
    x = torch.randn(T, C, 3, 2, generator=g)
    tg = torch.relu(torch.randn(T, C, generator=g))
    ours = ref._class_attention_layer(x, tg, sd, p, heads=heads, pad=pad, pooling=(1, 1), compact_padding=False)
    expected = torch.empty_like(x)
    for i in range(3):
        for j in range(2):
            tok = torch.cat([x[:, :, i, j], sd[p + "padding_tokens"][0].expand(pad - T, C)])  # [pad, C]
            gd = torch.cat([tg, sd[p + "padding_guidance"][0].expand(pad - T, C)])
            n1 = F.layer_norm(tok, (C,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-5)
            q = F.linear(torch.cat([n1, gd], 1), sd[p + "attention.q.weight"], sd[p + "attention.q.bias"])
            k = F.linear(torch.cat([n1, gd], 1), sd[p + "attention.k.weight"], sd[p + "attention.k.bias"])
            v = F.linear(n1, sd[p + "attention.v.weight"], sd[p + "attention.v.bias"])
            out = torch.empty(pad, C)
            for hd in range(heads):
                sl = slice(hd * d, (hd + 1) * d)
                a = (F.elu(q[:, sl]) + 1) @ (F.elu(k[:, sl]) + 1).T  # [pad, pad]
                out[:, sl] = (a @ v[:, sl]) / (a.sum(1, keepdim=True) + 1e-6)
            y = tok + out
            m = F.layer_norm(y, (C,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-5)
            y = y + F.linear(torch.relu(F.linear(m, sd[p + "MLP.0.weight"], sd[p + "MLP.0.bias"])),
                             sd[p + "MLP.2.weight"], sd[p + "MLP.2.bias"])
            expected[:, :, i, j] = x[:, :, i, j] + y[:T]
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=0)


def test_sliding_windows_match_unfold_and_fold(small_sd):
    """The sliding-window path's cutting and overlap averaging against torch's Unfold/Fold."""
    image = _image(640, 960, seed=10)
    names = NAMES[:3]
    kw = dict(guidance_layers=SMALL_GUIDANCE, compact_padding=True)
    ours = ref.catseg_reference_forward(small_sd, image, names, height=200, width=300, sliding=True, **kw)

    unfold = torch.nn.Unfold(kernel_size=384, stride=256)
    fold = torch.nn.Fold(output_size=(640, 640), kernel_size=384, stride=256)
    big = F.interpolate(image.float()[None], size=(640, 640), mode="bilinear", align_corners=False)
    cols = unfold(big)[0]  # [3 * 384 * 384, 4]
    crops = cols.T.reshape(-1, 3, 384, 384)
    glob = F.interpolate(image.float()[None], size=(384, 384), mode="bilinear", align_corners=False)
    batch = ref._clip_normalize(torch.cat([crops, glob]))
    text = ref.catseg_text_embeddings(small_sd, names)
    prob = ref.catseg_model_logits(small_sd, batch, text, **kw)
    prob = F.interpolate(prob, size=(384, 384), mode="bilinear", align_corners=False).sigmoid()
    T = len(names)
    summed = fold(prob[:-1].reshape(4, T * 384 * 384).T[None])  # [1, T, 640, 640]
    count = fold(unfold(torch.ones(1, 1, 640, 640)))
    merged = (summed / count + F.interpolate(prob[-1:], size=(640, 640), mode="bilinear", align_corners=False)) / 2
    expected = F.interpolate(merged, size=(200, 300), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
