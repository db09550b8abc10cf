"""The Python API: segment images with any vocabulary in a few lines.

    from lmseg import Segmenter

    seg = Segmenter.from_config("catseg_vitb.yaml", weights="model_base.pth")
    result = seg("photo.jpg", vocabulary="cat,sofa|couch,floor")
    result.label_map            # (H, W) index into result.vocabulary for every pixel
    for i in result.present:    # the classes found, largest first
        print(result.names[i], result.pixel_share[i], result.scores[i])

:class:`Segmenter` holds the model and the current vocabulary; calling it on an image (or a list of
images, run as batches) returns one :class:`Segmentation` per image. It is the demos' only inference
path (:mod:`lmseg.demo`).

Images: a file path, a PIL image, a numpy array or a torch tensor, as :mod:`lmseg.images` accepts
them; anything else raises :class:`~lmseg.images.InputError` saying what is expected.

Vocabularies: a list of class names, or one string of names separated by ",". Synonyms of one class
are separated by "|" ("sofa|couch"); the model receives them as "sofa, couch" (its own notation,
also that of the benchmark vocabularies) and prompts with the first one.

Memory: an image is resized as at evaluation (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``), the model
returns class scores at that processing size, and the label map at the image's own size is built
band of rows by band of rows and class chunk by class chunk, so no (classes x H x W) array ever
exists at the full size: a 10,000 x 10,000 image with thousands of classes fits in a few hundred MB.
"""
from __future__ import annotations

import logging
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from .checkpoint import check_weights_file, load_weights
from .config import get_lmseg_cfg, resolve_config_file
from .engine import amp_dtype
from .images import ImageLike, InputError, to_rgb
from .modeling.class_text import validate_vocabulary
from .modeling.meta_arch import dense_scores
from .modeling.prompts import prompt_name
from .tta import SemSegTTA

logger = logging.getLogger(__name__)

# Largest class-score map the model is asked for, in float32 elements (1 GiB): with so many classes
# that classes x processing size exceeds it, the scores come at a proportionally smaller size. Past
# MODEL.LMSEG.CLASS_CAP only the classes some view kept have maps (at most views x cap of them).
SCORE_ELEMENTS = 2**28
# Elements of one (classes x rows x width) step of the full-size label-map computation (16 MiB).
STEP_ELEMENTS = 2**22

WEIGHTS_HINT = (
    "trained weights: CAT-Seg's ViT-B checkpoint, which demo/demo.py downloads when run without "
    "--config-file (see MODEL_ZOO.md); load it with configs/catseg_vitb.yaml and MODEL.WEIGHTS "
    "(demo: --weights, Python: weights=)"
)

_said_cpu = False


# --------------------------------------------------------------------------------- vocabulary
def parse_vocabulary(vocabulary: Union[str, Sequence[str]]) -> List[str]:
    """Class names as the model takes them, from a "," separated string or a list of names.

    In a string, names are stripped of surrounding spaces. In both, "|" separates synonyms of one
    class ("sofa|couch" becomes "sofa, couch"). Names of a list are otherwise kept as given (the
    benchmark vocabularies' synonyms and spacing are data). Raises :class:`InputError` for an empty
    vocabulary, an empty name, or a name given to two classes, also in another case or as a synonym
    (:func:`lmseg.modeling.class_text.validate_vocabulary`).
    """
    if isinstance(vocabulary, str):
        text = vocabulary
        names = [n.strip() for n in text.split(",")]
        if not any(names):
            raise InputError(f"the vocabulary {text!r} is empty: give class names separated by ',', e.g. 'cat,sofa'")
        if not all(names):
            raise InputError(f"the vocabulary {text!r} has an empty name: separate names with single commas")
    else:
        names = list(vocabulary)
        if not all(isinstance(n, str) for n in names):
            bad = next(n for n in names if not isinstance(n, str))
            raise InputError(f"class names must be strings; got {bad!r} ({type(bad).__name__})")
    out = []
    for name in names:
        if "|" in name:
            synonyms = [s.strip() for s in name.split("|")]
            if not all(synonyms):
                raise InputError(f"the class {name!r} has an empty synonym: separate synonyms with single '|'")
            name = ", ".join(synonyms)
        out.append(name)
    try:
        return validate_vocabulary(out)
    except (ValueError, TypeError) as err:
        raise InputError(str(err)) from None


# -------------------------------------------------------------------------------------- result
@dataclass
class Segmentation:
    """The segmentation of one image.

    Attributes:
        label_map: (H, W) at the image's own size, the index into ``vocabulary`` of each pixel's
            best class; uint8 up to 255 classes (255 stays free, the "ignore" value of label
            PNGs), uint16 up to 65,535, int32 beyond.
        scores: (T,) float32, per class the mean probability over the pixels given to it
            (0 for a class given no pixel).
        pixel_share: (T,) float64, per class the fraction of the pixels given to it.
        vocabulary: the T class names as the model received them (synonyms as "sofa, couch").
        probabilities: (T, h, w) float32 class probabilities at the processing size, kept only
            when asked for (``probabilities=True``); see :meth:`probability_map`.
    """

    label_map: np.ndarray
    scores: np.ndarray
    pixel_share: np.ndarray
    vocabulary: Tuple[str, ...]
    probabilities: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def names(self) -> List[str]:
        """Display names: each class's first synonym."""
        return [prompt_name(n) for n in self.vocabulary]

    @property
    def present(self) -> List[int]:
        """Indices of the classes given at least one pixel, largest share first."""
        found = np.flatnonzero(self.pixel_share > 0)
        return [int(i) for i in found[np.argsort(-self.pixel_share[found], kind="stable")]]

    def probability_map(self, cls: Union[int, str]) -> np.ndarray:
        """(H, W) float32 probability of one class (an index, or a name or display name) at the
        image's size, as the label map saw it. Needs ``probabilities=True`` in the call."""
        if self.probabilities is None:
            raise ValueError("probabilities were not kept: call the segmenter with probabilities=True")
        if isinstance(cls, str):
            names = list(self.vocabulary)
            short = self.names
            if cls not in names and cls not in short:
                raise KeyError(f"{cls!r} is not in the vocabulary")
            cls = names.index(cls) if cls in names else short.index(cls)
        return _upsample_one(self.probabilities[cls], self.label_map.shape)

    def to_dict(self) -> dict:
        """A JSON-ready summary: size, vocabulary and each present class's share and score."""
        names = self.names
        return {
            "height": int(self.label_map.shape[0]),
            "width": int(self.label_map.shape[1]),
            "vocabulary": list(self.vocabulary),
            "present": [
                {
                    "index": i,
                    "name": names[i],
                    "pixel_share": round(float(self.pixel_share[i]), 6),
                    "score": round(float(self.scores[i]), 6),
                }
                for i in self.present
            ],
        }


# ----------------------------------------------------------------------------------- segmenter
class Segmenter:
    """A model with its weights and a current vocabulary, segmenting images.

        seg = Segmenter.from_config("configs/tiny.yaml")        # or Segmenter(cfg)
        seg.set_vocabulary(["sky", "grass", "sofa|couch"])      # or seg(image, vocabulary=...)
        result = seg(image)                                      # one image -> one Segmentation
        results = seg([a, b, c])                                 # a list -> a list, run in batches

    Args:
        cfg: an LMSeg config (``lmseg.config.get_lmseg_cfg``); ``MODEL.WEIGHTS`` is loaded when set.
            Its datasets are ignored: the vocabulary is the caller's.
        batch_size: images per forward pass when called on a list.

    ``MODEL.DEVICE`` "cuda" on a machine without CUDA runs on the CPU (logged once). A model
    without ``MODEL.WEIGHTS`` is untrained: a warning says so, once per segmenter.
    """

    def __init__(self, cfg, *, batch_size: int = 2):
        global _said_cpu
        cfg = cfg.clone()
        cfg.defrost()
        if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
            if not _said_cpu:
                logger.warning("CUDA is not available: running on the CPU (slower, same results)")
                _said_cpu = True
            cfg.MODEL.DEVICE = "cpu"
        cfg.DATASETS.TRAIN = ()
        cfg.DATASETS.TEST = ()
        cfg.freeze()
        check_weights_file(cfg.MODEL.WEIGHTS)  # before building anything
        self.cfg = cfg
        self.batch_size = max(int(batch_size), 1)
        self.model = build_model(cfg).eval()
        # TEST.AUG as evaluation applies it (the model refuses scales it cannot honour when built)
        self._runner = SemSegTTA(cfg, self.model) if cfg.TEST.AUG.ENABLED else self.model
        self.trained = bool(cfg.MODEL.WEIGHTS)
        if self.trained:
            load_weights(self.model, cfg.MODEL.WEIGHTS)
        else:
            logger.warning(
                "No trained weights (MODEL.WEIGHTS is empty): the labels are those of an untrained model "
                "and mean nothing. For %s",
                WEIGHTS_HINT,
            )
        self.dtype = amp_dtype(cfg.TEST.PRECISION, self.model.device, "TEST.PRECISION")

    @classmethod
    def from_config(
        cls,
        config_file: str,
        weights: Optional[str] = None,
        opts: Sequence[str] = (),
        device: Optional[str] = None,
        **kwargs,
    ) -> "Segmenter":
        """Build from a config file, optional weights (MODEL.WEIGHTS), ``KEY VALUE`` overrides
        (applied last) and a device ("cpu", "cuda", "cuda:1"). ``config_file`` is a path, or the
        name of a shipped config ("catseg_vitb.yaml", see :func:`lmseg.get_config_file`)."""
        cfg = get_lmseg_cfg(resolve_config_file(os.fspath(config_file)))
        if weights:
            cfg.MODEL.WEIGHTS = os.path.expanduser(str(weights))
        if device:
            cfg.MODEL.DEVICE = device
        cfg.merge_from_list(list(opts))
        return cls(cfg, **kwargs)

    @property
    def vocabulary(self) -> Tuple[str, ...]:
        """The current class names, as the model takes them."""
        return self.model.vocabulary

    @property
    def device(self) -> torch.device:
        return self.model.device

    def set_vocabulary(self, vocabulary: Union[str, Sequence[str]]) -> None:
        """Set the classes of every later call: a list of names or a "," separated string, "|"
        between synonyms (see :func:`parse_vocabulary`)."""
        names = parse_vocabulary(vocabulary)
        if tuple(names) != self.model.vocabulary:
            # names without descriptions get the template in their slots (logged by the model)
            self.model.set_vocabulary(names)

    def processing_size(self, height: int, width: int) -> Tuple[int, int]:
        """The size (h, w) an image of ``height`` x ``width`` is segmented at: its shorter side
        brought to INPUT.MIN_SIZE_TEST, the longer one capped at INPUT.MAX_SIZE_TEST, as at
        evaluation (at least 1 x 1)."""
        h, w = T.ResizeShortestEdge.get_output_shape(height, width, self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MAX_SIZE_TEST)
        return max(h, 1), max(w, 1)

    def __call__(
        self,
        images: Union[ImageLike, Sequence[ImageLike]],
        vocabulary: Union[None, str, Sequence[str]] = None,
        *,
        probabilities: bool = False,
    ) -> Union[Segmentation, List[Segmentation]]:
        """Segment one image (returns a :class:`Segmentation`) or a list (returns a list).

        Args:
            vocabulary: if given, becomes the current vocabulary (as :meth:`set_vocabulary`).
            probabilities: keep each image's class probabilities at the processing size, for
                :meth:`Segmentation.probability_map`.
        """
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)
        if not self.vocabulary:
            raise InputError("no vocabulary: pass vocabulary=... or call set_vocabulary([...class names...]) first")
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        arrays = []
        for k, image in enumerate(batch):
            try:
                arrays.append(to_rgb(image))
            except InputError as err:
                raise InputError(f"image {k + 1} of {len(batch)}: {err}" if not single else str(err)) from None
        results: List[Segmentation] = []
        for start in range(0, len(arrays), self.batch_size):
            results += self._segment_batch(arrays[start : start + self.batch_size], probabilities)
        return results[0] if single else results

    @torch.no_grad()
    def _segment_batch(self, images: List[np.ndarray], keep_probabilities: bool) -> List[Segmentation]:
        t = len(self.vocabulary)
        rows = t  # score maps per image: all of them when the probabilities are kept
        if t > self.model.class_cap and self._runner is self.model and not keep_probabilities:
            rows = min(t, self.model.max_kept_classes)
        inputs = []
        for rgb in images:
            height, width = rgb.shape[:2]
            h, w = self.processing_size(height, width)
            resized = T.ResizeTransform(height, width, h, w).apply_image(rgb)  # as at evaluation (PIL bilinear)
            # Scores are asked for at the processing size, smaller for a huge vocabulary.
            shrink = min(1.0, math.sqrt(SCORE_ELEMENTS / (rows * h * w)))
            inputs.append(
                {
                    "image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))),
                    "height": max(int(h * shrink), 1),
                    "width": max(int(w * shrink), 1),
                    "kept_classes_only": True,
                }
            )
        device = self.model.device.type
        with torch.autocast(device, dtype=self.dtype) if self.dtype else nullcontext():
            outputs = self._runner(inputs)
        results = []
        for rgb, out in zip(images, outputs):
            if "sem_seg" in out:
                probs = out["sem_seg"].float()  # (T, h, w)
                labels, best_sum, counts = _label_map(probs, rgb.shape[:2], t)
            else:  # past the class cap: the kept classes' maps (U, h, w), the others score ~0
                kept = out["kept_classes"].cpu().numpy()
                probs = out["kept_scores"].float()
                labels, best_sum, counts = _label_map(probs, rgb.shape[:2], t, kept)
                if keep_probabilities:
                    probs = dense_scores(out, t)
            pixels = labels.size
            results.append(
                Segmentation(
                    label_map=labels,
                    scores=(best_sum / np.maximum(counts, 1)).astype(np.float32),
                    pixel_share=counts / pixels,
                    vocabulary=self.vocabulary,
                    probabilities=probs.cpu() if keep_probabilities else None,
                )
            )
        return results


# ------------------------------------------------------------------ full-size label map, bounded
def _taps(n_out: int, n_in: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices i0, i1 (n_out,) and weights of i1 of a linear resize from n_in to n_out
    samples, as ``F.interpolate(mode="bilinear", align_corners=False)`` computes them."""
    src = ((torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, (src - i0).float()


def _bands(probs: torch.Tensor, size: Tuple[int, int]):
    """Yield (row slice, class start, (c, b, W) scores) of ``probs`` (T, h, w) bilinearly resized
    to ``size``, a band of rows and a chunk of classes at a time (at most STEP_ELEMENTS each)."""
    t = probs.shape[0]
    height, width = size
    yi0, yi1, yw = _taps(height, probs.shape[1], probs.device)
    chunk = max(1, min(t, STEP_ELEMENTS // width))
    rows = max(1, min(height, STEP_ELEMENTS // (chunk * width)))
    for y0 in range(0, height, rows):
        band = slice(y0, min(y0 + rows, height))
        wy = yw[band, None]
        for c0 in range(0, t, chunk):
            p = probs[c0 : c0 + chunk]
            x = p[:, yi0[band]] * (1 - wy) + p[:, yi1[band]] * wy  # rows resized: (c, b, w)
            # whole rows: resizing the width alone is exact
            yield band, c0, F.interpolate(x[None], size=x.shape[1:2] + (width,), mode="bilinear", align_corners=False)[0]


def _label_map(
    probs: torch.Tensor, size: Tuple[int, int], num_classes: int, classes: Optional[np.ndarray] = None
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The label map (H, W) of class probabilities (T, h, w) resized to ``size``, with per class
    the sum of the winning probabilities (T,) and the pixel count (T,). With ``classes``, ``probs``
    holds the maps of those classes only (U, h, w), and every other class scores lower everywhere."""
    t = num_classes
    dtype = np.uint8 if t <= 255 else np.uint16 if t <= 65535 else np.int32
    if classes is not None:
        labels, best_sum, counts = _label_map(probs, size, len(classes))
        full_sum, full_counts = np.zeros(t), np.zeros(t)
        full_sum[classes], full_counts[classes] = best_sum, counts
        return classes.astype(dtype)[labels], full_sum, full_counts
    labels = np.empty(size, dtype)
    best_sum = np.zeros(t)
    counts = np.zeros(t)
    best = index = None
    current = None
    for band, c0, scores in _bands(probs, size):
        if band != current:
            if current is not None:
                _finish_band(labels, current, best, index, best_sum, counts)
            current = band
            best = index = None
        value, arg = scores.max(dim=0)  # first maximum on ties, as argmax
        arg += c0
        if best is None:
            best, index = value, arg
        else:
            better = value > best  # strictly: an earlier chunk keeps its ties
            best = torch.where(better, value, best)
            index = torch.where(better, arg, index)
    _finish_band(labels, current, best, index, best_sum, counts)
    return labels, best_sum, counts


def _finish_band(labels, band, best, index, best_sum, counts) -> None:
    labels[band] = index.cpu().numpy()
    flat = labels[band].ravel()
    best_sum += np.bincount(flat, weights=best.cpu().numpy().ravel(), minlength=best_sum.shape[0])
    counts += np.bincount(flat, minlength=counts.shape[0])


def _upsample_one(probs: torch.Tensor, size: Tuple[int, int]) -> np.ndarray:
    """(H, W) float32 of one class's (h, w) probabilities resized as the label map's."""
    out = np.empty(size, np.float32)
    for band, _, scores in _bands(probs[None], size):
        out[band] = scores[0].cpu().numpy()
    return out
