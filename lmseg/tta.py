"""Test-time augmentation: scores averaged over test scales and horizontal flips."""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn


class SemSegTTA(nn.Module):
    """Wrap a model so each input is run at TEST.AUG.MIN_SIZES (short side, capped by
    TEST.AUG.MAX_SIZE), and flipped when TEST.AUG.FLIP; the ``sem_seg`` scores are averaged.

    The scales resize the image the test mapper produced (already at INPUT.MIN_SIZE_TEST).
    """

    def __init__(self, cfg, model: nn.Module):
        super().__init__()
        self.model = model
        self.min_sizes = list(cfg.TEST.AUG.MIN_SIZES)
        self.max_size = cfg.TEST.AUG.MAX_SIZE
        self.flip = cfg.TEST.AUG.FLIP

    def _resize(self, image: torch.Tensor, short: int) -> torch.Tensor:
        h, w = image.shape[-2:]
        scale = min(short / min(h, w), self.max_size / max(h, w))
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if size == (h, w):
            return image
        return F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        outputs = []
        for item in batched_inputs:
            image = item["image"]
            size = {"height": item.get("height", image.shape[-2]), "width": item.get("width", image.shape[-1])}
            total, count = None, 0
            for short in self.min_sizes:
                resized = self._resize(image, short)
                for flip in (False, True) if self.flip else (False,):
                    view = resized.flip(-1) if flip else resized
                    scores = self.model([{**item, "image": view, **size}])[0]["sem_seg"]
                    scores = scores.flip(-1) if flip else scores
                    total = scores if total is None else total + scores
                    count += 1
            outputs.append({"sem_seg": total / count})
        return outputs
