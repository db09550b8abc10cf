#!/usr/bin/env python
"""Convert a CAT-Seg checkpoint to LMSeg's tensor names, or (--to-catseg) back.

    python tools/convert_catseg.py model_base.pth catseg_vitb.pth
    python tools/convert_catseg.py --to-catseg output/catseg_vitb/model_final.pth model_catseg.pth

Every tensor is mapped and none is changed, so converting there and back gives the same bits; the
Swin blocks' shifted-window masks, which LMSeg computes, are checked and dropped one way and
computed the other. Missing or unknown tensors are an error that lists them. Only the weights are
written ({"model": state dict}): optimizer and scheduler state mean nothing in the other codebase.

LMSeg also loads CAT-Seg's checkpoints as they are (MODEL.WEIGHTS); converting ahead is for
keeping LMSeg-format files, and --to-catseg for running LMSeg-trained CAT-Seg models in CAT-Seg.
"""
import argparse
import os

import torch

from lmseg.checkpoint.catseg import (
    CATSEG_GRID,
    CATSEG_WINDOW,
    CatSegFormatError,
    convert_catseg_to_lmseg,
    convert_lmseg_to_catseg,
    is_catseg_state,
)
from lmseg.io import atomic_save


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="IN.pth", help="checkpoint to convert (a state dict, or a dict with 'model')")
    parser.add_argument("output", metavar="OUT.pth", help="where to write the converted checkpoint")
    parser.add_argument(
        "--to-catseg", action="store_true",
        help="convert an LMSeg checkpoint in CAT-Seg's setting (SAM off, one prompt per class) to CAT-Seg's names",
    )
    parser.add_argument(
        "--grid", type=int, default=CATSEG_GRID,
        help="with --to-catseg: the feature grid the Swin masks are made for (CLIP input size / patch size)",
    )
    parser.add_argument(
        "--window", type=int, default=CATSEG_WINDOW,
        help="with --to-catseg: the Swin window (MODEL.AGGREGATOR.WINDOW_SIZE)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.pth if it exists")
    return parser


def _read_state(parser: argparse.ArgumentParser, path: str) -> dict:
    if not os.path.isfile(path):
        parser.error(f"{path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling fails in many ways
        parser.error(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})")
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        parser.error(f"{path}: holds no state dict (a mapping of names to tensors, alone or under 'model')")
    return state


def main(argv=None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if os.path.exists(args.output) and not args.overwrite:
        parser.error(f"{args.output} exists; pass --overwrite to replace it")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        parser.error(f"{out_dir}: no such directory for {args.output}")
    state = _read_state(parser, args.input)

    if args.to_catseg:
        if is_catseg_state(state):
            parser.error(f"{args.input} already uses CAT-Seg's names; leave out --to-catseg to convert it to LMSeg's")
        what = "LMSeg -> CAT-Seg"
    else:
        if not is_catseg_state(state):
            hint = " (it looks like an LMSeg checkpoint: --to-catseg converts those)" if any(
                k.startswith("clip.model.") for k in state) else ""
            parser.error(
                f"{args.input} is not a CAT-Seg checkpoint: no tensor is named "
                f"sem_seg_head.predictor.clip_model.* or sem_seg_head.predictor.transformer.*{hint}"
            )
        what = "CAT-Seg -> LMSeg"
    try:
        if args.to_catseg:
            converted = convert_lmseg_to_catseg(state, grid=args.grid, window=args.window)
        else:
            converted = convert_catseg_to_lmseg(state)
    except CatSegFormatError as err:
        parser.error(f"{args.input}: {err}")
    atomic_save({"model": converted}, args.output)
    print(f"{what}: {len(state)} tensors in {args.input}, {len(converted)} written to {args.output}")


if __name__ == "__main__":
    main()
