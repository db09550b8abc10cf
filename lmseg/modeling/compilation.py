"""torch.compile of the per-class head at inference (TEST.COMPILE).

It does not change what is computed: compiling fuses the many small kernels of the per-class head
into fewer ones (less launch overhead on a GPU).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

logger = logging.getLogger(__name__)


_COMPILER_MODULES = ("torch._dynamo", "torch._inductor", "torch._functorch", "torch._subclasses")


def is_compilation_failure(err: BaseException) -> bool:
    """Whether ``err`` comes from torch.compile's machinery (dynamo, inductor, a missing C compiler
    or an unsupported Python) rather than from the computation itself. Out-of-memory errors and the
    function's own errors (a shape mismatch, a RuntimeError of an operator) are not."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return False
    module = type(err).__module__ or ""
    if module.startswith(_COMPILER_MODULES):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("torch.compile is not supported" in text or "Dynamo is not supported" in text)


class CompiledOrEager:
    """``fn`` compiled with ``torch.compile`` on first use, or ``fn`` itself where compiling is not
    possible (no compiler, an unsupported platform, a failed compilation): a warning says why, once,
    and the model keeps running eagerly with the same results. Any other error (out of memory, a
    shape error of the function itself) is raised as it is, see :func:`is_compilation_failure`."""

    def __init__(self, fn: Callable, name: str):
        self.fn = fn
        self.name = name
        self._compiled: Optional[Callable] = None
        self._failed = False

    def __call__(self, *args):
        if self._failed:
            return self.fn(*args)
        if self._compiled is None:
            try:
                self._compiled = torch.compile(self.fn)
            except Exception as err:  # torch.compile itself refuses: unsupported here
                return self._fall_back(err, args)
        try:
            return self._compiled(*args)
        except Exception as err:
            if not is_compilation_failure(err):
                raise
            return self._fall_back(err, args)

    def _fall_back(self, err: Exception, args):
        self._failed = True
        logger.warning(
            "TEST.COMPILE: torch.compile of %s is not available here (%s: %s); running it "
            "without compiling", self.name, type(err).__name__, str(err).splitlines()[0] if str(err) else ""
        )
        return self.fn(*args)
