"""Checkpoints: atomic saving, and loading of LMSeg's and CAT-Seg's checkpoints."""
from __future__ import annotations

import logging
import os
import re
from typing import FrozenSet, Mapping

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from .catseg import CLIP_PREFIX, CatSegFormatError, convert_catseg_to_lmseg, is_catseg_state
from ..io import atomic_save, atomic_write

logger = logging.getLogger(__name__)

# Parts of LMSeg that CAT-Seg lacks: loading a CAT-Seg checkpoint leaves them as the model was built.
_OWN_PARTS = ("sam.", "fusion.")
_PART_NAMES = {
    "clip": "CLIP image and text towers",
    "cost_embed": "cost embedding",
    "aggregator": "aggregator",
    "decoder": "decoder",
    "sam": "SAM image encoder",
    "fusion": "fusion",
}
_COST_KERNEL = "cost_embed.conv.weight"
_APPEARANCE_KERNEL = "aggregator.appearance_guidance.0.weight"


class LMSegCheckpointer(DetectionCheckpointer):
    """A DetectionCheckpointer whose files are never left half-written, and which also loads
    CAT-Seg's checkpoints.

    Each file is written under a temporary name and renamed into place, and ``last_checkpoint``
    is updated the same way only afterwards: a run killed while saving leaves the previous
    checkpoint as the one ``--resume`` loads.

    A checkpoint whose tensors carry CAT-Seg's names (``sem_seg_head.predictor.clip_model.*``, ...)
    is converted to LMSeg's and loaded strictly by :func:`load_catseg_state`, instead of
    detectron2's lenient loading that only logs missing tensors.
    """

    def _load_model(self, checkpoint):
        state = checkpoint["model"]
        if not is_catseg_state(state):
            return super()._load_model(checkpoint)
        load_catseg_state(self.model, checkpoint.pop("model"))
        return None  # nothing left to report: the loading above is complete or raises

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", path)
        atomic_save(data, path)
        self.tag_last_checkpoint(os.path.basename(path))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))


def pretrained_parts_in(path: str) -> FrozenSet[str]:
    """Which pretrained encoders ("clip", "sam") the checkpoint file ``path`` already holds.

    Used before building a model, so that CLIP's and SAM's pretrained weights are only fetched when
    MODEL.WEIGHTS does not replace them anyway: evaluating or running the demo from a full LMSeg or
    CAT-Seg checkpoint then needs no network. The file is memory-mapped, not read; a path that is
    not a local file (a URL) or a format that cannot be inspected gives the empty set, so the
    pretrained weights load as they would without the check.
    """
    if not path or not os.path.isfile(path):
        return frozenset()
    try:
        data = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # legacy or pickled formats: fall back to loading the pretrained weights
        logger.debug("could not inspect %s without reading it (%s)", path, err)
        return frozenset()
    state = data.get("model", data) if isinstance(data, Mapping) else {}
    keys = [k for k in state if isinstance(k, str)] if isinstance(state, Mapping) else []
    parts = set()
    if any(k.startswith(("clip.", CLIP_PREFIX)) for k in keys):
        parts.add("clip")
    if any(k.startswith("sam.") for k in keys):
        parts.add("sam")
    return frozenset(parts)


class MissingWeightsError(FileNotFoundError):
    """MODEL.WEIGHTS names a file that does not exist (raised before any model is built)."""


def check_weights_file(path: str, key: str = "MODEL.WEIGHTS") -> None:
    """Raise :class:`MissingWeightsError` when ``path`` is a local file name that does not exist.

    Empty paths (no weights) and URLs (``http://``, ``https://``, ``detectron2://``, fetched when
    loaded) pass. Called before a model is built, so that a typo costs nothing.
    """
    if not path or re.match(r"[a-z0-9]+://", path):
        return
    if not os.path.isfile(os.path.expanduser(path)):
        raise MissingWeightsError(
            f"{key} {path}: no such file; give the path of an LMSeg or a CAT-Seg checkpoint (.pth)"
        )


def load_weights(model: torch.nn.Module, path: str, *, save_dir: str = "", resume: bool = False) -> None:
    """Load ``path`` (MODEL.WEIGHTS: an LMSeg or a CAT-Seg checkpoint) into ``model``; with
    ``resume``, the last checkpoint of ``save_dir`` instead when there is one."""
    LMSegCheckpointer(model, save_dir).resume_or_load(path, resume=resume)


def load_catseg_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a CAT-Seg state dict into an LMSeg model.

    Every tensor of the checkpoint must land on a tensor of the model with its shape, and every
    tensor of the model must come from the checkpoint, except:

    * the SAM encoder and the fusion, which CAT-Seg lacks, keep what the model was built with
      (SAM's pretrained MODEL.SAM.CHECKPOINT, the fusion's own initialisation);
    * with P > 1 prompts per class, CAT-Seg's one-prompt cost embedding kernel is divided by P and
      repeated over the P inputs (bias kept), so that P identical prompts give CAT-Seg's embedding;
    * with the weighted fusion, whose SAM projection starts at zero, the features start as
      ``w * F_clip``: the cost volume (a cosine) is blind to w, but the appearance guidance's
      convolution is not, so its kernel is divided by w (per input channel). The model then starts
      from CAT-Seg's outputs (to float rounding) and learns SAM's contribution from there.

    The log says which part came from where. Anything else that does not fit raises a
    :class:`~lmseg.checkpoint.catseg.CatSegFormatError` naming the tensors.
    """
    converted = convert_catseg_to_lmseg(state, grid=model.clip.grid_size, window=model.aggregator.window)
    target = model.state_dict()
    unknown = [k for k in converted if k not in target]
    missing = [k for k in target if k not in converted and not k.startswith(_OWN_PARTS)]
    if unknown or missing:
        lines = ["the CAT-Seg checkpoint does not fit this model (MODEL.CLIP.NAME? MODEL.AGGREGATOR.NUM_LAYERS?):"]
        if unknown:
            lines.append(f"tensors the model lacks ({len(unknown)}): {', '.join(unknown)}")
        if missing:
            lines.append(f"tensors the checkpoint lacks ({len(missing)}): {', '.join(missing)}")
        raise CatSegFormatError("\n".join(lines))

    prompts = None
    mismatched = []
    for name, value in converted.items():
        want = tuple(target[name].shape)
        if tuple(value.shape) == want:
            continue
        if name == _COST_KERNEL and value.shape[1] == 1 and value.shape[:1] + value.shape[2:] == want[:1] + want[2:]:
            prompts = want[1]
            converted[name] = (value / prompts).repeat(1, prompts, 1, 1)
        else:
            mismatched.append(f"{name} (checkpoint {list(value.shape)}, model {list(want)})")
    if mismatched:
        raise CatSegFormatError(
            "the CAT-Seg checkpoint does not fit this model: tensors of other shapes: " + ", ".join(mismatched)
        )
    weight = model.fusion.weight if hasattr(model, "fusion") else None
    if weight is not None:
        kernel = converted[_APPEARANCE_KERNEL]  # (out, C, k, k)
        converted[_APPEARANCE_KERNEL] = kernel / weight.detach().to(kernel).view(1, -1, 1, 1)
    result = model.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys and all(k.startswith(_OWN_PARTS) for k in result.missing_keys)

    loaded = dict.fromkeys(k.split(".", 1)[0] for k in converted)
    lines = ["Loaded a CAT-Seg checkpoint: " + ", ".join(_PART_NAMES.get(p, p) for p in loaded) + " from it"]
    if prompts:
        lines.append(
            f"cost embedding: CAT-Seg's one-prompt kernel divided by {prompts} and repeated for the model's "
            f"{prompts} prompts per class (bias kept)"
        )
    if getattr(model, "sam", None) is not None:
        lines.append(f"SAM image encoder: kept as built, from {model.sam.weights_source} (MODEL.SAM.CHECKPOINT)")
    if any(k.startswith("fusion.") for k in target):
        lines.append(f"fusion ({model.fusion.mode}): kept as built, its own initialisation")
    if weight is not None:
        w = ", ".join(f"{v:.4g}" for v in weight.detach().flatten().unique().tolist())
        line = (
            f"aggregator appearance guidance: CAT-Seg's kernel divided by the fusion weight w = {w}, which "
            "scales CLIP's features while SAM's projection is zero"
        )
        if prompts is None:
            line += ": with one prompt per class, as CAT-Seg, the model starts exactly from CAT-Seg's outputs"
        else:
            line += (
                f"; with {prompts} prompts per class the model starts from CAT-Seg's outputs exactly only if "
                "they are one text repeated: distinct prompts (several templates, descriptions) embed "
                "otherwise than CAT-Seg's one template, so its outputs differ from CAT-Seg's"
            )
        lines.append(line)
    logger.info("\n  ".join(lines))
