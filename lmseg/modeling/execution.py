"""How parts of the model execute: activation checkpointing in training, torch.compile at inference.

Neither changes what is computed: checkpointing recomputes a part's activations in the backward
pass instead of storing them (less memory, one more forward of that part); compiling fuses the
many small kernels of the per-class head into fewer ones (less launch overhead on a GPU).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import torch
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

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


class CompiledOrEager:
    """``fn`` compiled with ``torch.compile`` on first use, or ``fn`` itself where compiling is not
    possible (no compiler, an unsupported platform, a failed compilation): a warning says why, once,
    and the model keeps running eagerly with the same results."""

    def __init__(self, fn: Callable, name: str):
        self.fn = fn
        self.name = name
        self._compiled: Optional[Callable] = None
        self._failed = False

    def __call__(self, *args):
        if not self._failed:
            try:
                if self._compiled is None:
                    self._compiled = torch.compile(self.fn)
                return self._compiled(*args)
            except Exception as err:  # compilers fail in many ways; the eager function is always right
                self._failed = True
                logger.warning(
                    "TEST.COMPILE: torch.compile of %s is not available here (%s: %s); running it "
                    "without compiling", self.name, type(err).__name__, str(err).splitlines()[0] if str(err) else ""
                )
        return self.fn(*args)
