#!/usr/bin/env python
"""Print an LMSeg config's parameter counts per part, trainable and frozen.

No pretrained weights are loaded (CLIP and SAM are built randomly), so it runs anywhere:

    python tools/model_summary.py --config-file configs/vitl.yaml [KEY VALUE ...]
"""
import argparse
import logging

from detectron2.modeling import build_model

from lmseg.config import get_lmseg_cfg
from lmseg.modeling import format_parameter_summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to an LMSeg config")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    cfg = get_lmseg_cfg(args.config_file, args.opts)
    cfg.MODEL.CLIP.PRETRAINED = ""
    cfg.MODEL.SAM.CHECKPOINT = ""
    cfg.MODEL.DEVICE = "cpu"
    logging.getLogger("root").setLevel(logging.WARNING)  # open_clip's progress messages
    model = build_model(cfg)
    print(f"{args.config_file}: CLIP {cfg.MODEL.CLIP.NAME} (fine-tuning: {cfg.MODEL.CLIP.FINETUNE}), "
          + (f"SAM {cfg.MODEL.SAM.TYPE} (fine-tuning: {cfg.MODEL.SAM.FINETUNE}), " if cfg.MODEL.SAM.ENABLED else "no SAM, ")
          + f"fusion {cfg.MODEL.FUSION.MODE}, {model.num_prompts} prompt(s) per class\n")
    print(format_parameter_summary(model))


if __name__ == "__main__":
    main()
