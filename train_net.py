#!/usr/bin/env python
"""Train and evaluate LMSeg with detectron2.

    python train_net.py --config-file configs/vitl.yaml --num-gpus 4
    python train_net.py --config-file configs/vitl.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file configs/vitl.yaml --num-gpus 4 --resume

Trailing KEY VALUE pairs override the config. Without a GPU, --num-gpus N runs N CPU processes.
"""
from detectron2.engine import default_argument_parser, launch

from lmseg.checkpoint import load_weights
from lmseg.engine import Trainer, setup


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        load_weights(model, cfg.MODEL.WEIGHTS, save_dir=cfg.OUTPUT_DIR, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
