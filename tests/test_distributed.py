"""Multi-process training (2 CPU processes, gloo) in every fusion mode and aggregation ablation,
with a vocabulary larger than the class cap: every trainable weight must get a gradient in every
step, or DistributedDataParallel stops at the second iteration."""
import json
import os
import subprocess
import sys

import pytest

from lmseg.modeling import FUSION_MODES

from tests.helpers.model_helpers import REPO
from tests.helpers.synthetic_datasets import write_learnable_folder_dataset

# Every test here trains or runs a command in a subprocess: left out of `make test-fast`.
pytestmark = pytest.mark.slow

# 3 classes, class cap 2: the class attention's padding tokens are not needed by any view
OVER_CAP = ["MODEL.LMSEG.CLASS_CAP", "2"]
RUNS = {
    **{
        f"fusion_{mode}": OVER_CAP + ["MODEL.FUSION.MODE", mode, "MODEL.SAM.ENABLED", str(mode != "clip_only")]
        for mode in FUSION_MODES
    },
    "vocabulary_at_cap": ["MODEL.LMSEG.CLASS_CAP", "3"],
    "spatial_only": OVER_CAP + ["MODEL.AGGREGATOR.CLASS", "False"],
    "class_only": OVER_CAP + ["MODEL.AGGREGATOR.SPATIAL", "False"],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    train = write_learnable_folder_dataset(str(root / "train"), num_images=8, size=48, num_classes=3, seed=0)
    runs = [f"{name}={','.join(opts)}" for name, opts in RUNS.items()]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.distributed_modes", f"sem_seg_folder:{train}", str(root), *runs],
        cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((root / "results.json").read_text())


@pytest.mark.parametrize("name", list(RUNS))
def test_two_processes_train_in_step(results, name):
    ranks = [r[name] for r in results]
    assert len(ranks) == 2
    assert [r["iter"] for r in ranks] == [2, 2]
    loss = ranks[0]["loss"]
    assert loss == loss and 0 < loss < 1e3
    # DistributedDataParallel kept the weights of both processes equal
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9)
