"""The model on a GPU: training steps under float16 (loss scaling) and bfloat16 autocast, and
inference in every precision on both paths. Skipped where there is no CUDA device (as in CI)."""
import pytest
import torch

from lmseg.engine import TrainStep

from tests.helpers.model_helpers import VOCAB, eval_batch, scores, tiny_model, train_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class _Loader:
    def __iter__(self):
        seed = 0
        while True:
            seed += 1
            yield train_batch(seed=seed)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_training_steps_with_mixed_precision(dtype):
    model = tiny_model("MODEL.DEVICE", "cuda", eval=False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    step = TrainStep(model, _Loader(), opt, dtype=dtype, clip_norm=0.01)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    from detectron2.utils.events import EventStorage

    with EventStorage(0) as storage:
        for i in range(3):
            step.iter = storage.iter = i
            step.run_step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(changed) > len(before) // 2


@pytest.mark.parametrize("sliding", [False, True])
def test_inference_precisions_agree(sliding):
    model = tiny_model("MODEL.DEVICE", "cuda")
    model.sliding_window = sliding
    batch = eval_batch(num_images=2)
    fp32 = scores(model, batch)
    assert fp32[0].device.type == "cuda" and fp32[0].shape == (len(VOCAB), 90, 120)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cuda", dtype=dtype):
            out = scores(model, batch)
        for a, b in zip(out, fp32):
            assert a.dtype == torch.float32 and torch.isfinite(a).all()
            assert (a - b).abs().max() < 0.05


def test_gpu_and_cpu_agree():
    cpu = tiny_model()
    gpu = tiny_model("MODEL.DEVICE", "cuda")
    gpu.load_state_dict(cpu.state_dict())
    batch = eval_batch()
    torch.testing.assert_close(scores(gpu, batch)[0].cpu(), scores(cpu, batch)[0], rtol=1e-3, atol=1e-4)
