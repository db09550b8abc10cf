"""Per-pixel binary cross-entropy against one-hot targets, skipping ignored pixels."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def sem_seg_bce_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_value: int = 255,
    *,
    classes: Optional[torch.Tensor] = None,
    num_classes: Optional[int] = None,
    other_logit: float = -100.0,
) -> torch.Tensor:
    """Mean BCE over every class at every labelled pixel.

    Pixels labelled ``ignore_value`` are left out entirely (CAT-Seg counts them as negatives of every
    class). A batch without labelled pixels gives a zero loss that still depends on the logits.

    Args:
        logits: (N, T, H, W), or (N, K, H, W) with ``classes``.
        targets: (N, H, W) class indices in [0, T) or ``ignore_value``.
        classes: optional (N, K) class indices of the K logit maps of each image, out of
            ``num_classes`` = T; every other class has the logit ``other_logit`` at every pixel and
            enters the mean in closed form, so that memory grows with K, not with T.
    """
    n, k, h, w = logits.shape
    t = k if classes is None else num_classes
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
    if labels.numel() == 0:
        return logits.sum() * 0.0
    if classes is None:
        pixel_logits = logits.permute(0, 2, 3, 1)[valid]  # (pixels, T)
        onehot = F.one_hot(labels, t).to(pixel_logits.dtype)
        return F.binary_cross_entropy_with_logits(pixel_logits.float(), onehot.float())
    other = torch.tensor(other_logit, dtype=torch.float32, device=logits.device)
    negative, positive = F.softplus(other), F.softplus(-other)  # BCE of the other logit as 0 and as 1
    total = logits.new_zeros((), dtype=torch.float32)
    for image_logits, image_targets, image_valid, image_classes in zip(logits, targets, valid, classes):
        image_labels = image_targets[image_valid]  # (p,)
        if image_labels.numel() == 0:
            continue
        pixel_logits = image_logits.permute(1, 2, 0)[image_valid].float()  # (p, K)
        onehot = (image_labels[:, None] == image_classes[None, :]).float()
        total = total + F.binary_cross_entropy_with_logits(pixel_logits, onehot, reduction="sum")
        # the T - K other classes at each pixel: negatives, but for a pixel whose class is among them
        unkept = (onehot.sum(dim=1) == 0).sum()
        total = total + (t - k) * image_labels.numel() * negative + unkept * (positive - negative)
    return total / (labels.numel() * t)
