"""What a new user meets: the documented commands stop early with a clear message, or work.

Each test is one of the problems a fresh-clone run of the docs once hit: a test set inherited from
the base config that is not on disk, training sets with different vocabularies, EXIF-rotated images
in a folder dataset, LMSeg's log lines, the benchmark tool's iteration count, and resuming.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser
from PIL import Image

from lmseg.data import ensure_datasets_registered
from lmseg.engine import Trainer, setup

from tests.helpers.model_helpers import REPO, TINY_CONFIG
from tests.helpers.synthetic_datasets import write_folder_dataset, write_learnable_folder_dataset

# Every test here trains or runs a command in a subprocess: left out of `make test-fast`.
pytestmark = pytest.mark.slow


def _run(*args, timeout=600):
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "DETECTRON2_DATASETS": os.environ.get("LMSEG_TEST_EMPTY", "/nonexistent")},
    )


@pytest.fixture(scope="module")
def train_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return "sem_seg_folder:" + write_learnable_folder_dataset(str(root), num_images=4, size=64, num_classes=3, seed=0)


def test_missing_test_set_stops_before_training(train_folder, tmp_path):
    """The base config's ADE-150 test set is inherited: without it on disk the run stops at once,
    naming it and how to evaluate nothing, instead of training and then failing."""
    proc = _run("train_net.py", "--config-file", TINY_CONFIG, "DATASETS.TRAIN", f'("{train_folder}",)',
                "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "2")
    assert proc.returncode != 0
    err = proc.stderr
    assert "DATASETS.TEST has 'ade20k_150_test_sem_seg', which cannot be used" in err
    assert "DATASETS.TEST '()'" in err
    assert "Starting training" not in proc.stdout + err
    assert not (tmp_path / "model_final.pth").exists()


def test_documented_folder_training_command_runs(train_folder, tmp_path):
    """GETTING_STARTED's folder command, with the empty test list it shows; LMSeg's own log lines
    (the parameter summary) appear."""
    proc = _run("train_net.py", "--config-file", TINY_CONFIG, "DATASETS.TRAIN", f'("{train_folder}",)',
                "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "trainable" in log and "frozen" in log  # lmseg.modeling.summary's table
    assert "lmseg.modeling.summary INFO" in (tmp_path / "log.txt").read_text()
    assert (tmp_path / "model_final.pth").is_file()


def test_training_sets_with_different_vocabularies_are_refused(train_folder, tmp_path):
    other = "sem_seg_folder:" + write_learnable_folder_dataset(str(tmp_path / "other"), num_images=2, size=64,
                                                               num_classes=4, seed=1)
    args = default_argument_parser().parse_args(
        ["--config-file", TINY_CONFIG, "DATASETS.TRAIN", f'("{train_folder}", "{other}")', "DATASETS.TEST", "()",
         "OUTPUT_DIR", str(tmp_path / "out")]
    )
    with pytest.raises(ValueError, match="DATASETS.TRAIN lists datasets with different vocabularies"):
        Trainer(setup(args))


def _exif_rotated_jpeg(path, array, orientation=6):
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif)


def _rotated_folder(root, label_hw):
    """A folder dataset of one camera JPEG stored 40 wide x 24 high with EXIF "rotate 90" (24 wide
    x 40 high upright) and a label of ``label_hw``; returns its registered name."""
    write_folder_dataset(str(root), ["a", "b"], [np.zeros(label_hw, np.uint8)])
    image_file = next((root / "images").iterdir())
    image_file.unlink()
    _exif_rotated_jpeg(root / "images" / (image_file.stem + ".jpg"), np.zeros((24, 40, 3), np.uint8))
    name = f"sem_seg_folder:{root}"
    ensure_datasets_registered([name])
    return name


def test_folder_dataset_checks_labels_against_the_upright_image(tmp_path):
    """The upright image is 40 high x 24 wide: its label must be 40 x 24 (H x W), and a label of
    the stored size is reported up front."""
    assert len(DatasetCatalog.get(_rotated_folder(tmp_path / "data", (40, 24)))) == 1
    with pytest.raises(ValueError, match="problem"):
        DatasetCatalog.get(_rotated_folder(tmp_path / "wrong", (24, 40)))


def test_benchmark_tool_refuses_an_iteration_count_with_nothing_to_time():
    proc = _run("tools/benchmark.py", "train", "--config-file", TINY_CONFIG, "--iters", "10")
    assert proc.returncode == 2
    assert "--iters 10 leaves no timed iteration after the 10 warm-up ones" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_benchmark_tool_trains_and_reports(tmp_path):
    out = tmp_path / "bench.jsonl"
    proc = _run("tools/benchmark.py", "train", "--config-file", TINY_CONFIG, "--iters", "4", "--warmup", "2",
                "--output", str(out), "MODEL.DEVICE", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text().splitlines()[-1])
    assert result["iterations_timed"] == 2 and result["iteration_ms_median"] > 0


@pytest.mark.slow
def test_benchmark_tool_reports_cpu_memory_past_the_class_cap(tmp_path):
    out = tmp_path / "bench.jsonl"
    # 400 classes, past tiny.yaml's cap of 32: at most 5 views x 32 = 160 classes have maps
    for flag in ([], ["--kept-classes-only"]):
        proc = _run("tools/benchmark.py", "inference", "--config-file", TINY_CONFIG, "--device", "cpu", "--sliding",
                    "--classes", "400", "--warmup", "0", "--runs", "1", "--output", str(out), *flag)
        assert proc.returncode == 0, proc.stderr[-3000:]
    dense, kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert dense["classes"] == kept["classes"] == 400 and dense["device"].startswith("CPU")
    # the dense output alone is 400 x 480 x 640 float32 (0.46 GiB); the kept classes' at most 0.18 GiB
    assert kept["peak_memory_gib"] - kept["rss_before_gib"] < dense["peak_memory_gib"] - dense["rss_before_gib"] - 0.15
    assert (dense["kept_classes_only"], kept["kept_classes_only"]) == (False, True)
    for result in (dense, kept):
        assert 0 < result["rss_before_gib"] <= result["peak_memory_gib"] < 64
        assert result["output"] == [480, 640]


def test_resume_continues_learning_rate_and_optimizer_state(train_folder, tmp_path):
    def trainer(out, max_iter=10):
        args = default_argument_parser().parse_args(
            ["--config-file", TINY_CONFIG, "DATASETS.TRAIN", f'("{train_folder}",)', "DATASETS.TEST", "()",
             "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "5"]
        )
        return Trainer(setup(args))

    straight = trainer(tmp_path / "a")
    straight.resume_or_load(resume=False)
    straight.train()
    lrs = {it: lr for lr, it in straight.storage.history("lr").values()}
    assert len(set(lrs.values())) > 3  # the cosine schedule moves

    # a run stopped after its first checkpoint (iteration 5), then resumed
    (tmp_path / "a" / "last_checkpoint").write_text("model_0000004.pth")
    saved = torch.load(tmp_path / "a" / "model_0000004.pth", map_location="cpu", weights_only=False)
    resumed = trainer(tmp_path / "a")
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 5
    state = resumed.optimizer.state_dict()["state"]
    expected = saved["trainer"]["_trainer"]["optimizer"]["state"] if "_trainer" in saved["trainer"] else saved["optimizer"]["state"]
    assert state.keys() == expected.keys() and len(state) > 10
    for k in state:
        assert int(state[k]["step"]) == 5
        torch.testing.assert_close(state[k]["exp_avg"], expected[k]["exp_avg"], atol=0, rtol=0)
    resumed.train()
    resumed_lrs = {it: lr for lr, it in resumed.storage.history("lr").values()}
    assert sorted(resumed_lrs) == list(range(5, 10))
    for it in range(5, 10):
        assert resumed_lrs[it] == pytest.approx(lrs[it], rel=1e-9)
