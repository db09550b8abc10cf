"""Test-time augmentation (TEST.AUG): scores averaged over test scales and horizontal flips.

A scale of ``TEST.AUG.MIN_SIZES`` is a short side, ``INPUT.MIN_SIZE_TEST`` being the unscaled one.
The model resizes its input to the encoders' fixed sizes, so a scale can only reach it through
sliding-window inference: at scale ``s`` the windows are cut from a grid of side
``TEST.SLIDING_GRID * s / INPUT.MIN_SIZE_TEST`` (capped by ``TEST.AUG.MAX_SIZE``, never smaller
than one window), so that CLIP and SAM see the objects larger or smaller. The whole-image path
would give every scale the same input, and refuses scales other than ``INPUT.MIN_SIZE_TEST``.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from torch import nn


def check_test_aug(cfg) -> None:
    """Refuse, before anything is built, TEST.AUG scales the model cannot honour."""
    if not cfg.TEST.AUG.ENABLED:
        return
    sizes = list(cfg.TEST.AUG.MIN_SIZES)
    if not sizes or any(int(s) <= 0 for s in sizes):
        raise ValueError(f"TEST.AUG.MIN_SIZES={tuple(sizes)}: give one or more positive short sides, e.g. (512, 640, 768)")
    if not cfg.TEST.SLIDING_WINDOW and set(sizes) != {cfg.INPUT.MIN_SIZE_TEST}:
        raise ValueError(
            f"TEST.AUG.MIN_SIZES={tuple(sizes)} with TEST.SLIDING_WINDOW False: whole-image inference "
            "resizes every image to CLIP's and SAM's input sizes, so scales cannot change what the "
            "model sees. Set TEST.SLIDING_WINDOW True (the scales then scale the sliding grid), or "
            f"TEST.AUG.MIN_SIZES ({cfg.INPUT.MIN_SIZE_TEST},) for the flip alone"
        )
    if cfg.TEST.AUG.FLIP and not cfg.TEST.SLIDING_WINDOW and cfg.TEST.KEEP_PADDING and cfg.INPUT.SIZE_DIVISIBILITY > 0:
        raise ValueError(
            "TEST.AUG.FLIP with TEST.KEEP_PADDING True and INPUT.SIZE_DIVISIBILITY > 0 on the whole-image "
            "path: the padded strip kept at the right would land on the left of a flipped pass, so the "
            "flipped scores cannot be undone. Set TEST.AUG.FLIP False, TEST.KEEP_PADDING False, or "
            "TEST.SLIDING_WINDOW True"
        )


class SemSegTTA(nn.Module):
    """Wrap an LMSeg model so that each input is run at every scale of TEST.AUG.MIN_SIZES, and
    flipped too when TEST.AUG.FLIP; the ``sem_seg`` scores are averaged (flipped ones flipped back)."""

    def __init__(self, cfg, model: nn.Module):
        super().__init__()
        check_test_aug(cfg)
        self.model = model
        self.flip = cfg.TEST.AUG.FLIP
        self.grids: List[Optional[int]] = [None]
        if cfg.TEST.SLIDING_WINDOW:
            base, window = cfg.TEST.SLIDING_GRID, cfg.TEST.SLIDING_WINDOW_SIZE
            self.grids = [
                max(window, min(round(base * s / cfg.INPUT.MIN_SIZE_TEST), cfg.TEST.AUG.MAX_SIZE))
                for s in cfg.TEST.AUG.MIN_SIZES
            ]

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        flips = (False, True) if self.flip else (False,)
        total = None
        for grid in self.grids:
            for flip in flips:
                inputs = []
                for item in batched_inputs:
                    view = {k: v for k, v in item.items() if k != "kept_classes_only"}  # averaged densely
                    view["image"] = item["image"].flip(-1) if flip else item["image"]
                    if grid is not None:
                        view["sliding_grid"] = grid
                    inputs.append(view)
                scores = [o["sem_seg"] for o in self.model(inputs)]
                if flip:
                    scores = [s.flip(-1) for s in scores]
                total = scores if total is None else [t + s for t, s in zip(total, scores)]
        count = len(self.grids) * len(flips)
        return [{"sem_seg": t / count} for t in total]
