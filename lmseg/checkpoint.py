"""Checkpoints: atomic saving, and loading of LMSeg checkpoints."""
from __future__ import annotations

import os

import torch
from detectron2.checkpoint import DetectionCheckpointer


class LMSegCheckpointer(DetectionCheckpointer):
    """A DetectionCheckpointer whose files are never left half-written.

    Each file is written under a temporary name and renamed into place, and ``last_checkpoint``
    is updated the same way only afterwards: a run killed while saving leaves the previous
    checkpoint as the one ``--resume`` loads.
    """

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", path)
        _atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(os.path.basename(path))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename.encode()))


def _atomic_write(path: str, write) -> None:
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


def load_weights(model: torch.nn.Module, path: str, *, save_dir: str = "", resume: bool = False) -> None:
    """Load ``path`` (MODEL.WEIGHTS) into ``model``; with ``resume``, the last checkpoint of
    ``save_dir`` instead when there is one."""
    LMSegCheckpointer(model, save_dir).resume_or_load(path, resume=resume)
