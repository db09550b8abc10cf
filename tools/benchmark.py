#!/usr/bin/env python
"""Measure LMSeg's training and inference speed and memory with random weights.

    python tools/benchmark.py train --config-file configs/vitb.yaml [--iters 40] [KEY VALUE ...]
    python tools/benchmark.py inference --config-file configs/vitb.yaml [--sliding] \
        [--precision bfloat16] [--classes 150] [KEY VALUE ...]
    python tools/benchmark.py ops --config-file configs/tiny.yaml [--sliding] [--precision bfloat16]
    python tools/benchmark.py table --markdown table.md [--configs ...] [--classes ...]

``train`` runs the real training path (data loader, mapper, optimizer, AMP, clipping) on a
synthetic folder dataset of random-label images written to a temporary folder, and reports the
median iteration time after warm-up and the peak GPU memory. ``inference`` times the model's
forward pass on one image (INPUT.MIN_SIZE_TEST short side, 4:3) with a vocabulary of ``--classes``
names (ADE-150's when 150). ``ops`` counts the operators and dtype casts of one such forward pass
with the CPU profiler (on any device). ``table`` runs a grid of both in one process (configs, SAM
on/off, paths, vocabulary sizes, precisions; training with AMP and activation checkpointing on and
off) and writes one Markdown table headed by the device, commit and command. No pretrained weights are needed or loaded. Results are printed as
JSON and appended to ``--output`` when given.
"""
import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import sys
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from detectron2.engine import HookBase
from PIL import Image

from lmseg.config import get_lmseg_cfg, use_cpu_without_cuda
from lmseg.data import load_vocabulary
from lmseg.engine import Trainer


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


class _ResidentMemory:
    """The process's peak resident memory (GiB) while the ``with`` block runs, sampled from
    /proc/self/statm every millisecond by a thread: what a CPU run holds, model weights included."""

    def __init__(self):
        self.peak = 0.0
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._running = False

    def now(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page / 2**30

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, self.now())
            time.sleep(0.001)

    def __enter__(self):
        self.peak = self.now()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, self.now())


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
            torch.cuda.reset_peak_memory_stats()  # the peak of all iterations, the first ones too
        trainer.train()
    steady = timer.times[args.warmup:]
    result = {
        "benchmark": "train",
        "config": args.config_file,
        "device": _device_name(cfg.MODEL.DEVICE),
        "batch": cfg.SOLVER.IMS_PER_BATCH,
        "crop": list(cfg.INPUT.CROP.SIZE),
        "amp": cfg.SOLVER.AMP.PRECISION if cfg.SOLVER.AMP.ENABLED else "float32",
        "activation_checkpointing": list(cfg.MODEL.LMSEG.ACTIVATION_CHECKPOINTING),
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


_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _vocabulary(classes: int) -> list:
    """ADE-150's names for 150 classes, otherwise ``classes`` made-up names."""
    return load_vocabulary("ade150") if classes == 150 else [f"class number {i}" for i in range(classes)]


def _eval_model(config_file: str, opts) -> tuple:
    """The model of a config in eval mode, random weights, and one test image (INPUT.MIN_SIZE_TEST
    short side, 4:3) as a batch."""
    cfg = _cfg(argparse.Namespace(config_file=config_file, opts=list(opts)))
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.freeze()
    model = Trainer.build_model(cfg).eval()
    short = cfg.INPUT.MIN_SIZE_TEST
    image = torch.randint(0, 256, (3, short, round(short * 4 / 3)), dtype=torch.uint8)
    return cfg, model, [{"image": image, "height": 480, "width": 640}]


def _time_forward(model, batch, device: str, dtype, warmup: int, runs: int) -> dict:
    """Median latency (ms) of ``runs`` forward passes after ``warmup`` ones, and the peak memory of
    the timed ones (GiB): on a GPU the most allocated by PyTorch, on the CPU (Linux) the process's
    peak resident memory, with ``rss_before_gib`` what it held before them (weights, embeddings)."""
    on_gpu = device.startswith("cuda")
    memory = _ResidentMemory() if not on_gpu and os.path.exists("/proc/self/statm") else None

    def forward() -> float:
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            _sync(device)
            start = time.perf_counter()
            model(batch)
            _sync(device)
        return time.perf_counter() - start

    with torch.no_grad():
        model.text_embeddings()  # the vocabulary's embeddings, computed once, as in any use
        for _ in range(warmup):
            forward()
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        before = memory.now() if memory is not None else None
        with memory if memory is not None else contextlib.nullcontext():
            times = [forward() for _ in range(runs)]
    result = {"latency_ms_median": 1000 * statistics.median(times)}
    if on_gpu:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    elif memory is not None:
        result["peak_memory_gib"] = memory.peak
        result["rss_before_gib"] = before
    return result


def _inference_setup(args):
    """The model with ``args.classes`` names on ``args``'s path, one test image, the autocast dtype."""
    cfg, model, batch = _eval_model(args.config_file, [*args.opts, "TEST.SLIDING_WINDOW", str(args.sliding)])
    model.set_vocabulary(_vocabulary(args.classes))
    return cfg, model, batch, _DTYPES[args.precision]


def bench_inference(args) -> dict:
    cfg, model, batch, dtype = _inference_setup(args)
    device = cfg.MODEL.DEVICE
    if args.kept_classes_only:
        batch = [dict(x, kept_classes_only=True) for x in batch]
    timing = _time_forward(model, batch, device, dtype, args.warmup, args.runs)
    if args.profile:
        _profile(lambda: model(batch), device, dtype, args.profile)
    return {
        "benchmark": "inference",
        "config": args.config_file,
        "device": _device_name(device),
        "path": "sliding window" if args.sliding else "whole image",
        "precision": args.precision,
        "classes": len(model.vocabulary),
        "input": list(batch[0]["image"].shape[-2:]),
        "output": [batch[0]["height"], batch[0]["width"]],
        "kept_classes_only": args.kept_classes_only,
        "runs": args.runs,
        **timing,
    }


# Operators that only create or reinterpret tensor metadata (no kernel runs on a GPU).
METADATA_OPS = {
    "aten::" + name
    for name in (
        "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "slice", "select", "as_strided",
        "unsqueeze", "squeeze", "narrow", "split", "split_with_sizes", "unbind", "chunk", "alias", "detach",
        "flatten", "unflatten", "view_as", "expand_as", "resolve_conj", "resolve_neg", "empty", "empty_strided",
        "empty_like", "contiguous", "lift_fresh", "result_type", "is_nonzero", "item", "_local_scalar_dense",
        "numpy_T", "movedim", "swapaxes", "_reshape_alias",
    )
}

# Operators that convert a tensor's dtype or copy it: aten::to dispatches to aten::_to_copy when
# it really converts, which fills the new tensor with aten::copy_ (also used by other copies).
CAST_OPS = ("aten::to", "aten::_to_copy", "aten::copy_")


def count_operators(args) -> dict:
    """Operator calls of one inference forward pass (after one untimed pass), from the profiler.

    ``aten_calls`` counts every aten operator, nested ones included; ``top_level_calls`` only those
    not called by another aten operator (what Python dispatches); ``kernel_calls`` the innermost
    operators that compute (not in :data:`METADATA_OPS`), about one kernel launch each on a GPU;
    ``cast_elements`` sums the input elements of every ``aten::_to_copy``; ``allocated_mib`` the
    memory allocated by all operators (each tensor created), a proxy of the memory traffic.
    """
    cfg, model, batch, dtype = _inference_setup(args)
    device = cfg.MODEL.DEVICE
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
        model(batch)  # text embeddings and other caches are filled once, not per forward
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True, profile_memory=True
        ) as prof:
            model(batch)
    events = [e for e in prof.events() if e.name.startswith("aten::")]

    def nested(e) -> bool:
        parent = e.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return True
            parent = parent.cpu_parent
        return False

    parents = {id(e.cpu_parent) for e in events if e.cpu_parent is not None}
    kernels = [e for e in events if id(e) not in parents and e.name not in METADATA_OPS]
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
        "kernel_calls": len(kernels),
        **{name.replace("aten::", "") + "_calls": counts.get(name, 0) for name in CAST_OPS},
        "cast_elements": cast_elements,
        "allocated_mib": round(sum(max(e.self_cpu_memory_usage, 0) for e in events) / 2**20, 1),
        "most_called": dict(top),
    }


_CLIP_ONLY = ["MODEL.SAM.ENABLED", "False", "MODEL.FUSION.MODE", "clip_only"]
_ALL_PARTS = ["clip", "sam", "aggregator", "decoder"]


def _checkpointing(setting: str) -> list:
    """Parts of a --train-checkpointing setting: "none", "all", or parts joined by "+"."""
    if setting == "none":
        return []
    return list(_ALL_PARTS) if setting == "all" else setting.split("+")


def _git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


def _out_of_memory(err: Exception) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err)


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def bench_table(args) -> dict:
    """Every setting of the grid, timed in this one process; the rows of one Markdown table."""
    rows = []
    device = None

    def add(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    if "inference" in args.sections:
        for config in args.configs:
            for sam in args.sam:
                cfg, model, batch = _eval_model(config, [*args.opts, *([] if sam == "on" else _CLIP_ONLY)])
                device = cfg.MODEL.DEVICE
                for classes in args.classes:
                    model.set_vocabulary(_vocabulary(classes))
                    for path in args.paths:
                        model.sliding_window = path == "sliding"
                        for precision in args.precisions:
                            row = dict(kind="inference", config=config, sam=sam, path=path, classes=classes,
                                       precision=precision, checkpointing="-", batch=1)
                            try:
                                row.update(_time_forward(model, batch, device, _DTYPES[precision], args.warmup, args.runs))
                            except RuntimeError as err:
                                if not _out_of_memory(err):
                                    raise
                                row["note"] = "out of memory"
                            if device.startswith("cuda"):
                                torch.cuda.empty_cache()
                            add(row)
                del model
    if "train" in args.sections:
        for config in args.train_configs:
            for amp in args.train_amp:
                for setting in args.train_checkpointing:
                    parts = _checkpointing(setting)
                    opts = [*args.opts, "SOLVER.AMP.ENABLED", str(amp == "on"), "SOLVER.AMP.PRECISION", "bfloat16",
                            "MODEL.LMSEG.ACTIVATION_CHECKPOINTING", json.dumps(parts)]
                    ns = argparse.Namespace(config_file=config, opts=opts, iters=args.iters, warmup=args.train_warmup)
                    row = dict(kind="train", config=config, sam="on", path="-", classes=171,
                               precision="bfloat16" if amp == "on" else "float32", checkpointing=setting)
                    try:
                        result = bench_train(ns)
                        row.update(batch=result["batch"], path=f"crop {result['crop'][0]}",
                                   latency_ms_median=result["iteration_ms_median"],
                                   peak_memory_gib=result.get("peak_memory_gib"))
                        device = _cfg(ns).MODEL.DEVICE
                    except RuntimeError as err:
                        if not _out_of_memory(err):
                            raise
                        row["note"] = "out of memory"
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    add(row)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lines = [
        "# LMSeg speed and memory",
        "",
        f"- device: {_device_name(device)}; PyTorch {torch.__version__}",
        f"- commit: {_git_commit()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "- command: `python tools/benchmark.py " + " ".join(shlex.quote(a) for a in args.argv) + "`",
        f"- random weights; inference: median of {args.runs} runs after {args.warmup} on one image, SAM "
        "'off' is the CLIP-only model of the same config; training: median of "
        f"{args.iters - args.train_warmup} iterations after {args.train_warmup}, 171 classes, peak memory of all",
        "",
        "| kind | config | SAM | path | classes | precision | checkpointing | batch | ms (median) | peak GPU memory (GiB) | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | `{r['config']}` | {r['sam']} | {r['path']} | {r['classes']} | {r['precision']} | "
            f"{r['checkpointing']} | {r.get('batch', '-')} | {_cell(r.get('latency_ms_median'), '.1f')} | "
            f"{_cell(r.get('peak_memory_gib'), '.2f')} | {r.get('note', '')} |"
        )
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    Path(args.markdown).write_text("\n".join(lines) + "\n")
    return {"benchmark": "table", "markdown": args.markdown, "rows": len(rows)}


def _words(text: str) -> list:
    return [w for w in text.split(",") if w]


def _numbers(text: str) -> list:
    return [int(w) for w in _words(text)]


def _check_table_args(parser, args) -> None:
    allowed = {"paths": ("whole", "sliding"), "precisions": tuple(_DTYPES), "sam": ("on", "off"),
               "train_amp": ("on", "off"), "sections": ("inference", "train")}
    for name, choices in allowed.items():
        bad = [v for v in getattr(args, name) if v not in choices]
        if bad:
            parser.error(f"--{name.replace('_', '-')}: {bad} not among {list(choices)}")
    for setting in args.train_checkpointing:
        bad = [p for p in _checkpointing(setting) if p not in _ALL_PARTS]
        if bad:
            parser.error(f"--train-checkpointing {setting}: {bad} not among none, all, {_ALL_PARTS}")
    if any(c < 1 for c in args.classes):
        parser.error(f"--classes {args.classes}: every vocabulary needs at least one class")
    if args.runs < 1:
        parser.error(f"--runs {args.runs}: time at least one run")
    if "train" in args.sections and args.iters <= args.train_warmup:
        parser.error(f"--iters {args.iters} leaves no timed iteration after --train-warmup {args.train_warmup}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "inference", "ops"):
        p = sub.add_parser(name)
        p.add_argument("--config-file", required=True)
        p.add_argument("--output", default="", help="append the JSON result to this file")
        p.add_argument("--device", default="", choices=("", "cpu", "cuda"),
                       help="run on this device (default: MODEL.DEVICE, the CPU when CUDA is absent)")
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
            p.add_argument("--kept-classes-only", action="store_true",
                           help="past MODEL.LMSEG.CLASS_CAP, ask for the kept classes' scores only, as lmseg.Segmenter does")
        if name == "ops":
            p.add_argument("--top", type=int, default=15, help="list this many of the most called operators")
        p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    p = sub.add_parser("table", help="time a grid of settings in one run and write one Markdown table")
    p.add_argument("--markdown", required=True, help="write the table to this file")
    p.add_argument("--configs", type=_words, default="configs/vitb.yaml,configs/vitl.yaml", help="comma-separated")
    p.add_argument("--classes", type=_numbers, default="20,150,847,2000,10000", help="vocabulary sizes, comma-separated")
    p.add_argument("--paths", type=_words, default="whole,sliding", help="whole and/or sliding")
    p.add_argument("--precisions", type=_words, default="float32,bfloat16")
    p.add_argument("--sam", type=_words, default="on,off", help="on (the config) and/or off (its CLIP-only model)")
    p.add_argument("--warmup", type=int, default=5, help="untimed inference runs first")
    p.add_argument("--runs", type=int, default=10, help="timed inference runs")
    p.add_argument("--train-configs", type=_words, default="configs/vitb.yaml,configs/vitl.yaml")
    p.add_argument("--train-amp", type=_words, default="on,off", help="on (bfloat16 autocast) and/or off")
    p.add_argument("--train-checkpointing", type=_words, default="none,all",
                   help=f"MODEL.LMSEG.ACTIVATION_CHECKPOINTING settings: none, all, or parts of {_ALL_PARTS} joined by +")
    p.add_argument("--iters", type=int, default=15, help="training iterations per setting")
    p.add_argument("--train-warmup", type=int, default=5, help="untimed training iterations first")
    p.add_argument("--sections", type=_words, default="inference,train", help="inference and/or train")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every setting")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if getattr(args, "device", ""):  # train, inference, ops: --device is MODEL.DEVICE
        args.opts = [*args.opts, "MODEL.DEVICE", args.device]
    if args.command == "table":
        _check_table_args(parser, args)
    if getattr(args, "warmup", 0) < 0:
        parser.error(f"--warmup {args.warmup} must be 0 or more")
    if args.command == "train" and args.iters <= args.warmup:
        parser.error(
            f"--iters {args.iters} leaves no timed iteration after the {args.warmup} warm-up ones: "
            f"give --iters above {args.warmup} or a smaller --warmup"
        )
    if args.command == "inference" and args.runs < 1:
        parser.error(f"--runs {args.runs}: time at least one run")
    run = {"train": bench_train, "inference": bench_inference, "ops": count_operators, "table": bench_table}[args.command]
    result = run(args)
    line = json.dumps(result)
    print(line)
    if getattr(args, "output", ""):
        with open(args.output, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
