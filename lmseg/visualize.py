"""Drawing segmentations: a colour overlay with a legend of the classes present."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import cv2
import numpy as np


def palette(n: int) -> np.ndarray:
    """n distinct RGB colours (n, 3) uint8, the same for the same n every time."""
    hues = (np.arange(n) * 0.618033988749895) % 1.0  # golden-ratio steps spread the hues
    hsv = np.stack([hues * 180, np.full(n, 200), np.where(np.arange(n) % 2, 230, 170)], axis=1)
    return cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0]


def classes_by_area(labels: np.ndarray, class_names: Sequence[str]) -> List[Tuple[int, str, float]]:
    """(index, name, fraction of the image) of the classes present, largest first."""
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    order = np.argsort(-counts)
    return [(int(i), class_names[i], counts[i] / labels.size) for i in order if counts[i] > 0]


def draw_overlay(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float = 0.55) -> np.ndarray:
    """The RGB image blended with one colour per class, class borders and a legend on the right."""
    colours = palette(len(class_names))
    blended = (image * (1 - alpha) + colours[labels] * alpha).astype(np.uint8)
    edges = np.zeros(labels.shape, bool)  # a pixel whose label differs from its left or upper neighbour
    edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edges[1:, :] |= labels[1:, :] != labels[:-1, :]
    blended[edges] = 255
    present = classes_by_area(labels, class_names)
    row, pad = 22, 8
    width = max([cv2.getTextSize(f"{n} {f:.0%}", cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0] for _, n, f in present] + [0])
    legend = np.full((max(image.shape[0], row * len(present) + pad), width + 3 * pad + 14, 3), 255, np.uint8)
    for k, (i, name, frac) in enumerate(present):
        y = pad + k * row
        cv2.rectangle(legend, (pad, y), (pad + 14, y + 14), tuple(int(c) for c in colours[i]), -1)
        cv2.putText(legend, f"{name} {frac:.0%}", (2 * pad + 14, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    canvas = np.full((legend.shape[0], image.shape[1] + legend.shape[1], 3), 255, np.uint8)
    canvas[: image.shape[0], : image.shape[1]] = blended
    canvas[:, image.shape[1] :] = legend
    return canvas
