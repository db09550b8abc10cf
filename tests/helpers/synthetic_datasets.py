"""Small synthetic datasets in the on-disk formats LMSeg reads: the benchmark layouts of
datasets/README.md and ``sem_seg_folder:`` folders. Shared by the data, mapper and evaluation
tests; values are random with a fixed seed unless given.
"""
import json
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from lmseg.data.datasets.benchmarks import Benchmark

DEFAULT_SIZE = (24, 32)  # (height, width)


def write_image(path: str, height: int, width: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def write_label(path: str, label: np.ndarray) -> None:
    """Save a label, uint8 as 8-bit ("L") and uint16 as 16-bit ("I;16"), PNG or TIFF by suffix."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert label.dtype in (np.uint8, np.uint16), label.dtype
    Image.fromarray(label).save(path)


def random_label(
    num_classes: int, ignore: int, dtype, size: Tuple[int, int] = DEFAULT_SIZE, seed: int = 0
) -> np.ndarray:
    """Class indices below num_classes with about a tenth of the pixels set to ignore."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, num_classes, size).astype(dtype)
    label[rng.random(size) < 0.1] = ignore
    return label


def write_benchmark(
    root: str,
    benchmark: Benchmark,
    num_images: int = 2,
    size: Tuple[int, int] = DEFAULT_SIZE,
    labels: Optional[Sequence[np.ndarray]] = None,
) -> List[Tuple[str, str]]:
    """Write a synthetic copy of a benchmark's layout under root; return (image, label) paths.

    Labels are 16-bit for .tif label files and 8-bit otherwise, with values over the evaluated
    classes (VOC-20b: 0..20) and the benchmark's ignore value.
    """
    num_classes = len(benchmark.eval_classes) if benchmark.eval_classes else None
    if num_classes is None:
        from lmseg.data import load_vocabulary

        num_classes = len(load_vocabulary(benchmark.vocabulary))
    dtype = np.uint16 if benchmark.label_ext == ".tif" else np.uint8
    pairs = []
    for i in range(num_images):
        stem = f"img_{i:03d}"
        image = os.path.join(root, benchmark.image_dir, stem + ".jpg")
        label_file = os.path.join(root, benchmark.label_dir, stem + benchmark.label_ext)
        label = (
            labels[i]
            if labels is not None
            else random_label(num_classes, benchmark.ignore_label, dtype, size, seed=i)
        )
        write_image(image, label.shape[0], label.shape[1], seed=i)
        write_label(label_file, label)
        pairs.append((image, label_file))
    return pairs


def write_folder_dataset(
    path: str,
    classes: Sequence[str],
    labels: Sequence[np.ndarray],
    image_ext: str = ".jpg",
) -> List[Tuple[str, str]]:
    """Write a ``sem_seg_folder:`` dataset: classes.json, images/, labels/ (one label per image)."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "classes.json"), "w") as f:
        json.dump(list(classes), f)
    pairs = []
    for i, label in enumerate(labels):
        image = os.path.join(path, "images", f"sample_{i:03d}{image_ext}")
        label_file = os.path.join(path, "labels", f"sample_{i:03d}.png")
        write_image(image, label.shape[0], label.shape[1], seed=i)
        write_label(label_file, label)
        pairs.append((image, label_file))
    return pairs


# Classes of the learnable folder dataset: (name, RGB colour, texture).
LEARNABLE_CLASSES = [
    ("red stripes", (200, 40, 40), "stripes"),
    ("green dots", (40, 180, 60), "dots"),
    ("blue plain", (50, 60, 200), "plain"),
    ("yellow checker", (220, 200, 40), "checker"),
]


def _texture(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    phase = rng.integers(0, 8)
    if kind == "stripes":
        return ((y + phase) // 3 % 2).astype(np.float32)
    if kind == "dots":
        return (((y + phase) % 6 < 2) & ((x + phase) % 6 < 2)).astype(np.float32)
    if kind == "checker":
        return (((y + phase) // 4 + (x + phase) // 4) % 2).astype(np.float32)
    return np.zeros((height, width), np.float32)


def learnable_sample(size: int, num_classes: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """An RGB image and its 8-bit label: rectangles of classes on a background class, each class
    drawn in its own colour and texture (with noise), the top two rows ignored (255)."""
    label = np.full((size, size), rng.integers(0, num_classes), np.uint8)
    for _ in range(rng.integers(2, 5)):
        c = rng.integers(0, num_classes)
        y0, x0 = rng.integers(0, size - size // 4, 2)
        label[y0 : y0 + rng.integers(size // 4, size // 2 + 1), x0 : x0 + rng.integers(size // 4, size // 2 + 1)] = c
    image = np.zeros((size, size, 3), np.float32)
    for c in range(num_classes):
        _, colour, kind = LEARNABLE_CLASSES[c]
        shade = np.asarray(colour, np.float32) * (0.6 + 0.4 * _texture(kind, size, size, rng)[..., None])
        image[label == c] = shade[label == c]
    image += rng.normal(0, 8, image.shape)
    label[:2] = 255
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_learnable_folder_dataset(path: str, num_images: int = 16, size: int = 64, num_classes: int = 3, seed: int = 0) -> str:
    """A ``sem_seg_folder:`` dataset whose classes differ by colour and texture (learnable)."""
    rng = np.random.default_rng(seed)
    for folder in ("images", "labels"):
        os.makedirs(os.path.join(path, folder), exist_ok=True)
    for i in range(num_images):
        image, label = learnable_sample(size, num_classes, rng)
        Image.fromarray(image).save(os.path.join(path, "images", f"img_{i:03d}.png"))
        write_label(os.path.join(path, "labels", f"img_{i:03d}.png"), label)
    with open(os.path.join(path, "classes.json"), "w") as f:
        json.dump([c[0] for c in LEARNABLE_CLASSES[:num_classes]], f)
    return path
