"""Train the tiny model a few iterations on 2 CPU processes (gloo), evaluating at the end of
training, then evaluate once more; every process records the prompts it used.

    python -m tests.helpers.prompts_on_ranks TRAIN_DATASET TEST_DATASET OUTPUT_DIR [KEY VALUE ...]

Each process writes OUTPUT_DIR/prompts.<rank>.json: the world size, the prompts of the training
vocabulary (T lists of P texts) and those the model used on the test set's images. The trailing
KEY VALUE pairs override the config (the LLM's keys, MODEL.PROMPTS.TEXTS). Used by
tests/test_distributed.py.
"""
import json
import os
import sys

import torch
from detectron2.engine import launch
from detectron2.utils import comm

from lmseg.config import get_config_file, get_lmseg_cfg
from lmseg.engine import Trainer, unwrap

from tests.helpers.model_helpers import PromptRecorder


def main(train: str, test: str, out_dir: str, opts: list) -> None:
    torch.set_num_threads(1)  # two processes share the CPU
    cfg = get_lmseg_cfg(get_config_file("tiny.yaml"), [
        "DATASETS.TRAIN", f'("{train}",)', "DATASETS.TEST", f'("{test}",)', "OUTPUT_DIR", out_dir,
        "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1000",
        "TEST.EVAL_PERIOD", "2", "INPUT.MIN_SIZE_TRAIN", "(48,)", "INPUT.CROP.SIZE", "(48, 48)",
        "INPUT.MIN_SIZE_TEST", "48", *opts,
    ])
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.train()  # builds the model (training vocabulary) and evaluates at the last iteration
    model = unwrap(trainer.model)
    recorder = PromptRecorder(model)
    Trainer.test(cfg, trainer.model, [recorder])
    with open(os.path.join(out_dir, f"prompts.{comm.get_rank()}.json"), "w") as f:
        json.dump({
            "world_size": comm.get_world_size(),
            "train": [list(p) for p in model.vocab.prompts],
            "test": recorder.seen,
        }, f)


if __name__ == "__main__":
    train_dataset, test_dataset, output_dir = sys.argv[1:4]
    launch(main, 2, dist_url="auto", args=(train_dataset, test_dataset, output_dir, sys.argv[4:]))
