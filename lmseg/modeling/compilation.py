"""torch.compile of the per-class head at inference (TEST.COMPILE).

It does not change what is computed: compiling fuses the many small kernels of the per-class head
into fewer ones (less launch overhead on a GPU).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

logger = logging.getLogger(__name__)


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
