"""Runs that would score or load something other than what the user named stop up front."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lmseg import Segmenter

REPO = Path(__file__).resolve().parents[1]
TINY = "configs/tiny.yaml"


def _run(*args, cwd=REPO):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_segmenter_names_the_missing_weights_file_before_building(monkeypatch):
    import lmseg.api

    def no_build(cfg):
        raise AssertionError("the model was built before the weights were checked")

    monkeypatch.setattr(lmseg.api, "build_model", no_build)
    with pytest.raises(FileNotFoundError, match=r"MODEL.WEIGHTS /nope/model.pth: no such file"):
        Segmenter.from_config(TINY, weights="/nope/model.pth")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--eval-only"], "--eval-only without MODEL.WEIGHTS would score a randomly initialised model"),
        (["--eval-only", "MODEL.WEIGHTS", "/nope/model.pth"], "MODEL.WEIGHTS /nope/model.pth: no such file"),
        (["MODEL.WEIGHTS", "/nope/model.pth"], "MODEL.WEIGHTS /nope/model.pth: no such file"),
    ],
)
def test_train_net_refuses_what_it_cannot_do_with_exit_status_2(args, message, tmp_path):
    proc = _run("train_net.py", "--config-file", TINY, *args, "OUTPUT_DIR", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # stopped before setting anything up


def test_evaluate_all_with_missing_weights_writes_no_table(tmp_path):
    table = tmp_path / "table.md"
    proc = _run("tools/evaluate_all.py", "--config-file", TINY, "--output", str(table), "MODEL.WEIGHTS", "/nope/model.pth")
    assert proc.returncode == 2, proc.stderr
    assert "MODEL.WEIGHTS /nope/model.pth: no such file" in proc.stderr and "Traceback" not in proc.stderr
    assert not table.exists()
