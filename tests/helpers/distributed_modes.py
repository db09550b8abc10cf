"""Train the tiny model a few iterations on 2 CPU processes (gloo) in each given configuration.

    python -m tests.helpers.distributed_modes TRAIN_DATASET OUTPUT_DIR NAME=KEY,VALUE,KEY,VALUE ...

One launch runs every configuration in turn, each with its own Trainer (a fresh model, optimizer
and DistributedDataParallel wrapper). OUTPUT_DIR/results.json gets, per configuration and process,
the iterations run, the last loss (main process) and a checksum of the weights (equal on both processes
when the processes stayed in step). Used by tests/test_distributed.py.
"""
import json
import os
import sys

import torch
from detectron2.engine import launch
from detectron2.utils import comm

from lmseg.config import get_config_file, get_lmseg_cfg
from lmseg.engine import Trainer, unwrap

TINY_CONFIG = get_config_file("tiny.yaml")


def main(train: str, out_dir: str, runs: dict) -> None:
    torch.set_num_threads(1)  # two processes share the CPU
    results = {}
    for name, opts in runs.items():
        cfg = get_lmseg_cfg(TINY_CONFIG, [
            "DATASETS.TRAIN", f'("{train}",)', "DATASETS.TEST", "()", "OUTPUT_DIR", os.path.join(out_dir, name),
            "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1000",
            "TEST.EVAL_PERIOD", "0", "INPUT.MIN_SIZE_TRAIN", "(48,)", "INPUT.CROP.SIZE", "(48, 48)", *opts,
        ])
        cfg.freeze()
        trainer = Trainer(cfg)
        trainer.train()
        weights = unwrap(trainer.model).parameters()
        results[name] = {
            "iter": trainer.iter,
            # the losses of all processes, averaged, are recorded by the main process only
            "loss": trainer.storage.history("total_loss").latest() if comm.is_main_process() else None,
            "checksum": sum(p.detach().double().abs().sum().item() for p in weights),
        }
    gathered = comm.all_gather(results)
    if comm.is_main_process():
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(gathered, f)


if __name__ == "__main__":
    train_dataset, output_dir = sys.argv[1:3]
    configurations = {}
    for arg in sys.argv[3:]:
        name, _, opts = arg.partition("=")
        configurations[name] = opts.split(",") if opts else []
    launch(main, 2, dist_url="auto", args=(train_dataset, output_dir, configurations))
