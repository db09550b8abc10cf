"""Per-pixel binary cross-entropy against one-hot targets, skipping ignored pixels."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sem_seg_bce_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_value: int = 255) -> torch.Tensor:
    """Mean BCE over every class at every labelled pixel.

    Pixels labelled ``ignore_value`` are left out entirely (CAT-Seg counts them as negatives of every
    class). A batch without labelled pixels gives a zero loss that still depends on the logits.

    Args:
        logits: (N, T, H, W).
        targets: (N, H, W) class indices in [0, T) or ``ignore_value``.
    """
    n, t, h, w = logits.shape
    if targets.shape != (n, h, w):
        raise ValueError(f"targets of shape {tuple(targets.shape)} do not match logits {tuple(logits.shape)}")
    valid = targets != ignore_value
    labels = targets[valid]
    if labels.numel() and (labels.min() < 0 or labels.max() >= t):
        bad = labels[(labels < 0) | (labels >= t)].unique()[:10].tolist()
        raise ValueError(
            f"label values {bad} are outside the vocabulary of {t} classes (and not the ignore value "
            f"{ignore_value}); check the dataset's labels and the model's vocabulary"
        )
    pixel_logits = logits.permute(0, 2, 3, 1)[valid]  # (pixels, T)
    if pixel_logits.numel() == 0:
        return logits.sum() * 0.0
    onehot = F.one_hot(labels, t).to(pixel_logits.dtype)
    return F.binary_cross_entropy_with_logits(pixel_logits.float(), onehot.float())
