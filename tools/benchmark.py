#!/usr/bin/env python
"""Measure LMSeg's training and inference speed and memory with random weights.

    python tools/benchmark.py train --config-file configs/vitb.yaml [--iters 40] [KEY VALUE ...]
    python tools/benchmark.py inference --config-file configs/vitb.yaml [--sliding] \
        [--precision bfloat16] [--classes 150] [KEY VALUE ...]
    python tools/benchmark.py ops --config-file configs/tiny.yaml [--sliding] [--precision bfloat16]

``train`` runs the real training path (data loader, mapper, optimizer, AMP, clipping) on a
synthetic folder dataset of random-label images written to a temporary folder, and reports the
median iteration time after warm-up and the peak GPU memory. ``inference`` times the model's
forward pass on one image (INPUT.MIN_SIZE_TEST short side, 4:3) with a vocabulary of ``--classes``
names (ADE-150's when 150). ``ops`` counts the operators and dtype casts of one such forward pass
with the CPU profiler (on any device). No pretrained weights are needed or loaded. Results are printed as
JSON and appended to ``--output`` when given.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.engine import HookBase  # noqa: E402
from PIL import Image  # noqa: E402

from lmseg.config import get_lmseg_cfg, use_cpu_without_cuda  # noqa: E402
from lmseg.data import load_vocabulary  # noqa: E402
from lmseg.engine import Trainer  # noqa: E402


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} threads)"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _cfg(args):
    cfg = get_lmseg_cfg(args.config_file, args.opts)
    cfg.MODEL.CLIP.PRETRAINED = ""
    cfg.MODEL.SAM.CHECKPOINT = ""
    use_cpu_without_cuda(cfg)
    return cfg


def _write_dataset(root: Path, num_images: int, size: int, num_classes: int, seed: int = 0) -> str:
    """Random images with blocky random labels, the training vocabulary's size."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(num_images):
        blocks = rng.integers(0, num_classes, (8, 8)).astype(np.uint8)
        label = np.kron(blocks, np.ones((size // 8, size // 8), np.uint8))
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"{i}.jpg")
        Image.fromarray(label).save(root / "labels" / f"{i}.png")
    (root / "classes.json").write_text(json.dumps(load_vocabulary("coco")[:num_classes]))
    return f"sem_seg_folder:{root}"


class _StepTimer(HookBase):
    def __init__(self, device: str):
        self.device = device
        self.times = []

    def before_step(self):
        _sync(self.device)
        self._start = time.perf_counter()

    def after_step(self):
        _sync(self.device)
        self.times.append(time.perf_counter() - self._start)


def bench_train(args) -> dict:
    cfg = _cfg(args)
    with tempfile.TemporaryDirectory() as tmp:
        name = _write_dataset(Path(tmp) / "data", num_images=32, size=512, num_classes=171)
        cfg.DATASETS.TRAIN = (name,)
        cfg.DATASETS.TEST = ()
        cfg.TEST.EVAL_PERIOD = 0
        cfg.SOLVER.MAX_ITER = args.iters
        cfg.SOLVER.CHECKPOINT_PERIOD = 10**9
        cfg.OUTPUT_DIR = str(Path(tmp) / "out")
        cfg.freeze()
        trainer = Trainer(cfg)
        trainer.checkpointer.save_to_disk = False
        timer = _StepTimer(cfg.MODEL.DEVICE)
        trainer.register_hooks([timer])
        trainer.resume_or_load(resume=False)
        if cfg.MODEL.DEVICE.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    steady = timer.times[args.warmup:]
    result = {
        "benchmark": "train",
        "config": args.config_file,
        "device": _device_name(cfg.MODEL.DEVICE),
        "batch": cfg.SOLVER.IMS_PER_BATCH,
        "crop": list(cfg.INPUT.CROP.SIZE),
        "amp": cfg.SOLVER.AMP.PRECISION if cfg.SOLVER.AMP.ENABLED else "float32",
        "iterations_timed": len(steady),
        "iteration_ms_median": 1000 * statistics.median(steady),
    }
    if cfg.MODEL.DEVICE.startswith("cuda"):
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def _profile(fn, device: str, dtype, path: str) -> None:
    """Write the operators of one run of ``fn``, most expensive first, to ``path``."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
        with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
            fn()
            _sync(device)
    key = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    Path(path).write_text(prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=40))


def _inference_setup(args):
    """The model in eval mode with ``args.classes`` names, one test image, and the autocast dtype."""
    cfg = _cfg(args)
    cfg.TEST.SLIDING_WINDOW = args.sliding
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.freeze()
    model = Trainer.build_model(cfg).eval()
    vocab = load_vocabulary("ade150") if args.classes == 150 else [f"class number {i}" for i in range(args.classes)]
    model.set_vocabulary(vocab)
    short = cfg.INPUT.MIN_SIZE_TEST
    h, w = short, round(short * 4 / 3)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    batch = [{"image": image, "height": 480, "width": 640}]
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.precision]
    return cfg, model, batch, dtype


def bench_inference(args) -> dict:
    cfg, model, batch, dtype = _inference_setup(args)
    device = cfg.MODEL.DEVICE
    times = []
    with torch.no_grad():
        for i in range(args.warmup + args.runs):
            with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
                _sync(device)
                start = time.perf_counter()
                model(batch)
                _sync(device)
            times.append(time.perf_counter() - start)
            if i == args.warmup - 1 and device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
    if args.profile:
        _profile(lambda: model(batch), device, dtype, args.profile)
    image = batch[0]["image"]
    result = {
        "benchmark": "inference",
        "config": args.config_file,
        "device": _device_name(device),
        "path": "sliding window" if args.sliding else "whole image",
        "precision": args.precision,
        "classes": len(model.vocabulary),
        "input": list(image.shape[-2:]),
        "runs": args.runs,
        "latency_ms_median": 1000 * statistics.median(times[args.warmup:]),
    }
    if device.startswith("cuda"):
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


# Operators that convert a tensor's dtype or copy it: aten::to dispatches to aten::_to_copy when
# it really converts, which fills the new tensor with aten::copy_ (also used by other copies).
CAST_OPS = ("aten::to", "aten::_to_copy", "aten::copy_")


def count_operators(args) -> dict:
    """Operator calls of one inference forward pass (after one untimed pass), from the profiler.

    ``aten_calls`` counts every aten operator, nested ones included; ``top_level_calls`` only those
    not called by another aten operator (what Python dispatches, one or more kernel launches each
    on a GPU); ``cast_elements`` sums the input elements of every ``aten::_to_copy``.
    """
    cfg, model, batch, dtype = _inference_setup(args)
    device = cfg.MODEL.DEVICE
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
        model(batch)  # text embeddings and other caches are filled once, not per forward
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            model(batch)
    events = [e for e in prof.events() if e.name.startswith("aten::")]

    def nested(e) -> bool:
        parent = e.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return True
            parent = parent.cpu_parent
        return False

    counts = {}
    for e in events:
        counts[e.name] = counts.get(e.name, 0) + 1
    cast_elements = 0
    for e in events:
        if e.name == "aten::_to_copy" and e.input_shapes and e.input_shapes[0]:
            cast_elements += int(np.prod(e.input_shapes[0]))
    top = sorted(counts.items(), key=lambda kv: -kv[1])[: args.top]
    return {
        "benchmark": "operators",
        "config": args.config_file,
        "overrides": list(args.opts),
        "device": _device_name(device),
        "path": "sliding window" if args.sliding else "whole image",
        "precision": args.precision,
        "classes": len(model.vocabulary),
        "aten_calls": len(events),
        "top_level_calls": sum(1 for e in events if not nested(e)),
        **{name.replace("aten::", "") + "_calls": counts.get(name, 0) for name in CAST_OPS},
        "cast_elements": cast_elements,
        "most_called": dict(top),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "inference", "ops"):
        p = sub.add_parser(name)
        p.add_argument("--config-file", required=True)
        p.add_argument("--output", default="", help="append the JSON result to this file")
        if name == "train":
            p.add_argument("--warmup", type=int, default=10, help="untimed iterations first")
            p.add_argument("--iters", type=int, default=40)
        else:
            p.add_argument("--sliding", action="store_true")
            p.add_argument("--precision", default="float32", choices=("float32", "bfloat16", "float16"))
            p.add_argument("--classes", type=int, default=150)
        if name == "inference":
            p.add_argument("--warmup", type=int, default=10, help="untimed runs first")
            p.add_argument("--runs", type=int, default=20)
            p.add_argument("--profile", default="", help="write a profile of one run to this file")
        if name == "ops":
            p.add_argument("--top", type=int, default=15, help="list this many of the most called operators")
        p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if getattr(args, "warmup", 0) < 0:
        parser.error(f"--warmup {args.warmup} must be 0 or more")
    if args.command == "train" and args.iters <= args.warmup:
        parser.error(
            f"--iters {args.iters} leaves no timed iteration after the {args.warmup} warm-up ones: "
            f"give --iters above {args.warmup} or a smaller --warmup"
        )
    if args.command == "inference" and args.runs < 1:
        parser.error(f"--runs {args.runs}: time at least one run")
    run = {"train": bench_train, "inference": bench_inference, "ops": count_operators}[args.command]
    result = run(args)
    line = json.dumps(result)
    print(line)
    if args.output:
        with open(args.output, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
