"""Activation checkpointing in training (MODEL.LMSEG.ACTIVATION_CHECKPOINTING).

It does not change what is computed: a checkpointed part's activations are recomputed in the
backward pass instead of stored (less memory, one more forward of that part).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.checkpoint import checkpoint

# Parts of the model whose activations MODEL.LMSEG.ACTIVATION_CHECKPOINTING may recompute.
CHECKPOINT_PARTS = ("clip", "sam", "aggregator", "decoder")


def check_checkpoint_parts(parts: Sequence[str]) -> None:
    unknown = [p for p in parts if p not in CHECKPOINT_PARTS]
    if unknown:
        raise ValueError(
            f"MODEL.LMSEG.ACTIVATION_CHECKPOINTING={list(parts)}: {unknown} not among {list(CHECKPOINT_PARTS)}"
        )


def run_checkpointed(enabled: bool, fn: Callable, *args):
    """``fn(*args)``; with ``enabled`` and gradients on, its activations are not stored but
    recomputed in the backward pass (gradients are identical)."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
