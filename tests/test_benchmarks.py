"""Every benchmark registers and evaluates on a synthetic copy of its layout; evaluate_all's table."""
import os
import subprocess
import sys

import pytest
from detectron2.engine import default_argument_parser

from lmseg.data import benchmarks, register_all_benchmarks
from lmseg.engine import Trainer, setup

from tests.helpers.model_helpers import REPO, TINY_CONFIG
from tests.helpers.synthetic_datasets import write_benchmark


@pytest.fixture()
def benchmark_root(tmp_path):
    root = tmp_path / "datasets"
    yield root
    register_all_benchmarks()  # back to the default root for the other tests


def test_every_benchmark_evaluates_on_its_synthetic_layout(benchmark_root, tmp_path):
    for b in benchmarks():
        write_benchmark(str(benchmark_root), b, num_images=2)
    register_all_benchmarks(str(benchmark_root))
    names = [b.name for b in benchmarks()]
    args = default_argument_parser().parse_args(
        ["--config-file", TINY_CONFIG, "OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.TEST", str(tuple(names))]
    )
    cfg = setup(args)
    model = Trainer.build_model(cfg)
    results = Trainer.test(cfg, model)
    assert list(results) == names
    for name in names:
        metrics = results[name]["sem_seg"]
        assert 0.0 <= metrics["mIoU"] <= 100.0
    # VOC-20b is evaluated over its 21 classes, not the 59 names the model sees
    voc20b = results["voc_2012_test_background_sem_seg"]["sem_seg"]
    assert "IoU-background" in voc20b and len([k for k in voc20b if k.startswith("IoU-")]) == 21
    # the training vocabulary (COCO-Stuff's) is back
    assert len(model.vocabulary) == 171


@pytest.mark.slow
def test_evaluate_all_writes_a_table_and_lists_absent_benchmarks_as_skipped(benchmark_root, tmp_path):
    present = {"ade20k_150_test_sem_seg", "voc_2012_test_background_sem_seg"}
    for b in benchmarks():
        if b.name in present:
            write_benchmark(str(benchmark_root), b, num_images=2)
    output = tmp_path / "table.md"
    proc = subprocess.run(
        [sys.executable, "tools/evaluate_all.py", "--config-file", TINY_CONFIG, "--output", str(output),
         "OUTPUT_DIR", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "DETECTRON2_DATASETS": str(benchmark_root), "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    table = output.read_text().splitlines()
    assert table[0] == "| model | A-847 | PC-459 | A-150 | PC-59 | VOC-20 | VOC-20b |"
    row = [c.strip() for c in table[2].strip("|").split("|")]
    assert row[1] == row[2] == row[4] == row[5] == "skipped"
    assert float(row[3]) >= 0 and float(row[6]) >= 0
    skipped = "\n".join(table)
    assert "ade20k_full_sem_seg_freq_val_all: " in skipped and "ADE20K_2021_17_01" in skipped
    assert output.with_suffix(".json").is_file()


def test_evaluate_all_stops_when_the_processes_see_different_benchmarks(monkeypatch, tmp_path):
    """Processes that would evaluate different benchmarks would wait on each other's collectives:
    every one stops with the lists instead (two processes, simulated)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_all", REPO / "tools" / "evaluate_all.py")
    evaluate_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate_all)
    monkeypatch.setattr(evaluate_all, "find_benchmarks", lambda root: (["ade20k_150_test_sem_seg"], {}))
    monkeypatch.setattr(evaluate_all.comm, "all_gather", lambda data: [data, []])
    args = default_argument_parser().parse_args(["--config-file", TINY_CONFIG, "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(RuntimeError, match=r"process 0: ade20k_150_test_sem_seg; process 1: none\): every machine"):
        evaluate_all.main(args)
