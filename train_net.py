#!/usr/bin/env python
"""Train and evaluate LMSeg with detectron2.

    python train_net.py --config-file configs/vitl.yaml --num-gpus 4
    python train_net.py --config-file configs/vitl.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file configs/vitl.yaml --num-gpus 4 --resume
    torchrun --nproc_per_node 4 train_net.py --config-file configs/vitl.yaml

Trailing KEY VALUE pairs override the config. Without a GPU, --num-gpus N runs N CPU processes.
Several machines take one command each (--num-machines M --machine-rank R --dist-url
tcp://HOST:PORT), or torchrun (lmseg/launch.py; GETTING_STARTED.md, "Several machines").
--eval-only needs MODEL.WEIGHTS (or --resume with a checkpoint in OUTPUT_DIR); --allow-untrained
scores a randomly initialised model on purpose. A MODEL.WEIGHTS file that does not exist stops the
run before anything is built (exit status 2).
"""
import logging
import os
import sys

from detectron2.engine import default_argument_parser

from lmseg.checkpoint import MissingWeightsError, check_weights_file, load_weights
from lmseg.config import get_lmseg_cfg
from lmseg.engine import Trainer, check_datasets, setup
from lmseg.launch import LaunchError, check_launch_arguments, launch

UNTRAINED = "UNTRAINED MODEL (--allow-untrained, no MODEL.WEIGHTS): these results are of random weights"


def check_arguments(args) -> None:
    """Stop with a message (exit status 2) before anything is built when the run cannot give what
    was asked: a missing weights file, an evaluation with no weights to evaluate, or torchrun's
    processes asked to start processes of their own."""
    try:
        check_launch_arguments(args)
    except LaunchError as err:
        sys.exit(_usage_error(str(err)))
    cfg = get_lmseg_cfg(args.config_file, args.opts)
    try:
        check_weights_file(cfg.MODEL.WEIGHTS)
    except MissingWeightsError as err:
        sys.exit(_usage_error(str(err)))
    if args.eval_only and not has_weights(cfg, args) and not args.allow_untrained:
        sys.exit(_usage_error(
            "--eval-only without MODEL.WEIGHTS would score a randomly initialised model. Give the "
            "weights (... --eval-only MODEL.WEIGHTS model.pth), or add --allow-untrained to score an "
            "untrained model on purpose."
        ))


def has_weights(cfg, args) -> bool:
    """Whether the run starts from trained weights: MODEL.WEIGHTS, or --resume onto a checkpoint
    of OUTPUT_DIR."""
    resumable = args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    return bool(cfg.MODEL.WEIGHTS) or resumable


def _usage_error(message: str) -> int:
    print(f"train_net.py: error: {message}", file=sys.stderr)
    return 2


def main(args):
    cfg = setup(args)
    if args.eval_only:
        check_datasets(cfg)  # as training does: a test set that cannot be used stops the run before the model is built
        model = Trainer.build_model(cfg)
        untrained = not has_weights(cfg, args)
        if untrained:
            logging.getLogger("lmseg").warning(UNTRAINED)
        load_weights(model, cfg.MODEL.WEIGHTS, save_dir=cfg.OUTPUT_DIR, resume=args.resume)
        results = Trainer.test(cfg, model, tag=" [untrained]" if untrained else "")
        if untrained:
            logging.getLogger("lmseg").warning(UNTRAINED)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument("--allow-untrained", action="store_true",
                        help="with --eval-only and no MODEL.WEIGHTS, score the randomly initialised model")
    args = parser.parse_args()
    check_arguments(args)
    try:
        launch(main, args)
    except LaunchError as err:  # a torchrun process that cannot join its run (no GPU of its own)
        sys.exit(_usage_error(str(err)))
