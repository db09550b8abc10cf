"""Files written atomically: under a temporary name, then renamed into place."""
from __future__ import annotations

import os
from typing import BinaryIO, Callable

import torch


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file and rename it to ``path`` once complete.

    A process killed midway leaves ``path`` as it was (and no temporary file behind, where the
    interruption is an exception).
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj, path: str) -> None:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    atomic_write(path, lambda f: torch.save(obj, f))
