#!/usr/bin/env python
"""Strip a training checkpoint for release: keep the model weights, drop optimizer, scheduler and
iteration state.

    python tools/strip_checkpoint.py output/lmseg_vitl/model_final.pth lmseg_vitl.pth
"""
import argparse
import os

import torch

from lmseg.io import atomic_save


def strip_checkpoint(src: str, dst: str) -> dict:
    """Write ``dst`` holding only ``{"model": weights}`` of ``src``; returns what was dropped."""
    if not os.path.isfile(src):
        raise FileNotFoundError(f"{src}: no such checkpoint")
    data = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError(f"{src} is not a detectron2 checkpoint (a dict with a 'model' state dict)")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("write the stripped checkpoint to another file than its source")
    atomic_save({"model": data["model"]}, dst)
    return {k: v for k, v in data.items() if k != "model"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="checkpoint written by train_net.py")
    parser.add_argument("output", help="where to write the stripped checkpoint")
    args = parser.parse_args(argv)
    try:
        dropped = strip_checkpoint(args.input, args.output)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    size = os.path.getsize(args.output) / 2**20
    print(f"wrote {args.output} ({size:.1f} MiB); dropped: {', '.join(sorted(dropped)) or 'nothing'}")


if __name__ == "__main__":
    main()
