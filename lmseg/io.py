"""Files written atomically (under a temporary name, then renamed into place), and a lock for the
files that several processes update."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import BinaryIO, Callable, Iterator

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


@contextmanager
def file_lock(path: str) -> Iterator[None]:
    """Hold an exclusive lock for ``path`` during the block, taking turns with every process and
    thread that locks the same path.

    The lock is ``fcntl.flock`` on the side file ``path + ".lock"``, created when missing and left in
    place (removing it could let two writers hold different locks); ``path`` itself may be replaced
    freely meanwhile, e.g. by :func:`atomic_write`.
    """
    import fcntl  # POSIX only, so imported where it is needed

    with open(f"{path}.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
