"""The faster execution paths compute what the plain ones compute: norms in the autocast dtype,
the batched window fold, bfloat16 against float32 end to end, activation checkpointing (identical
gradients, fewer stored activations), TEST.COMPILE and its fallback, and text embeddings computed
once per evaluated benchmark."""
import logging

import numpy as np
import pytest
import torch
import torch._dynamo.exc
import torch.nn.functional as F
from detectron2.engine import default_argument_parser
from segment_anything.modeling.common import LayerNorm2d as SamLayerNorm2d
from torch import nn

from lmseg.engine import Trainer, setup
from lmseg.modeling import norms
from lmseg.modeling.sliding import SlidingWindows

from tests.helpers.model_helpers import TINY_CONFIG, VOCAB, eval_batch, scores, tiny_model, train_batch
from tests.helpers.synthetic_datasets import write_folder_dataset

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _norm_modules(model):
    return [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm, SamLayerNorm2d))]


def test_every_norm_is_replaced_and_shares_its_parameters():
    plain = tiny_model(seed=3)
    model = tiny_model(seed=3)
    found = _norm_modules(model)
    assert found and all(type(m) in (norms.LayerNorm, norms.GroupNorm, norms.LayerNorm2d) for m in found)
    assert model.state_dict().keys() == plain.state_dict().keys()
    # a norm weight is trained like any other: it is the module's parameter
    names = {id(p) for p in model.parameters()}
    assert all(id(m.weight) in names for m in found if m.weight is not None)


@pytest.mark.parametrize("device", DEVICES)
def test_norms_stay_in_the_autocast_dtype(device):
    model = tiny_model("MODEL.DEVICE", device, "TEST.SLIDING_WINDOW", "True")
    dtypes = []
    hooks = [m.register_forward_hook(lambda m, i, o: dtypes.append((type(m).__name__, i[0].dtype, o.dtype)))
             for m in _norm_modules(model)]
    with torch.autocast(device, dtype=torch.bfloat16):
        scores(model, eval_batch())
    for h in hooks:
        h.remove()
    assert {name for name, _, _ in dtypes} == {"LayerNorm", "GroupNorm", "LayerNorm2d"}
    # a bfloat16 input is never normalised into a float32 copy
    assert all(out == torch.bfloat16 for _, inp, out in dtypes if inp == torch.bfloat16), dtypes
    assert sum(inp == torch.bfloat16 for _, inp, _ in dtypes) > len(dtypes) // 2


def test_norm_layers_equal_torch_in_float32_and_round_like_bfloat16():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6) * 3 + 1
    for plain in (nn.LayerNorm(6), nn.GroupNorm(2, 8), SamLayerNorm2d(8)):
        with torch.no_grad():
            for p in plain.parameters():
                p.normal_()
        holder = nn.Sequential(plain)
        norms.use_autocast_norms(holder)
        fast = holder[0]
        assert type(fast) is not type(plain)
        assert torch.equal(fast(x), plain(x))  # float32: the very same computation
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fast(x.bfloat16())
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low.float(), plain(x.bfloat16().float()), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("past_the_cap", [False, True])
@pytest.mark.parametrize("sam", [True, False])
@pytest.mark.parametrize("sliding", [False, True])
def test_bfloat16_paths_match_float32(sam, sliding, past_the_cap):
    opts = () if sam else ("MODEL.SAM.ENABLED", "False", "MODEL.FUSION.MODE", "clip_only")
    if past_the_cap:  # 5 classes, 3 kept
        opts += ("MODEL.LMSEG.CLASS_CAP", "3")
    model = tiny_model(*opts)
    model.sliding_window = sliding
    if sam:  # the SAM projection starts at zero; give SAM's features a say
        with torch.no_grad():
            for p in model.fusion.parameters():
                p.normal_()
    batch = eval_batch(num_images=2)
    kept = []
    if past_the_cap:
        # bfloat16 may keep other classes where two peak similarities are within its rounding: the
        # bfloat16 pass reuses the float32 pass's selection, so that the scores compare
        select = model._select_classes
        model._select_classes = lambda *args: kept[0] if kept else (kept.append(select(*args)), kept[0])[1]
    fp32 = scores(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = scores(model, batch)
    assert len(kept) == past_the_cap
    for a, b in zip(bf16, fp32):
        assert a.dtype == torch.float32 and a.shape == b.shape
        assert (a - b).abs().max() < 0.03  # bfloat16 keeps 8 bits of mantissa
        assert (a - b).abs().mean() < 0.003


def _loop_fold(windows: SlidingWindows, logits: torch.Tensor) -> torch.Tensor:
    """The window fold written plainly: one window at a time."""
    g, s = windows.grid, windows.window
    probs = F.interpolate(logits, size=(s, s), mode="bilinear", align_corners=False).sigmoid()
    acc = torch.zeros(probs.shape[1], g, g)
    count = torch.zeros(1, g, g)
    for (y, x), p in zip(windows.offsets, probs[:-1]):
        acc[:, y : y + s, x : x + s] += p
        count[:, y : y + s, x : x + s] += 1
    whole = F.interpolate(probs[-1:], size=(g, g), mode="bilinear", align_corners=False)[0]
    return (1 - windows.global_weight) * acc / count + windows.global_weight * whole


@pytest.mark.parametrize("grid,window,overlap", [(96, 64, 0.333), (100, 40, 0.5), (64, 64, 0.0)])
def test_batched_fold_equals_window_by_window(grid, window, overlap):
    windows = SlidingWindows(grid, window, overlap, 0.3)
    logits = torch.randn(windows.num_views, 7, 12, 12) * 4
    torch.testing.assert_close(windows.fold(logits), _loop_fold(windows, logits), atol=1e-6, rtol=1e-6)
    if grid == 100:
        assert len({y for y, _ in windows.offsets}) == 4  # uneven last stride: not a plain F.fold


def _saved_bytes(model, batch):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(batch)["loss_sem_seg"]
    return loss, total[0]


def test_activation_checkpointing_gives_identical_gradients_and_stores_less():
    batch = train_batch()
    plain = tiny_model(eval=False)
    checkpointed = tiny_model("MODEL.LMSEG.ACTIVATION_CHECKPOINTING", '["clip", "sam", "aggregator", "decoder"]', eval=False)
    loss_a, bytes_a = _saved_bytes(plain, batch)
    loss_b, bytes_b = _saved_bytes(checkpointed, batch)
    loss_a.backward()
    loss_b.backward()
    assert torch.equal(loss_a, loss_b)
    grads = [(n, p.grad, q.grad) for (n, p), q in zip(plain.named_parameters(), checkpointed.parameters())]
    assert sum(a is not None for _, a, _ in grads) > 20
    for name, a, b in grads:
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(b, a, atol=0, rtol=0, msg=name)
    assert bytes_b < 0.3 * bytes_a  # 14 % on the tiny model


def test_activation_checkpointing_refuses_unknown_parts():
    with pytest.raises(ValueError, match=r"\['encoder'\] not among \['clip', 'sam', 'aggregator', 'decoder'\]"):
        tiny_model("MODEL.LMSEG.ACTIVATION_CHECKPOINTING", '["encoder"]')


def test_test_compile_runs_the_compiled_head_at_inference_only(monkeypatch):
    compiled = []

    def fake_compile(fn):
        def run(*args):
            compiled.append(len(args))
            return fn(*args)
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    plain = tiny_model()
    model = tiny_model("TEST.COMPILE", "True")
    batch = eval_batch()
    torch.testing.assert_close(scores(model, batch)[0], scores(plain, batch)[0], atol=0, rtol=0)
    assert compiled  # the head went through torch.compile's function
    count = len(compiled)
    model.train()
    model(train_batch())
    assert len(compiled) == count  # training runs eagerly


def test_test_compile_falls_back_with_a_warning(monkeypatch, caplog):
    def failing_compile(fn):
        def run(*args):
            raise torch._dynamo.exc.TorchDynamoException("no C++ compiler found\ndetails")
        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    plain = tiny_model()
    model = tiny_model("TEST.COMPILE", "True")
    batch = eval_batch()
    with caplog.at_level(logging.WARNING, logger="lmseg.modeling.compilation"):
        out = scores(model, batch)[0]
        again = scores(model, batch)[0]
    torch.testing.assert_close(out, scores(plain, batch)[0], atol=0, rtol=0)
    torch.testing.assert_close(again, out, atol=0, rtol=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # said once
    assert "TEST.COMPILE" in warnings[0] and "no C++ compiler found" in warnings[0]


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory"),
                                   RuntimeError("The size of tensor a (3) must match the size of tensor b (4)")])
def test_test_compile_reraises_what_is_not_a_compilation_failure(monkeypatch, error):
    def compile_then_fail(fn):
        def run(*args):
            raise error
        return run

    monkeypatch.setattr(torch, "compile", compile_then_fail)
    model = tiny_model("TEST.COMPILE", "True")
    with pytest.raises(type(error), match=str(error)[:10]):
        scores(model, eval_batch())


def test_test_compile_falls_back_when_torch_compile_itself_refuses(monkeypatch):
    def refusing_compile(fn):
        raise RuntimeError("torch.compile is not supported on this platform")

    monkeypatch.setattr(torch, "compile", refusing_compile)
    plain = tiny_model()
    model = tiny_model("TEST.COMPILE", "True")
    batch = eval_batch()
    torch.testing.assert_close(scores(model, batch)[0], scores(plain, batch)[0], atol=0, rtol=0)


def test_evaluation_computes_text_embeddings_once_per_benchmark(tmp_path):
    labels = [np.random.default_rng(i).integers(0, 3, (40, 48)).astype(np.uint8) for i in range(4)]
    write_folder_dataset(str(tmp_path / "data"), ["sky", "tree", "road"], labels)
    args = default_argument_parser().parse_args(
        ["--config-file", TINY_CONFIG, "OUTPUT_DIR", str(tmp_path / "out"),
         "DATASETS.TRAIN", "()", "DATASETS.TEST", f'("sem_seg_folder:{tmp_path / "data"}",)']
    )
    cfg = setup(args)
    model = Trainer.build_model(cfg)
    model.set_vocabulary(VOCAB)
    calls = []
    encode = model.clip.encode_text
    model.clip.encode_text = lambda texts: calls.append(len(texts)) or encode(texts)
    Trainer.test(cfg, model)
    assert calls == [3]  # one text pass for the benchmark's 3 classes, not one per image


@pytest.mark.slow
def test_benchmark_table_and_operator_counts_on_the_cpu(tmp_path):
    import json
    import subprocess
    import sys

    from tests.helpers.model_helpers import REPO

    table = tmp_path / "table.md"
    proc = subprocess.run(
        [sys.executable, "tools/benchmark.py", "table", "--markdown", str(table), "--configs", TINY_CONFIG,
         "--classes", "3", "--paths", "whole,sliding", "--precisions", "float32", "--sam", "on,off",
         "--warmup", "0", "--runs", "1", "--train-configs", TINY_CONFIG, "--train-amp", "off",
         "--train-checkpointing", "none,sam+decoder", "--iters", "2", "--train-warmup", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = table.read_text()
    assert "- device: CPU" in text and "- commit: " in text and "--train-checkpointing none,sam+decoder" in text
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")][2:]
    assert [(r[0], r[2], r[3]) for r in rows[:4]] == [
        ("inference", "on", "whole"), ("inference", "on", "sliding"), ("inference", "off", "whole"), ("inference", "off", "sliding")
    ]
    assert [(r[0], r[3], r[6], r[7]) for r in rows[4:]] == [("train", "crop 64", "none", "2"), ("train", "crop 64", "sam+decoder", "2")]
    assert all(float(r[8]) > 0 for r in rows)

    ops = tmp_path / "ops.jsonl"
    proc = subprocess.run(
        [sys.executable, "tools/benchmark.py", "ops", "--config-file", TINY_CONFIG, "--precision", "bfloat16",
         "--classes", "3", "--output", str(ops)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = json.loads(ops.read_text())
    assert counts["precision"] == "bfloat16" and counts["classes"] == 3
    assert 0 < counts["_to_copy_calls"] <= counts["to_calls"] and 0 < counts["top_level_calls"] < counts["aten_calls"]
    assert counts["most_called"]


@pytest.mark.slow
def test_benchmark_table_refuses_unknown_settings_up_front():
    import subprocess
    import sys

    from tests.helpers.model_helpers import REPO

    proc = subprocess.run(
        [sys.executable, "tools/benchmark.py", "table", "--markdown", "x.md", "--train-checkpointing", "all,encoder"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2 and "--train-checkpointing encoder: ['encoder'] not among" in proc.stderr
    assert "Traceback" not in proc.stderr
