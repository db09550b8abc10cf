"""Segment single images with a config, its weights and any vocabulary (what the demo uses)."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from .checkpoint import load_weights
from .engine import amp_dtype


class Predictor:
    """Build the model of ``cfg``, load ``cfg.MODEL.WEIGHTS`` and segment RGB images.

    The image is resized as at evaluation (INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST) and the scores come
    back at its own size, under TEST.PRECISION.

        predictor = Predictor(cfg)
        predictor.set_vocabulary(["cat", "sofa", "window"])
        labels = predictor.segment(image)  # (H, W) indices into the vocabulary
    """

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        if cfg.MODEL.WEIGHTS:
            load_weights(self.model, cfg.MODEL.WEIGHTS)
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.dtype = amp_dtype(cfg.TEST.PRECISION, self.model.device, "TEST.PRECISION")

    @property
    def vocabulary(self):
        return self.model.vocabulary

    def set_vocabulary(self, class_names: Sequence[str], descriptions=None) -> None:
        """See ``LMSeg.set_vocabulary``: descriptions come from MODEL.PROMPTS.DESCRIPTIONS unless given."""
        self.model.set_vocabulary(class_names, descriptions)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """Scores (T, H, W) in [0, 1] of an RGB uint8 image (H, W, 3)."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
        h, w = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        device = self.model.device.type
        autocast = torch.autocast(device, dtype=self.dtype) if self.dtype else nullcontext()
        with autocast:
            return self.model([{"image": tensor, "height": h, "width": w}])[0]["sem_seg"]

    def segment(self, image: np.ndarray) -> np.ndarray:
        """The label map (H, W): for each pixel, the index of its best-scoring class."""
        return self(image).argmax(dim=0).cpu().numpy()
