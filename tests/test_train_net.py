"""End-to-end training and evaluation through train_net.py and the engine, on the CPU."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.engine import HookBase, default_argument_parser

from lmseg.engine import Trainer, setup

from tests.helpers.model_helpers import REPO, TINY_CONFIG
from tests.helpers.synthetic_datasets import write_learnable_folder_dataset

# Every test here trains or runs a command in a subprocess: left out of `make test-fast`.
pytestmark = pytest.mark.slow


def _run(args, cwd=REPO, timeout=600):
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return proc


def _train_net(*args, timeout=600):
    proc = _run(["train_net.py", "--config-file", TINY_CONFIG, *args], timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def _miou(log: str) -> float:
    rows = re.findall(r"copypaste: ([\d.]+),([\d.]+),([\d.]+),([\d.]+)", log)
    assert rows, log[-3000:]
    return float(rows[-1][0])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    train = write_learnable_folder_dataset(str(root / "train"), num_images=32, size=64, num_classes=3, seed=0)
    test = write_learnable_folder_dataset(str(root / "test"), num_images=8, size=64, num_classes=3, seed=1)
    return f"sem_seg_folder:{train}", f"sem_seg_folder:{test}"


def _data_opts(folders):
    train, test = folders
    return ["DATASETS.TRAIN", f'("{train}",)', "DATASETS.TEST", f'("{test}",)', "INPUT.MIN_SIZE_TEST", "64"]


def _metrics(out_dir):
    return [json.loads(line) for line in Path(out_dir, "metrics.json").read_text().splitlines()]


def test_train_resume_and_eval_only(folders, tmp_path):
    out = tmp_path / "run"
    common = [*_data_opts(folders), "OUTPUT_DIR", str(out), "SOLVER.CHECKPOINT_PERIOD", "10", "TEST.EVAL_PERIOD", "0"]
    log = _train_net(*common, "SOLVER.MAX_ITER", "30")
    for name in ("model_0000009.pth", "model_0000019.pth", "model_final.pth", "last_checkpoint", "metrics.json"):
        assert (out / name).is_file(), name
    assert "Starting training from iteration 0" in log
    first = _metrics(out)
    assert any(m.get("iteration") == 19 and "total_loss" in m and "fusion_weight" in m for m in first)

    # --resume with a longer schedule continues at iteration 30, not from zero
    log = _train_net("--resume", *common, "SOLVER.MAX_ITER", "40")
    assert "Starting training from iteration 30" in log
    iterations = [m["iteration"] for m in _metrics(out) if "total_loss" in m]
    assert iterations[-1] == 39 and len(_metrics(out)) > len(first)

    train, test = folders
    log = _train_net("--eval-only", *_data_opts(folders), "OUTPUT_DIR", str(tmp_path / "eval"),
                     "DATASETS.TEST", f'("{test}", "{train}")', "MODEL.WEIGHTS", str(out / "model_final.pth"))
    assert 0.0 <= _miou(log) <= 100.0
    assert log.count("copypaste: mIoU,fwIoU,mACC,pACC") == 2
    # with several test sets, each result row is labelled with its dataset, in order
    assert log.index(f"Evaluation results for {test} in csv format") < log.index(
        f"Evaluation results for {train} in csv format")


def test_tiny_model_learns_colour_and_texture(folders, tmp_path):
    log = _train_net(*_data_opts(folders), "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "400",
                     "SOLVER.IMS_PER_BATCH", "4", "SOLVER.BASE_LR", "0.004", "TEST.EVAL_PERIOD", "0",
                     "SOLVER.CHECKPOINT_PERIOD", "10000", "SEED", "0")
    # chance is about 20 mIoU for three classes; trained, the tiny model reaches about 75
    assert _miou(log) > 55.0


def test_two_cpu_processes_train_and_evaluate(folders, tmp_path):
    log = _train_net("--num-gpus", "2", *_data_opts(folders), "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "6",
                     "SOLVER.IMS_PER_BATCH", "4", "TEST.EVAL_PERIOD", "6", "SOLVER.CHECKPOINT_PERIOD", "100")
    assert "world size: 2" in log or "Rank of current process: 0. World size: 2" in log
    assert 0.0 <= _miou(log) <= 100.0
    assert (tmp_path / "model_final.pth").is_file()


def _cfg(folders, tmp_path, *opts):
    args = default_argument_parser().parse_args(
        ["--config-file", TINY_CONFIG, *_data_opts(folders), "OUTPUT_DIR", str(tmp_path), *opts]
    )
    return setup(args)


class _Recorder(HookBase):
    def __init__(self):
        self.steps = []

    def after_step(self):
        model = self.trainer.model
        self.steps.append((self.trainer.iter, model.vocabulary, self.trainer.storage.history("total_loss").latest()))


def test_evaluation_switches_vocabulary_and_training_continues(folders, tmp_path):
    train_name, _ = folders
    other = write_learnable_folder_dataset(str(tmp_path / "other"), num_images=4, size=64, num_classes=4, seed=3)
    cfg = _cfg(folders, tmp_path, "SOLVER.MAX_ITER", "10", "TEST.EVAL_PERIOD", "5",
               "DATASETS.TEST", f'("sem_seg_folder:{other}",)')
    trainer = Trainer(cfg)
    recorder = _Recorder()
    trainer.register_hooks([recorder])
    trainer.resume_or_load(resume=False)
    train_vocab = trainer.model.vocabulary
    assert train_vocab == ("red stripes", "green dots", "blue plain")
    trainer.train()
    # every iteration, before and after the evaluation at iteration 5, trained on the training vocabulary
    assert [s[0] for s in recorder.steps] == list(range(10))
    assert all(s[1] == train_vocab for s in recorder.steps)
    assert all(torch.isfinite(torch.tensor(s[2])) for s in recorder.steps)
    # and the evaluation used the test set's four classes
    results = trainer.test(cfg, trainer.model)
    assert "IoU-yellow checker" in results["sem_seg"]
    assert trainer.model.vocabulary == train_vocab


def test_non_finite_loss_stops_with_the_iteration(folders, tmp_path, monkeypatch):
    cfg = _cfg(folders, tmp_path, "SOLVER.MAX_ITER", "10", "TEST.EVAL_PERIOD", "0")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    forward = model.forward

    def poisoned(batch):
        losses = forward(batch)
        if trainer.iter == 3:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses

    monkeypatch.setattr(model, "forward", poisoned)
    with pytest.raises(FloatingPointError, match="not finite at iteration 3"):
        trainer.train()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_checkpoint_killed_while_saving_resumes_from_the_previous_one(folders, tmp_path, monkeypatch):
    cfg = _cfg(folders, tmp_path, "SOLVER.MAX_ITER", "10", "SOLVER.CHECKPOINT_PERIOD", "5", "TEST.EVAL_PERIOD", "0")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    real_save = torch.save
    calls = []

    def dying_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint: write part of it, then die
            f.write(b"partial")
            raise KeyboardInterrupt("killed while saving")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000004.pth"
    assert not (tmp_path / "model_0000009.pth").exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 5


def test_bfloat16_amp_trains_on_cpu_and_float16_is_refused(folders, tmp_path):
    cfg = _cfg(folders, tmp_path, "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "0",
               "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "bfloat16")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.storage.history("total_loss").latest()))
    cfg = _cfg(folders, tmp_path / "fp16", "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "float16")
    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION=float16 needs a GPU; on a CPU use bfloat16"):
        Trainer(cfg)


def test_optimizer_groups_use_the_multipliers_and_spare_norms(folders, tmp_path):
    cfg = _cfg(folders, tmp_path, "SOLVER.BASE_LR", "0.1", "SOLVER.CLIP_MULTIPLIER", "0.5",
               "SOLVER.SAM_MULTIPLIER", "0.25", "SOLVER.WEIGHT_DECAY", "0.3")
    trainer = Trainer(cfg)
    model, opt = trainer.model, trainer.optimizer
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert set(group_of) == {id(p) for p in named.values() if p.requires_grad}
    q = named["clip.model.visual.transformer.resblocks.0.attn.q_proj_weight"]
    # "initial_lr": the learning rate before the warm-up and schedule scale it
    assert group_of[id(q)]["initial_lr"] == pytest.approx(0.05) and group_of[id(q)]["weight_decay"] == 0.3
    qkv = named["sam.encoder.blocks.0.attn.qkv.weight"]
    assert group_of[id(qkv)]["initial_lr"] == pytest.approx(0.025)
    norm = named["aggregator.layers.0.spatial.block1.norm1.weight"]
    assert group_of[id(norm)]["initial_lr"] == pytest.approx(0.1) and group_of[id(norm)]["weight_decay"] == 0.0
    pad = named["aggregator.layers.0.classwise.padding_tokens"]
    assert group_of[id(pad)]["weight_decay"] == 0.0
    assert group_of[id(named["fusion.weight_logit"])]["weight_decay"] == 0.0


def test_strip_checkpoint_keeps_exactly_the_weights(folders, tmp_path):
    cfg = _cfg(folders, tmp_path, "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "0")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    full = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    assert {"model", "trainer", "iteration"} <= set(full)  # optimizer and scheduler state in "trainer"
    proc = _run(["tools/strip_checkpoint.py", str(tmp_path / "model_final.pth"), str(tmp_path / "release.pth")])
    assert proc.returncode == 0, proc.stderr
    assert "dropped: iteration, trainer" in proc.stdout
    stripped = torch.load(tmp_path / "release.pth", map_location="cpu", weights_only=True)
    assert set(stripped) == {"model"}
    assert stripped["model"].keys() == full["model"].keys()
    assert all(torch.equal(stripped["model"][k], full["model"][k]) for k in full["model"])
    proc = _run(["tools/strip_checkpoint.py", str(tmp_path / "nothing.pth"), str(tmp_path / "x.pth")])
    assert proc.returncode == 2 and "nothing.pth: no such checkpoint" in proc.stderr
