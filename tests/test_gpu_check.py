"""tools/gpu_check.sh's dry run on a CPU: the header, every target row and the profile exist."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # seven tiny-config benchmark processes: about 3 min on 2 cores
def test_gpu_check_dry_run_writes_header_rows_and_profile(tmp_path):
    out = tmp_path / "check"
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    r = subprocess.run(["bash", "tools/gpu_check.sh", "--dry-run", "--output", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    header = (out / "header.txt").read_text()
    for key in ("card:", "driver:", "torch:", "commit:"):
        assert key in header
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert [row["row"] for row in rows] == ["sliding bf16", "clip-only sliding bf16", "sliding fp32",
                                             "847 classes sliding bf16", "10000 classes sliding bf16",
                                             "train bf16 checkpointing", "train bf16 no checkpointing"]
    assert all("error" not in row for row in rows)
    assert (out / "profile_sliding_bf16.txt").stat().st_size > 0
    assert "collected only" in (out / "pytest.txt").read_text()


def test_gpu_check_rejects_unknown_argument():
    r = subprocess.run(["bash", "tools/gpu_check.sh", "--fast"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown argument '--fast'" in r.stderr
