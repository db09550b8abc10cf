"""Shapes and basic behaviour of every stage, with B > 1 images, T classes and P > 1 prompts."""
import math

import pytest
import torch
import torch.nn.functional as F

from lmseg.modeling.aggregator import Aggregator, _shift_mask, window_partition
from lmseg.modeling.clip_encoder import build_clip_encoder
from lmseg.modeling.cost import CostEmbedding, cost_volume
from lmseg.modeling.decoder import Decoder
from lmseg.modeling.fusion import FUSION_MODES, FeatureFusion, crop_and_resize
from lmseg.modeling.loss import sem_seg_bce_loss
from lmseg.modeling.sam_encoder import SamEncoder

from tests.helpers.model_helpers import VOCAB, eval_batch, scores, tiny_model, train_batch

B, T, P = 3, 5, 2


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return build_clip_encoder("LMSeg-Tiny", image_size=64, guidance_layers=(0, 1))


def test_clip_image_shapes(clip):
    dense, guidance = clip.encode_image(torch.randn(B, 3, 64, 64))
    assert dense.shape == (B, 32, 8, 8)
    assert [g.shape for g in guidance] == [(B, 32, 8, 8)] * 2
    # another input size resizes the position embedding: a 6 x 6 grid
    dense, _ = clip.encode_image(torch.randn(1, 3, 48, 48))
    assert dense.shape == (1, 32, 6, 6)


def test_clip_text_shapes_and_norm(clip):
    emb = clip.encode_text(["a photo of a cat", "a dog", "x"])
    assert emb.shape == (3, 32)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_clip_text_batches_agree(clip):
    texts = [f"a photo of thing number {i}" for i in range(7)]
    full = clip.encode_text(texts)
    clip.text_batch_size = 3
    try:
        torch.testing.assert_close(clip.encode_text(texts), full, rtol=1e-5, atol=1e-6)
    finally:
        clip.text_batch_size = 1024


def test_sam_shapes_at_other_input_sizes():
    sam = SamEncoder("tiny", input_size=128)
    assert sam(torch.randn(B, 3, 128, 128)).shape == (B, 32, 8, 8)
    sam.input_size = 96
    assert sam(torch.randn(1, 3, 96, 96)).shape == (1, 32, 6, 6)


@pytest.mark.parametrize("mode", [m for m in FUSION_MODES if m != "clip_only"])
def test_fusion_modes(mode):
    fusion = FeatureFusion(mode, clip_dim=32, sam_dim=16, attention_heads=4)
    clip_feats, sam_feats = torch.randn(B, 32, 8, 8), torch.randn(B, 16, 8, 8)
    out = fusion(clip_feats, sam_feats)
    assert out.shape == (B, 32, 8, 8)
    assert (fusion.weight is not None) == (mode == "weighted")


def test_weighted_fusion_weight_and_formula():
    fusion = FeatureFusion("weighted", clip_dim=8, sam_dim=4, weight_init=0.3, per_channel=True)
    torch.nn.init.normal_(fusion.sam_proj.weight)
    w = fusion.weight
    assert w.shape == (8,) and torch.allclose(w, torch.full((8,), 0.3))
    c, s = torch.randn(2, 8, 4, 4), torch.randn(2, 4, 4, 4)
    expected = 0.3 * c + 0.7 * fusion.sam_proj(s)
    torch.testing.assert_close(fusion(c, s), expected)
    with torch.no_grad():
        fusion.weight_logit.fill_(50.0)
    assert fusion.weight.max() <= 1.0


def test_weighted_fusion_starts_as_clip_only():
    # the SAM projection starts at zero, so the fused features are w * CLIP features
    fusion = FeatureFusion("weighted", clip_dim=8, sam_dim=4)
    c = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(fusion(c, torch.randn(2, 4, 4, 4)), 0.5 * c)


@pytest.mark.parametrize("mode", ["add", "attention"])
def test_additive_fusions_start_as_clip_only_exactly(mode):
    # zero SAM projection: nothing added (attention: zero keys and values, zero output bias)
    fusion = FeatureFusion(mode, clip_dim=8, sam_dim=4, attention_heads=2)
    c = torch.randn(2, 8, 4, 4)
    assert torch.equal(fusion(c, torch.randn(2, 4, 4, 4)), c)


def test_sam_only_fusion_starts_from_non_zero_features():
    fusion = FeatureFusion("sam_only", clip_dim=8, sam_dim=4)
    assert fusion(None, torch.randn(2, 4, 4, 4)).norm(dim=1).min() > 0


def test_crop_and_resize_reduces_by_area_and_upsamples_bilinearly():
    feats = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    boxes = torch.tensor([[1, 0, 0, 1, 1.0], [0, 0, 0, 0.5, 0.5]])
    out = crop_and_resize(feats, boxes, 8)
    # a whole map at a whole ratio: 2 x 2 cells averaged, as adaptive average pooling does
    torch.testing.assert_close(out[0], F.adaptive_avg_pool2d(feats[1], 8))
    # the top-left quarter of a 16 x 16 map at 8 x 8 is that quarter itself
    torch.testing.assert_close(out[1], feats[0, :, :8, :8])
    # upsampled, it is bilinear resizing, border cells held rather than blended with zeros
    up = crop_and_resize(feats, boxes[:1], 40)
    torch.testing.assert_close(up, F.interpolate(feats[1:], size=(40, 40), mode="bilinear", align_corners=False), rtol=0, atol=1e-5)


def test_crop_and_resize_weighs_every_cell_of_a_fractional_box_by_the_area_it_shares():
    # SAM's 64 x 64 map onto CLIP's 24 x 24 grid, for a whole image and for a sliding window that
    # covers 0.6 of it (38.4 cells): every cell under the box contributes, in proportion to its area
    noise = torch.randn(1, 1, 64, 64, dtype=torch.float64, requires_grad=True)
    for x0, y0, x1, y1 in [(0, 0, 1, 1), (0.4, 0, 1, 0.6)]:
        out = crop_and_resize(noise, torch.tensor([[0, x0, y0, x1, y1]]), 24)
        (grad,) = torch.autograd.grad(out.sum(), noise)
        touched = torch.zeros(64, 64, dtype=torch.bool)  # cells the box covers, even in part
        touched[math.floor(y0 * 64) : math.ceil(y1 * 64), math.floor(x0 * 64) : math.ceil(x1 * 64)] = True
        assert (grad[0, 0][touched] > 0).all() and (grad[0, 0][~touched] == 0).all()
        # each output cell's weights sum to one: the total weight is the number of output cells
        torch.testing.assert_close(grad.sum().item(), 24.0**2, rtol=1e-5, atol=0)
        # by area: a cell wholly under the box weighs 24^2 / (the box's area in cells)
        area = (x1 - x0) * 64 * (y1 - y0) * 64
        torch.testing.assert_close(grad[0, 0][touched].max().item(), 24.0**2 / area, rtol=1e-5, atol=0)
        # an exact reference on a 1-D ramp of cell indices: the mean of floor(t) + 0.5 over each part
        ramp = (torch.arange(64, dtype=torch.float64) + 0.5).expand(1, 1, 64, 64)
        row = crop_and_resize(ramp, torch.tensor([[0, x0, y0, x1, y1]]), 24)[0, 0, 0]
        for i in (0, 7, 23):
            lo, hi = 64 * (x0 + (x1 - x0) * i / 24), 64 * (x0 + (x1 - x0) * (i + 1) / 24)
            t = torch.linspace(lo, hi, 200_001, dtype=torch.float64)
            assert abs(row[i].item() - (t.floor() + 0.5).mean().item()) < 1e-3
    # white noise is averaged, not point-sampled: std 1/sqrt(cells per output cell), not ~0.6
    white = torch.randn(4, 16, 64, 64)
    assert crop_and_resize(white, torch.tensor([[i, 0, 0, 1, 1.0] for i in range(4)]), 24).std() < 0.4


def test_cost_volume_is_cosine():
    feats = torch.randn(B, 16, 4, 4)
    text = torch.nn.functional.normalize(torch.randn(T, P, 16), dim=-1)
    cost = cost_volume(feats, text)
    assert cost.shape == (B, P, T, 4, 4)
    f = torch.nn.functional.normalize(feats[1, :, 2, 3], dim=0)
    torch.testing.assert_close(cost[1, 1, 4, 2, 3], f @ text[4, 1])
    assert cost.abs().max() <= 1 + 1e-6


def test_cost_embedding_shape():
    embed = CostEmbedding(P, embed_dim=12, kernel_size=3)
    assert embed(torch.randn(B, P, T, 8, 8)).shape == (B, 12, T, 8, 8)


@pytest.mark.parametrize("training", [True, False])
def test_aggregator_shapes(training):
    agg = Aggregator(feature_dim=16, embed_dim=8, num_layers=2, num_heads=2, window=4,
                     appearance_guidance_dim=6, text_guidance_dim=5, pad_to=8, class_chunk=4)
    agg.train(training)
    x = agg(torch.randn(B, 8, T, 8, 8), torch.randn(B, 16, 8, 8), torch.randn(B, T, P, 16))
    assert x.shape == (B, 8, T, 8, 8)


@pytest.mark.parametrize("spatial,classwise", [(True, False), (False, True), (False, False)])
def test_aggregation_branch_switches_remove_exactly_their_branch(spatial, classwise):
    kwargs = dict(feature_dim=16, embed_dim=8, num_layers=2, num_heads=2, window=4, appearance_guidance_dim=6,
                  text_guidance_dim=5, pad_to=8, class_chunk=4)
    torch.manual_seed(0)
    full = Aggregator(**kwargs).eval()
    ablated = Aggregator(**kwargs, spatial=spatial, class_attention=classwise).eval()
    names = {n for n, _ in ablated.named_parameters()}
    assert any(".spatial." in n for n in names) == spatial and any("appearance_guidance" in n for n in names) == spatial
    assert any(".classwise." in n for n in names) == classwise and any("text_guidance" in n for n in names) == classwise
    # the ablated aggregator with the full one's weights is the full one's layers minus the branch
    missing, unexpected = ablated.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected
    x, f, t = torch.randn(B, 8, T, 8, 8), torch.randn(B, 16, 8, 8), torch.randn(B, T, P, 16)
    with torch.no_grad():
        expected = x
        appearance = full.appearance_guidance(f)
        text = full.text_guidance(torch.nn.functional.normalize(t.mean(dim=2), dim=-1))
        for layer in full.layers:
            if spatial:
                expected = layer.spatial(expected, appearance)
            if classwise:
                expected = layer.classwise(expected, text, full.test_pooling)
        got = ablated(x, f, t)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert not torch.allclose(got, full(x, f, t), atol=1e-3)


def test_class_chunking_does_not_change_results():
    torch.manual_seed(0)
    agg = Aggregator(feature_dim=16, embed_dim=8, num_heads=2, window=4, appearance_guidance_dim=6,
                     text_guidance_dim=5, pad_to=8, class_chunk=2).eval()
    dec = Decoder(embed_dim=8, guidance_width=16, dims=(8, 4), guidance_dims=(4, 2), guidance_upsample_dims=(8, 4),
                  norm_group_size=4, class_chunk=2).eval()
    x, f, t = torch.randn(B, 8, T, 8, 8), torch.randn(B, 16, 8, 8), torch.randn(B, T, P, 16)
    guid = [torch.randn(B, 16, 8, 8) for _ in range(2)]
    chunked = dec(agg(x, f, t), guid)
    for m in (agg.layers[0].spatial, agg.layers[1].spatial, dec):
        m.class_chunk = 1000
    torch.testing.assert_close(dec(agg(x, f, t), guid), chunked, rtol=1e-5, atol=1e-5)


def test_window_partition_order_and_shift_mask():
    x = torch.randn(2, 8, 8, 3)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 4, 16, 3)
    # map by map, windows row by row, cells row by row
    torch.testing.assert_close(windows[1], x[0, :4, 4:].reshape(16, 3))
    torch.testing.assert_close(windows[6], x[1, 4:, :4].reshape(16, 3))
    mask = _shift_mask(8, 8, 4, 2, torch.device("cpu"))
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window holds one region
    assert set(mask.unique().tolist()) == {-100.0, 0.0}


def test_decoder_shapes():
    dec = Decoder(embed_dim=8, guidance_width=16, dims=(8, 4), guidance_dims=(4, 2), guidance_upsample_dims=(8, 4),
                  norm_group_size=4)
    out = dec(torch.randn(B, 8, T, 6, 6), [torch.randn(B, 16, 6, 6) for _ in range(2)])
    assert out.shape == (B, T, 24, 24)


def test_loss_ignores_pixels_and_checks_labels():
    logits = torch.randn(2, T, 4, 4)
    targets = torch.randint(0, T, (2, 4, 4))
    targets[0, :2] = 255
    loss = sem_seg_bce_loss(logits, targets)
    valid = targets != 255
    onehot = torch.nn.functional.one_hot(targets.clamp(max=T - 1), T).permute(0, 3, 1, 2).float()
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    torch.testing.assert_close(loss, per.permute(0, 2, 3, 1)[valid].mean())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sem_seg_bce_loss(logits, torch.full((2, 4, 4), T))


def test_model_train_and_inference_shapes_with_several_prompts():
    model = tiny_model(
        "MODEL.PROMPTS.TEMPLATES", '["a photo of a {}.", "a {} in the scene", "{}"]', "MODEL.PROMPTS.TEXTS", "template", eval=False
    )
    assert model.num_prompts == 3
    losses = model(train_batch(num_images=B))
    assert set(losses) == {"loss_sem_seg"} and losses["loss_sem_seg"].ndim == 0
    losses["loss_sem_seg"].backward()
    model.eval()
    out = scores(model, eval_batch(num_images=2, hw=(72, 96), out_hw=(90, 120)))
    assert [o.shape for o in out] == [(len(VOCAB), 90, 120)] * 2
    assert all(((o >= 0) & (o <= 1)).all() for o in out)
    model.sliding_window = True
    out = scores(model, eval_batch(num_images=2, hw=(72, 96), out_hw=(50, 60)))
    assert [o.shape for o in out] == [(len(VOCAB), 50, 60)] * 2


def test_batched_inference_equals_single_images():
    model = tiny_model()
    batch = eval_batch(num_images=3)
    together = scores(model, batch)
    for item, expected in zip(batch, together):
        torch.testing.assert_close(scores(model, [item])[0], expected, rtol=1e-5, atol=1e-6)


def test_padding_is_cropped_unless_kept():
    model = tiny_model("MODEL.LMSEG.SIZE_DIVISIBILITY", "32")
    batch = eval_batch(hw=(70, 90), out_hw=(70, 90))
    cropped = scores(model, batch)[0]
    model.keep_padding = True
    kept = scores(model, batch)[0]
    assert cropped.shape == kept.shape == (len(VOCAB), 70, 90)
    assert not torch.allclose(cropped, kept)


def test_linear_attention_extra_rows_equal_literal_rows():
    from lmseg.modeling.aggregator import linear_attention

    q, k, v = torch.randn(3, 5, 2, 4), torch.randn(3, 5, 2, 4), torch.randn(3, 5, 2, 4)
    k_e, v_e = torch.randn(2, 4), torch.randn(2, 4)
    literal = linear_attention(
        torch.cat([q, q.new_zeros(3, 7, 2, 4)], 1),
        torch.cat([k, k_e.expand(3, 7, 2, 4)], 1),
        torch.cat([v, v_e.expand(3, 7, 2, 4)], 1),
    )[:, :5]
    torch.testing.assert_close(linear_attention(q, k, v, (k_e, v_e, 7)), literal)
