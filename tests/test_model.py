"""Model-level behaviour: fine-tuning masks, vocabulary handling, ignore pixels, errors, precision."""

import re

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from lmseg.data import load_vocabulary
from lmseg.modeling import FUSION_MODES, meta_arch
from lmseg.modeling.loss import sem_seg_bce_loss
from lmseg.modeling.meta_arch import EXCLUDED_LOGIT
from lmseg.modeling.summary import parameter_summary

from tests.helpers.model_helpers import TINY_CONFIG, VOCAB, eval_batch, scores, tiny_cfg, tiny_model, train_batch


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _expected_trainable(name: str, clip_mode: str, sam_mode: str) -> bool:
    if name.startswith("clip."):
        if name.endswith("logit_scale") or "visual.transformer.resblocks.2.attn.q_proj" in name or \
                "visual.transformer.resblocks.2.attn.k_proj" in name:
            return False  # unused by the forward pass (last visual block is value-only)
        return {
            "none": False,
            "full": True,
            "attention": ".attn." in name,
            "attention_qv": name.endswith(("attn.q_proj_weight", "attn.v_proj_weight")),
        }[clip_mode]
    if name.startswith("sam."):
        return {
            "none": False,
            "full": True,
            "qkv_proj": name.endswith(("attn.qkv.weight", "attn.proj.weight")),
        }[sam_mode]
    return True  # new parts train fully


@pytest.mark.parametrize(
    "clip_mode,sam_mode",
    [("attention_qv", "qkv_proj"), ("attention", "none"), ("none", "full"), ("full", "qkv_proj")],
)
def test_finetuning_trains_exactly_the_chosen_tensors(clip_mode, sam_mode):
    model = tiny_model("MODEL.CLIP.FINETUNE", clip_mode, "MODEL.SAM.FINETUNE", sam_mode, eval=False)
    names = dict(model.named_parameters())
    for name, p in names.items():
        assert p.requires_grad == _expected_trainable(name, clip_mode, sam_mode), name
    if clip_mode == "attention_qv":
        # query and value weights of both towers, nothing else of CLIP
        clip_trained = {n for n, p in names.items() if n.startswith("clip.") and p.requires_grad}
        assert any("visual" in n for n in clip_trained) and any("visual" not in n for n in clip_trained)
        assert all(n.endswith(("q_proj_weight", "v_proj_weight")) for n in clip_trained)
    if sam_mode == "qkv_proj":
        sam_trained = {n for n, p in names.items() if n.startswith("sam.") and p.requires_grad}
        assert len(sam_trained) == 2 * 2  # qkv.weight and proj.weight of each of the 2 blocks
    before = _snapshot(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for step in range(3):
        opt.zero_grad()
        model(train_batch(seed=step))["loss_sem_seg"].backward()
        opt.step()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[name]), f"{name} is trainable but did not change"
        else:
            assert torch.equal(p, before[name]), f"{name} is frozen but changed"


def test_vocabulary_permutation_permutes_scores():
    model = tiny_model()
    batch = eval_batch()
    base = scores(model, batch)[0]
    perm = [3, 0, 4, 2, 1]
    model.set_vocabulary([VOCAB[i] for i in perm])
    torch.testing.assert_close(scores(model, batch)[0], base[perm], rtol=1e-4, atol=1e-5)
    model.sliding_window = True
    sliding = scores(model, batch)[0]
    model.set_vocabulary(VOCAB)
    torch.testing.assert_close(sliding, scores(model, batch)[0][perm], rtol=1e-4, atol=1e-5)


def _spy_on_loss(monkeypatch):
    """Record the logits (N, T, H, W) the model's training loss is computed from (past the class cap,
    (N, cap, H, W) with the keyword argument ``classes``, also recorded, in ``spy.classes``)."""
    seen = []

    def spy(logits, labels, ignore_value, **kwargs):
        seen.append(logits.detach())
        spy.classes = kwargs.get("classes")
        return sem_seg_bce_loss(logits, labels, ignore_value, **kwargs)

    monkeypatch.setattr(meta_arch, "sem_seg_bce_loss", spy)
    return seen


def test_ignored_pixels_take_no_part_in_the_loss(monkeypatch):
    seen = _spy_on_loss(monkeypatch)
    model = tiny_model(eval=False)
    batch = train_batch()
    for item in batch:
        item["sem_seg"][:20] = 255
    loss = model(batch)["loss_sem_seg"]
    # the mean binary cross-entropy over every class at the labelled pixels (rows 20 to 63) only
    logits = seen[-1][:, :, 20:].permute(0, 2, 3, 1).reshape(-1, len(VOCAB))
    onehot = F.one_hot(torch.stack([x["sem_seg"][20:] for x in batch]).reshape(-1), len(VOCAB)).float()
    expected = -(onehot * F.logsigmoid(logits) + (1 - onehot) * F.logsigmoid(-logits)).mean()
    torch.testing.assert_close(loss, expected)
    # a labelled pixel's label counts
    batch[0]["sem_seg"][25:30] = (batch[0]["sem_seg"][25:30] + 1) % len(VOCAB)
    assert not torch.allclose(model(batch)["loss_sem_seg"], loss)


def test_vocabulary_of_one_and_two_thousand_classes_and_switching_back():
    model = tiny_model()
    batch = eval_batch()
    first = scores(model, batch)[0]
    model.set_vocabulary(["cat"])
    assert scores(model, batch)[0].shape == (1, 90, 120)
    big = [f"object number {i}" for i in range(2000)]
    model.set_vocabulary(big)
    out = scores(model, batch)[0]
    assert out.shape == (2000, 90, 120)
    # beyond the class cap (32 in the tiny config) the excluded classes score ~0
    assert (out.amax(dim=(1, 2)) > 1e-6).sum() <= model.class_cap
    model.set_vocabulary(VOCAB)
    assert torch.equal(scores(model, batch)[0], first)


def test_using_vocabulary_restores_the_previous_one():
    model = tiny_model()
    with model.using_vocabulary(["a", "b"]):
        assert model.vocabulary == ("a", "b")
    assert model.vocabulary == tuple(VOCAB)
    with pytest.raises(RuntimeError):
        with model.using_vocabulary(["a"]):
            raise RuntimeError("evaluation failed")
    assert model.vocabulary == tuple(VOCAB)


def test_text_cache_follows_vocabulary_and_weights():
    model = tiny_model()
    with torch.no_grad():
        a = model.text_embeddings()
        assert model.text_embeddings() is a  # cached
        model.set_vocabulary(["x", "y"])
        b = model.text_embeddings()
        assert b.shape[0] == 2
        model.set_vocabulary(VOCAB)
        torch.testing.assert_close(model.text_embeddings(), a)
        # new text weights (an optimizer step, a checkpoint load) invalidate the cache
        model.clip.model.ln_final.bias.add_(0.5)
        assert not torch.allclose(model.text_embeddings(), a)
        state = tiny_model(seed=1).state_dict()
        model.load_state_dict(state)
        c = model.text_embeddings()
        torch.testing.assert_close(c, tiny_model(seed=1).text_embeddings())


def test_training_recomputes_text_with_gradients():
    model = tiny_model(eval=False)
    model(train_batch())["loss_sem_seg"].backward()
    q = model.clip.model.transformer.resblocks[0].attn.q_proj_weight
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_training_with_more_classes_than_the_cap_keeps_labelled_classes(monkeypatch):
    seen = _spy_on_loss(monkeypatch)
    vocab = [f"class {i}" for i in range(40)]
    model = tiny_model("MODEL.LMSEG.CLASS_CAP", "4", vocabulary=vocab, eval=False)
    batch = train_batch(num_classes=2)
    labelled = [(3, 17), (25, 38)]  # each image's own classes, two of the 40
    for item, classes in zip(batch, labelled):
        item["sem_seg"] = torch.tensor(classes)[item["sem_seg"]]
    grad_enabled = []
    cost_volume = meta_arch.cost_volume
    monkeypatch.setattr(meta_arch, "cost_volume", lambda f, t: (grad_enabled.append((t.shape[-3], torch.is_grad_enabled())), cost_volume(f, t))[1])
    model(batch)["loss_sem_seg"].backward()
    # only the kept classes' maps reach the loss: (images, cap, H, W), with their indices
    kept = meta_arch.sem_seg_bce_loss.classes
    assert seen[-1].shape[:2] == (2, 4) and kept.shape == (2, 4)
    for image_kept, classes in zip(kept.tolist(), labelled):
        # the cap keeps 4 classes of each image, its labelled ones among them, whatever their similarity
        assert len(set(image_kept)) == 4 and set(classes) <= set(image_kept)
    assert kept[0].tolist() != kept[1].tolist()
    # the selection over all 40 classes runs without autograd, the head's 4 classes with it
    assert grad_enabled == [(40, False), (4, True)]


def test_loss_past_the_cap_equals_the_loss_of_the_dense_logits():
    torch.manual_seed(0)
    t, k = 30, 5
    logits = torch.randn(2, k, 6, 7, requires_grad=True)
    classes = torch.stack([torch.randperm(t)[:k].sort().values for _ in range(2)])
    targets = classes[torch.arange(2)[:, None, None], torch.randint(0, k, (2, 6, 7))]
    targets[0, 0, :3] = 255  # ignored
    targets[1, 2, 2] = next(c for c in range(t) if c not in classes[1])  # a labelled class the cap dropped
    dense = torch.full((2, t, 6, 7), EXCLUDED_LOGIT).scatter(1, classes[:, :, None, None].expand(-1, -1, 6, 7), logits)
    expected = sem_seg_bce_loss(dense, targets, 255)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    sparse = sem_seg_bce_loss(logits, targets, 255, classes=classes, num_classes=t, other_logit=EXCLUDED_LOGIT)
    (grad,) = torch.autograd.grad(sparse, logits)
    torch.testing.assert_close(sparse, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match=r"label values \[30\] are outside the vocabulary of 30 classes"):
        sem_seg_bce_loss(logits, targets.masked_fill(targets == targets[1, 0, 0], 30), 255, classes=classes, num_classes=t)


@pytest.mark.parametrize("sliding", [False, True])
def test_inference_past_the_cap_keeps_only_the_kept_classes_maps(monkeypatch, sliding):
    """Past MODEL.LMSEG.CLASS_CAP the scores equal those of the dense (views, T, h, w) logits that
    hold EXCLUDED_LOGIT for every class a view did not keep, which are never built: the maps that
    are resized and folded hold at most views x cap classes."""
    vocab = [f"class {i}" for i in range(40)]
    model = tiny_model("MODEL.LMSEG.CLASS_CAP", "4", "TEST.SLIDING_WINDOW", str(sliding), vocabulary=vocab)
    batch = eval_batch(num_images=2)
    mapped = []
    map_classes = model._map_classes
    monkeypatch.setattr(model, "_map_classes", lambda x, *a, **kw: (mapped.append(x.shape), map_classes(x, *a, **kw))[1])
    sparse = scores(model, batch)
    views = model.windows.num_views if sliding else 1
    assert len(mapped) == 2 and all(shape[1 if sliding else 0] <= views * 4 for shape in mapped)
    predict = model._predict

    def dense_predict(*args):
        logits, kept = predict(*args)
        full = logits.new_full((logits.shape[0], len(vocab), *logits.shape[-2:]), EXCLUDED_LOGIT)
        return full.scatter(1, kept[:, :, None, None].expand_as(logits), logits), None

    monkeypatch.setattr(model, "_predict", dense_predict)
    dense = scores(model, batch)
    for a, b in zip(sparse, dense):
        assert a.shape == (40, 90, 120)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
        assert (a.amax(dim=(1, 2)) < 1e-30).sum() >= 40 - views * 4  # the classes no view kept score 0


@pytest.mark.parametrize("bad,message", [
    ([], "empty"),
    (["cat", "cat"], "repeats 'cat'"),
    (["cat", ""], "non-empty"),
    ("cat,dog", "not one string"),
])
def test_bad_vocabularies(bad, message):
    model = tiny_model()
    with pytest.raises((ValueError, TypeError), match=message):
        model.set_vocabulary(bad)
    assert model.vocabulary == tuple(VOCAB)


def test_entries_sharing_a_name_are_refused_but_a_benchmark_list_is_taken_as_published():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"'bag\|handbag' \(entry 2\) and 'bag' \(entry 1\) both name 'bag'"):
        model.set_vocabulary(["bag", "bag, handbag", "bag, traveling bag"])
    assert model.vocabulary == tuple(VOCAB)
    # ADE-847's list has three entries whose first name is "bag": each is a class of its own
    ade847 = load_vocabulary("ade847")
    model.set_vocabulary(ade847)
    assert scores(model, eval_batch())[0].shape[0] == 847


@pytest.mark.parametrize("opts,message", [
    (("MODEL.CLIP.NAME", "ViT-Q-99"), r"MODEL.CLIP.NAME='ViT-Q-99' is not an open_clip architecture; accepted ViT names: .*ViT-B-16"),
    (("MODEL.CLIP.PRETRAINED", "/no/such/clip.bin"), r"MODEL.CLIP.PRETRAINED='/no/such/clip.bin' is neither a file nor a pretrained tag"),
    (("MODEL.SAM.CHECKPOINT", "/no/such/sam.pth"), r"MODEL.SAM.CHECKPOINT='/no/such/sam.pth': no such file"),
    (("MODEL.SAM.TYPE", "vit_q"), r"MODEL.SAM.TYPE='vit_q' is not one of \('vit_b', 'vit_l', 'vit_h', 'tiny'\)"),
    (("MODEL.FUSION.MODE", "multiply"), r"MODEL.FUSION.MODE='multiply' is not one of \('weighted', 'clip_only', 'sam_only', 'add', 'concat', 'attention'\)"),
    (("MODEL.FUSION.MODE", "clip_only"), r"'clip_only' fusion goes with MODEL.SAM.ENABLED False"),
    (("MODEL.SAM.ENABLED", "False"), r"MODEL.FUSION.MODE='weighted' and MODEL.SAM.ENABLED=False disagree"),
    (("MODEL.CLIP.FINETUNE", "qv"), r"MODEL.CLIP.FINETUNE='qv' is not one of \('none', 'attention_qv', 'attention', 'full'\)"),
    (("MODEL.SAM.FINETUNE", "qkv"), r"MODEL.SAM.FINETUNE='qkv' is not one of \('none', 'qkv_proj', 'full'\)"),
    (("MODEL.CLIP.GUIDANCE_LAYERS", "[0, 2]"), r"MODEL.CLIP.GUIDANCE_LAYERS=\[0, 2\]: \[2\] out of range; accepted: 0 to 1"),
    (("MODEL.AGGREGATOR.WINDOW_SIZE", "6"), r"not a multiple of MODEL.AGGREGATOR.WINDOW_SIZE=6"),
    (("MODEL.CLIP.IMAGE_SIZE", "60"), r"MODEL.CLIP.IMAGE_SIZE=60 is not a multiple of the patch size 8"),
])
def test_bad_configuration_names_the_key(opts, message):
    with pytest.raises((ValueError, FileNotFoundError, RuntimeError), match=message):
        build_model(tiny_cfg(*opts))


def test_unknown_dataset_for_vocabulary_is_a_clear_error():
    cfg = tiny_cfg()
    cfg.DATASETS.TRAIN = ("no_such_dataset_registered",)
    with pytest.raises((KeyError, ValueError), match=r"'no_such_dataset_registered' is not .*registered"):
        build_model(cfg)


def test_forward_without_vocabulary_says_what_to_do():
    model = build_model(tiny_cfg()).eval()
    with pytest.raises(RuntimeError, match="set_vocabulary"):
        scores(model, eval_batch())


def test_parameter_summary_counts_everything():
    model = tiny_model()
    rows = parameter_summary(model)
    total = rows[-1]
    assert total[0] == "total"
    assert total[1] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert total[2] == sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert {r[0] for r in rows} >= {"CLIP image tower", "CLIP text tower", "SAM image encoder", "fusion", "aggregator", "decoder"}


def test_fusion_weight_is_readable():
    model = tiny_model()
    assert torch.allclose(model.fusion_weight, torch.tensor([0.5]))
    assert tiny_model("MODEL.FUSION.MODE", "add").fusion_weight is None


@pytest.mark.parametrize("opts", [
    ("MODEL.SAM.ENABLED", "False", "MODEL.FUSION.MODE", "clip_only"),
    ("MODEL.FUSION.MODE", "concat"),
    ("MODEL.FUSION.MODE", "attention", "MODEL.FUSION.ATTENTION_HEADS", "4"),
    ("MODEL.FUSION.MODE", "sam_only"),
])
def test_ablation_settings_train_and_infer(opts):
    model = tiny_model(*opts, eval=False)
    model(train_batch())["loss_sem_seg"].backward()
    model.eval()
    assert scores(model, eval_batch())[0].shape == (len(VOCAB), 90, 120)


@pytest.mark.parametrize("mode", FUSION_MODES)
@pytest.mark.parametrize("cap", ["32", "3"])  # the vocabulary of 5 below and above the class cap
def test_every_trainable_weight_gets_a_finite_sensible_gradient_at_the_start(mode, cap):
    # What multi-process training needs (a gradient for every trainable weight, in every step) and
    # what a first step needs (no weight's gradient so large that full-model clipping, at
    # SOLVER.CLIP_GRADIENTS.CLIP_VALUE 0.01, leaves every other weight without an update).
    opts = ["MODEL.FUSION.MODE", mode, "MODEL.SAM.ENABLED", str(mode != "clip_only"), "MODEL.LMSEG.CLASS_CAP", cap]
    model = tiny_model(*opts, eval=False)
    loss = model(train_batch())["loss_sem_seg"]
    loss.backward()
    assert torch.isfinite(loss)
    norms = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} is trainable but takes no part in the loss"
            norms[name] = p.grad.norm().item()
    total = sum(v * v for v in norms.values()) ** 0.5
    assert 0.1 < total < 20.0, total
    # the new parts all learn from the first step
    for part in ("fusion.sam_proj.weight", "aggregator.appearance_guidance.0.weight", "decoder.head.weight"):
        if part in norms:
            assert norms[part] > 1e-4, (part, norms[part])
    assert mode == "clip_only" or "fusion.sam_proj.weight" in norms


def test_sam_only_trains_only_the_clip_weights_that_reach_the_output():
    model = tiny_model("MODEL.FUSION.MODE", "sam_only", "MODEL.CLIP.FINETUNE", "full", eval=False)
    trained = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("clip.model.visual.")}
    # the tiny CLIP has 3 blocks, guidance after blocks 0 and 1: block 2, ln_post and proj only make
    # the dense features, which sam_only does not use
    assert trained and not any(n.startswith(("clip.model.visual.transformer.resblocks.2.", "clip.model.visual.ln_post",
                                             "clip.model.visual.proj")) for n in trained)
    assert "clip.model.visual.transformer.resblocks.1.attn.v_proj_weight" in trained


def test_bfloat16_autocast_inference_on_cpu():
    model = tiny_model()
    batch = eval_batch()
    fp32 = scores(model, batch)[0]
    for sliding in (False, True):
        model.sliding_window = sliding
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = scores(model, batch)[0]
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        if not sliding:
            assert (out - fp32).abs().max() < 0.1


@pytest.mark.slow
def test_model_summary_tool_prints_the_parts():
    import subprocess
    import sys

    from tests.helpers.model_helpers import REPO, TINY_CONFIG

    proc = subprocess.run([sys.executable, "tools/model_summary.py", "--config-file", TINY_CONFIG], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert {"CLIP image tower", "CLIP text tower", "SAM image encoder", "fusion", "aggregator", "decoder", "total"} <= set(rows)
    expected = sum(p.numel() for p in tiny_model().parameters() if p.requires_grad)
    assert f"{expected:,}" in rows["total"]


def test_test_time_scales_change_the_sliding_grid_and_flips_are_undone():
    from lmseg.tta import SemSegTTA

    model = tiny_model("TEST.SLIDING_WINDOW", "True")
    batch = eval_batch(hw=(72, 96), out_hw=(72, 96))

    def tta(sizes, flip=False):
        cfg = tiny_cfg("TEST.SLIDING_WINDOW", "True", "TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", sizes, "TEST.AUG.FLIP", str(flip))
        return SemSegTTA(cfg, model)

    # INPUT.MIN_SIZE_TEST (96 in tiny.yaml) alone, no flip: exactly the model's output
    torch.testing.assert_close(scores(tta("(96,)"), batch)[0], scores(model, batch)[0], rtol=0, atol=0)
    # another scale is another grid: 64 holds one window, 144 nine (plus the whole view each)
    assert tta("(64, 144)").grids == [64, 144]
    assert model._windows(64).num_views == 2 and model._windows(144).num_views == 10
    small, large = scores(tta("(64,)"), batch)[0], scores(tta("(144,)"), batch)[0]
    assert (small - large).abs().max() > 1e-3
    both = scores(tta("(64, 144)"), batch)[0]
    torch.testing.assert_close(both, (small + large) / 2, rtol=1e-5, atol=1e-6)
    # flips are undone before averaging: a flipped input gives the flipped average
    flipped = [{**batch[0], "image": batch[0]["image"].flip(-1)}]
    with_flip = scores(tta("(64, 144)", flip=True), batch)[0]
    assert with_flip.shape == (len(VOCAB), 72, 96) and (with_flip - both).abs().max() > 1e-4
    torch.testing.assert_close(scores(tta("(64, 144)", flip=True), flipped)[0], with_flip.flip(-1), rtol=1e-4, atol=1e-5)


def test_test_time_scales_are_refused_where_they_change_nothing():
    from lmseg.modeling.meta_arch import LMSeg
    from lmseg.tta import SemSegTTA

    cfg = tiny_cfg("TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(64, 96)")  # whole-image inference
    with pytest.raises(ValueError, match=r"TEST.AUG.MIN_SIZES=\(64, 96\) with TEST.SLIDING_WINDOW False.*TEST.AUG.MIN_SIZES \(96,\) for the flip alone"):
        LMSeg.from_config(cfg)
    with pytest.raises(ValueError, match="TEST.SLIDING_WINDOW True"):
        SemSegTTA(cfg, tiny_model())
    # the flip alone works on the whole-image path
    model = tiny_model()
    flip_only = SemSegTTA(tiny_cfg("TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(96,)"), model)
    batch = eval_batch()
    assert (scores(flip_only, batch)[0] - scores(model, batch)[0]).abs().max() > 1e-4
    # but not where a kept padded strip would move to the other side in a flipped pass
    padded = ("TEST.AUG.MIN_SIZES", "(96,)", "TEST.KEEP_PADDING", "True", "INPUT.SIZE_DIVISIBILITY", "32")
    with pytest.raises(ValueError, match="flipped scores cannot be undone"):
        LMSeg.from_config(tiny_cfg("TEST.AUG.ENABLED", "True", *padded))
    LMSeg.from_config(tiny_cfg("TEST.AUG.ENABLED", "True", "TEST.AUG.FLIP", "False", *padded))


def test_segmenter_applies_test_time_augmentation_as_evaluation_does():
    import numpy as np

    from lmseg import Segmenter
    from lmseg.tta import SemSegTTA

    opts = ["TEST.SLIDING_WINDOW", "True", "TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(64, 144)", "TEST.AUG.FLIP", "True"]
    seg = Segmenter.from_config(TINY_CONFIG, opts=opts)
    seg.set_vocabulary(VOCAB)
    image = np.random.default_rng(0).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    with_tta = seg(image, probabilities=True).probabilities
    expected = SemSegTTA(seg.cfg, seg.model)
    seg._runner = seg.model
    without = seg(image, probabilities=True).probabilities
    assert (with_tta - without).abs().max() > 1e-3
    seg._runner = expected
    torch.testing.assert_close(seg(image, probabilities=True).probabilities, with_tta, rtol=0, atol=0)


@pytest.mark.parametrize("opts, message", [
    (("INPUT.FORMAT", "BGR"), "INPUT.FORMAT='BGR'"),
    (("MODEL.PIXEL_MEAN", "[123.675, 116.28, 103.53]"), "MODEL.PIXEL_MEAN="),
    (("MODEL.PIXEL_STD", "[58.395, 57.12, 57.375]"), "MODEL.PIXEL_STD="),
])
def test_input_the_model_would_misread_is_refused_at_build_time(opts, message):
    from lmseg.modeling.meta_arch import LMSeg

    with pytest.raises(ValueError, match=re.escape(message)):
        LMSeg.from_config(tiny_cfg(*opts))


@pytest.mark.parametrize("sliding", [False, True])
def test_kept_classes_only_outputs_expand_to_the_dense_scores(sliding):
    from lmseg.modeling.meta_arch import dense_scores

    vocab = [f"class {i}" for i in range(40)]
    model = tiny_model("MODEL.LMSEG.CLASS_CAP", "4", "TEST.SLIDING_WINDOW", str(sliding), vocabulary=vocab)
    batch = eval_batch(num_images=2)
    dense = scores(model, batch)
    with torch.no_grad():
        compact = model([{**x, "kept_classes_only": True} for x in batch])
    views = model.windows.num_views if sliding else 1
    for out, expected in zip(compact, dense):
        assert "sem_seg" not in out and out["kept_scores"].shape[0] == len(out["kept_classes"]) <= views * 4
        torch.testing.assert_close(dense_scores(out, 40), expected, rtol=0, atol=0)
    # within the cap there is nothing to leave out: the output is dense
    small = tiny_model(vocabulary=vocab[:4])
    with torch.no_grad():
        assert set(small([{**batch[0], "kept_classes_only": True}])[0]) == {"sem_seg"}


def test_segmenter_past_the_class_cap_gives_the_dense_results():
    import numpy as np

    from lmseg import Segmenter

    seg = Segmenter.from_config(TINY_CONFIG, opts=["MODEL.LMSEG.CLASS_CAP", "4", "TEST.SLIDING_WINDOW", "True"])
    seg.set_vocabulary([f"class {i}" for i in range(40)])
    image = np.random.default_rng(0).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    compact = seg(image, probabilities=True)
    model = seg.model
    seg._runner = lambda inputs: model([{k: v for k, v in x.items() if k != "kept_classes_only"} for x in inputs])
    dense = seg(image, probabilities=True)
    assert compact.label_map.dtype == dense.label_map.dtype
    np.testing.assert_array_equal(compact.label_map, dense.label_map)
    np.testing.assert_allclose(compact.scores, dense.scores, rtol=1e-6)
    np.testing.assert_array_equal(compact.pixel_share, dense.pixel_share)
    torch.testing.assert_close(compact.probabilities, dense.probabilities, rtol=0, atol=0)
    assert len(compact.present) >= 1 and all(i < 40 for i in compact.present)


def test_segmenter_keeps_the_score_budget_past_the_class_cap(monkeypatch):
    import numpy as np

    from lmseg import Segmenter, api

    seg = Segmenter.from_config(TINY_CONFIG, opts=["MODEL.LMSEG.CLASS_CAP", "4", "TEST.SLIDING_WINDOW", "True"])
    seg.set_vocabulary([f"class {i}" for i in range(400)])
    monkeypatch.setattr(api, "SCORE_ELEMENTS", 40 * 96 * 128)
    image = np.random.default_rng(0).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    # the kept classes' maps alone (at most 5 views x 4) come at the full processing size (96 x 128) ...
    sizes = []
    forward = seg.model.forward
    monkeypatch.setattr(seg.model, "forward", lambda inputs: (sizes.append((inputs[0]["height"], inputs[0]["width"])), forward(inputs))[1])
    seg(image)
    assert sizes[-1] == (96, 128)
    # ... while all 400 classes' probabilities, when kept, fit the budget
    probabilities = seg(image, probabilities=True).probabilities
    assert probabilities.shape[0] == 400 and probabilities[0].numel() * 400 <= 40 * 96 * 128
