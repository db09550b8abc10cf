"""The steps of tools/gpu_check.sh: header, GPU tests, one benchmark row per target, the profile.

Every file lands in ``--output``: ``header.txt`` (card, driver, torch, commit), ``pytest.txt``,
``rows.jsonl`` (one JSON line per row, ``row`` naming the target), ``rows.md`` and
``profile_sliding_bf16.txt`` (the torch.profiler table of the sliding bfloat16 run).
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIP_ONLY = ["MODEL.SAM.ENABLED", "False", "MODEL.FUSION.MODE", "clip_only"]


def _rows(dry: bool):
    """(row name, benchmark.py arguments) for each target row."""
    cfg = "configs/tiny.yaml" if dry else "configs/vitb.yaml"
    big = "configs/tiny.yaml" if dry else "configs/vitl.yaml"
    inf = ["--warmup", "1", "--runs", "2"] if dry else ["--warmup", "5", "--runs", "20"]
    tr = ["--warmup", "1", "--iters", "2"] if dry else ["--warmup", "3", "--iters", "10"]
    c847, c10k = ("30", "60") if dry else ("847", "10000")
    base = ["inference", "--config-file", cfg, "--sliding", *inf]
    train_opts = [] if dry else ["SOLVER.IMS_PER_BATCH", "4", "INPUT.CROP.SIZE", "[384, 384]"]
    train = ["train", "--config-file", big, *tr]
    amp = ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "bfloat16"]
    return [
        ("sliding bf16", [*base, "--precision", "bfloat16", "--classes", "150", "--profile", "PROFILE"]),
        ("clip-only sliding bf16", [*base, "--precision", "bfloat16", "--classes", "150", *CLIP_ONLY]),
        ("sliding fp32", [*base, "--precision", "float32", "--classes", "150"]),
        ("847 classes sliding bf16", [*base, "--precision", "bfloat16", "--classes", c847]),
        ("10000 classes sliding bf16", [*base, "--precision", "bfloat16", "--classes", c10k]),
        ("train bf16 checkpointing", [*train, *train_opts, *amp,
                                      "MODEL.LMSEG.ACTIVATION_CHECKPOINTING", '["clip", "sam", "aggregator", "decoder"]']),
        ("train bf16 no checkpointing", [*train, *train_opts, *amp, "MODEL.LMSEG.ACTIVATION_CHECKPOINTING", "[]"]),
    ]


def _sh(cmd) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unavailable"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--output", required=True)
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    import torch
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (CPU)"
    header = [f"card: {card}",
              f"driver: {_sh(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'])}",
              f"torch: {torch.__version__}", f"commit: {_sh(['git', 'rev-parse', 'HEAD'])}",
              f"mode: {'dry run, configs/tiny.yaml' if args.dry_run else 'full'}"]
    (out / "header.txt").write_text("\n".join(header) + "\n")
    print("\n".join(header))
    tests = ["tests/test_gpu.py", "tests/test_speed_paths.py"]
    pytest = [sys.executable, "-m", "pytest", "-q", *tests] + (["--collect-only"] if args.dry_run else [])
    res = subprocess.run(pytest, capture_output=True, text=True, cwd=ROOT)
    note = "dry run: tests collected only, not run\n" if args.dry_run else ""
    (out / "pytest.txt").write_text(note + res.stdout + res.stderr)
    print(f"pytest ({'collect-only' if args.dry_run else 'run'}): exit {res.returncode}")
    jsonl = out / "rows.jsonl"
    jsonl.write_text("")
    failed = 0
    for name, bench in _rows(args.dry_run):
        bench = [str(out / "profile_sliding_bf16.txt") if a == "PROFILE" else a for a in bench]
        tmp = out / "row.json"
        tmp.unlink(missing_ok=True)
        cmd = [sys.executable, "tools/benchmark.py", bench[0], "--output", str(tmp), *bench[1:]]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=os.environ)
        row = {"row": name, "command": " ".join(cmd[1:])}
        if r.returncode == 0 and tmp.exists():
            row.update(json.loads(tmp.read_text().strip().splitlines()[-1]))
        else:
            failed += 1
            row["error"] = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["exit %d" % r.returncode]
        tmp.unlink(missing_ok=True)
        with jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row))
    lines = ["| row | result |", "| --- | --- |"]
    for line in jsonl.read_text().splitlines():
        d = json.loads(line)
        lines.append(f"| {d['row']} | {json.dumps({k: v for k, v in d.items() if k not in ('row', 'command')})} |")
    (out / "rows.md").write_text("\n".join(lines) + "\n")
    return 1 if failed or (res.returncode not in (0, 5) and not args.dry_run) else 0


if __name__ == "__main__":
    sys.exit(main())
