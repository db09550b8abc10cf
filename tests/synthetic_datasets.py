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
