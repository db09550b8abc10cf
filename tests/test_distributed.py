"""Multi-process training (2 CPU processes, gloo) in every fusion mode and aggregation ablation,
with a vocabulary larger than the class cap: every trainable weight must get a gradient in every
step, or DistributedDataParallel stops at the second iteration. And the LLM's descriptions on
several processes: asked once, the same on every process."""
import datetime
import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist

from lmseg.descriptions import compose_prompt
from lmseg.modeling import FUSION_MODES
from lmseg.modeling.prompts import PromptBuilder, _ask_llm

from tests.helpers.llm_server import ChatServer, completion, fake_entry
from tests.helpers.model_helpers import REPO
from tests.helpers.synthetic_datasets import write_folder_dataset, write_learnable_folder_dataset

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


def test_two_processes_use_the_same_llm_descriptions_asked_once(tmp_path):
    # classes described nowhere; the test set adds one the training set lacks
    train = tmp_path / "train"
    test = tmp_path / "test"
    labels = [np.random.default_rng(i).integers(0, 2, (48, 48)).astype(np.uint8) for i in range(4)]
    write_folder_dataset(str(train), ["zorblat", "quuxite"], labels)
    write_folder_dataset(str(test), ["zorblat", "snarfle"], labels[:2])

    def answer(n, name, request):
        # a new text on every call, so that two processes asking for themselves get different prompts
        return 200, {}, completion(json.dumps(fake_entry(f"{name} (call {n})")))

    cache = tmp_path / "cache" / "descriptions.json"
    with ChatServer(answer) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.helpers.prompts_on_ranks", f"sem_seg_folder:{train}", f"sem_seg_folder:{test}",
             str(tmp_path / "out"), "MODEL.PROMPTS.TEXTS", "both", "MODEL.PROMPTS.LLM.ENABLED", "True",
             "MODEL.PROMPTS.LLM.BASE_URL", server.base_url, "MODEL.PROMPTS.LLM.MODEL", "test-model",
             "MODEL.PROMPTS.LLM.CACHE", str(cache)],
            cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        # one process asked, each class once, at temperature 0
        assert sorted(server.asked()) == ["quuxite", "snarfle", "zorblat"]
        assert all(request.get("temperature") == 0 for _, request, _ in server.requests)
    ranks = [json.loads((tmp_path / "out" / f"prompts.{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["train"] == ranks[1]["train"]
    assert ranks[0]["test"] and ranks[0]["test"][0] == ranks[1]["test"][0]
    # the prompts are the LLM's descriptions, as the cache keeps them
    described = json.loads(cache.read_text())
    assert sorted(described) == ["quuxite", "snarfle", "zorblat"]
    for name, prompts in zip(["zorblat", "quuxite"], ranks[0]["train"]):
        assert prompts[1:] == [compose_prompt(name, described[name][a]) for a in ("color", "shape", "texture")]
    assert ranks[0]["test"][0][1][1] == compose_prompt("snarfle", described["snarfle"]["color"])


def _look_up_on_rank(rank, init_file, vocabularies, base_url, cache, out_dir):
    """One process of test_processes_lacking_different_names_all_stop_and_stay_in_step: looks up
    each vocabulary in its own descriptions file, then asks the LLM."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))  # a process left waiting fails the test
    ask = functools.partial(_ask_llm, model="test-model", base_url=base_url, cache=cache)
    builder = PromptBuilder(["a photo of a {}"], descriptions=os.path.join(out_dir, f"described.{rank}.json"), generate=ask)
    results = []
    for names in vocabularies:
        try:
            results.append(sorted(builder.lookup(names)))
        except RuntimeError as e:
            results.append(str(e))
    dist.destroy_process_group()
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
        json.dump(results, f)


def test_processes_lacking_different_names_all_stop_and_stay_in_step(tmp_path):
    # the processes read different descriptions files: only process 1 describes "quuxite"
    for rank, names in enumerate([["plinth"], ["plinth", "quuxite"]]):
        (tmp_path / f"described.{rank}.json").write_text(json.dumps({n: fake_entry(n) for n in names}))
    vocabularies = [["zorblat"], ["plinth"], ["quuxite"], ["zorblat", "plinth"]]
    with ChatServer() as server:
        torch.multiprocessing.spawn(
            _look_up_on_rank, nprocs=2, join=True,
            args=(str(tmp_path / "init"), vocabularies, server.base_url, str(tmp_path / "cache.json"), str(tmp_path)),
        )
        assert server.asked() == ["zorblat"]  # once, by one process; then from its cache
    for rank in (0, 1):
        results = json.loads((tmp_path / f"{rank}.json").read_text())
        assert results[0] == ["zorblat"] and results[1] == ["plinth"] and results[3] == ["plinth", "zorblat"]
        # both stop with the same message, none waits for the other
        assert "the processes lack descriptions for different classes (process 0: ['quuxite'], process 1: [])" in results[2]
