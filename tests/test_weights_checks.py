"""Runs that would score or load something other than what the user named stop up front."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from detectron2.engine import default_argument_parser

import train_net
from lmseg import Segmenter

from tests.helpers.synthetic_datasets import write_learnable_folder_dataset

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


@pytest.mark.slow
def test_allow_untrained_scores_random_weights_and_labels_every_result(tmp_path):
    sets = [f"sem_seg_folder:{write_learnable_folder_dataset(str(tmp_path / name), num_images=2, size=32, seed=i)}"
            for i, name in enumerate(("a", "b"))]
    out = tmp_path / "subprocess"
    opts = ["DATASETS.TRAIN", "()", "DATASETS.TEST", str(tuple(sets)), "INPUT.MIN_SIZE_TEST", "32"]
    proc = _run("train_net.py", "--config-file", TINY, "--eval-only", "--allow-untrained", *opts, "OUTPUT_DIR", str(out))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    # warned before the model is scored and again under the results
    assert log.count("UNTRAINED MODEL (--allow-untrained, no MODEL.WEIGHTS)") == 2
    headings = re.findall(r"Evaluation results for (.*) in csv format", log)
    assert headings == [f"{name} [untrained]" for name in sets]
    tasks = re.findall(r"copypaste: Task: (.*)", log)
    assert tasks == ["sem_seg [untrained]"] * 2
    # and the results train_net's main returns: every task's key says it
    args = default_argument_parser().parse_args(
        ["--config-file", TINY, "--eval-only", *opts, "OUTPUT_DIR", str(tmp_path / "in-process")])
    results = train_net.main(args)
    assert list(results) == sets and all(list(r) == ["sem_seg [untrained]"] for r in results.values())
