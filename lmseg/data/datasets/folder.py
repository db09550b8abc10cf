"""Folder datasets: any folder of images and label PNGs, used without code as the dataset name
``sem_seg_folder:<path>`` in ``DATASETS.TRAIN`` or ``DATASETS.TEST``.

Layout::

    <path>/classes.json        a JSON list of class names; label value i is classes[i]
    <path>/images/<stem>.jpg   (or .jpeg, .png, .bmp, .tif, .tiff)
    <path>/labels/<stem>.png   8-bit (255 = ignored) or 16-bit (65535 = ignored) class indices

Registration reads classes.json and the header of every label: their bit depth sets the dataset's
ignore value, and a folder whose labels mix 8- and 16-bit files (whose ignore values differ) is
refused there, before any model is built, with the number of files of each depth and the names of
the fewer. Listing the dataset (``DatasetCatalog.get``) checks every image and label once per
process and reports all problems together, each with its file name: missing labels, unreadable
files, size mismatches, values out of range, and labels whose bit depth has changed since the
folder was registered.
"""
import copy
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ..labels import IGNORE_8BIT, IGNORE_16BIT, label_bit_depth, read_label
from ..vocabularies import read_class_list

FOLDER_PREFIX = "sem_seg_folder:"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# The EXIF tag of the orientation a camera stored, applied when images are read.
_EXIF_ORIENTATION = 0x0112
# Problems listed in one error message; the rest are counted.
_MAX_REPORTED = 20

# Records of the folder datasets already checked in this process, by dataset name.
_checked_records: Dict[str, List[Dict]] = {}


def is_folder_dataset(name: str) -> bool:
    """Whether a dataset name is a ``sem_seg_folder:<path>`` name."""
    return name.startswith(FOLDER_PREFIX)


def _folder_path(name: str) -> str:
    if not is_folder_dataset(name):
        raise ValueError(f"{name!r} is not a folder dataset name ('{FOLDER_PREFIX}<path>').")
    path = os.path.expanduser(name[len(FOLDER_PREFIX):])
    if not path:
        raise ValueError(f"Dataset name {name!r} gives no folder after '{FOLDER_PREFIX}'.")
    return path


def register_folder_dataset(name: str) -> None:
    """Register the folder dataset ``sem_seg_folder:<path>`` in detectron2's catalogs.

    Metadata: ``stuff_classes`` and ``eval_classes`` from classes.json, ``ignore_label`` 255 or
    65535 by the labels' bit depth, ``vocabulary`` = the absolute path of classes.json (which
    :func:`lmseg.data.load_vocabulary` accepts), ``eval_class_map`` the identity, and
    ``evaluator_type``, ``image_root``, ``sem_seg_root`` as for the benchmarks.
    """
    path = _folder_path(name)
    image_dir, label_dir = os.path.join(path, "images"), os.path.join(path, "labels")
    for folder in (path, image_dir, label_dir):
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"Folder dataset '{name}': {os.path.abspath(folder)} is not a folder. Expected "
                "<path>/images/, <path>/labels/ and <path>/classes.json."
            )
    classes_file = os.path.abspath(os.path.join(path, "classes.json"))
    classes = read_class_list(classes_file)

    bit_depth = _folder_bit_depth(name, label_dir)
    ignore_label = IGNORE_8BIT if bit_depth == 8 else IGNORE_16BIT
    if len(classes) > ignore_label:
        raise ValueError(
            f"{classes_file} lists {len(classes)} classes, more than {bit_depth}-bit labels "
            f"can hold next to the ignore value {ignore_label}: store the labels as 16-bit PNGs."
        )

    _checked_records.pop(name, None)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(
        name, lambda: _load_folder_dataset(name, image_dir, label_dir, len(classes), bit_depth)
    )
    MetadataCatalog.get(name).set(
        stuff_classes=classes,
        ignore_label=ignore_label,
        evaluator_type="sem_seg",
        image_root=image_dir,
        sem_seg_root=label_dir,
        vocabulary=classes_file,
        eval_classes=list(classes),
        eval_class_map=list(range(len(classes))),
    )


def _folder_bit_depth(name: str, label_dir: str) -> int:
    """The bit depth (8 or 16) of a folder's labels, from every label's header.

    Raises ValueError when the labels disagree, with the number of files of each depth and up to
    five names of the fewer (of both, on a tie), so that the odd files are the ones named. Labels
    whose header cannot be read do not count; listing the dataset reports them.
    """
    label_names = sorted(n for n in os.listdir(label_dir) if n.lower().endswith(".png"))
    if not label_names:
        raise FileNotFoundError(f"Folder dataset '{name}': no .png labels in {label_dir}.")

    def depth(file: str) -> Optional[int]:
        try:
            with Image.open(os.path.join(label_dir, file)) as label:
                return label_bit_depth(label.mode)
        except Exception:
            return None

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        depths = list(pool.map(depth, label_names))
    by_depth = {d: [f for f, fd in zip(label_names, depths) if fd == d] for d in (8, 16)}
    counts = {d: len(files) for d, files in by_depth.items()}
    if not any(counts.values()):
        listed = ", ".join(label_names[:5]) + (", ..." if len(label_names) > 5 else "")
        raise ValueError(
            f"Folder dataset '{name}': no label in {label_dir} is an 8- or 16-bit single-channel PNG "
            f"({listed}): store the class indices as grey levels (PIL mode 'L' or 'I;16')."
        )
    if all(counts.values()):
        fewer = [d for d in (8, 16) if counts[d] <= counts[16 if d == 8 else 8]]

        def named(d: int) -> str:
            files = by_depth[d]
            return f"the {d}-bit ones: {', '.join(files[:5])}" + (f" and {len(files) - 5} more" if len(files) > 5 else "")

        files_8 = f"{counts[8]} file is" if counts[8] == 1 else f"{counts[8]} files are"
        files_16 = f"{counts[16]} is" if counts[16] == 1 else f"{counts[16]} are"
        raise ValueError(
            f"Folder dataset '{name}' mixes label bit depths in {label_dir}: {files_8} 8-bit and "
            f"{files_16} 16-bit ({'; '.join(named(d) for d in fewer)}). Their ignore values "
            f"differ ({IGNORE_8BIT} and {IGNORE_16BIT}): store every label with one bit depth."
        )
    return 8 if counts[8] else 16


def _load_folder_dataset(
    name: str, image_dir: str, label_dir: str, num_classes: int, bit_depth: int
) -> List[Dict]:
    if name not in _checked_records:
        _checked_records[name] = _list_and_check(name, image_dir, label_dir, num_classes, bit_depth)
    return copy.deepcopy(_checked_records[name])


def _list_and_check(
    name: str, image_dir: str, label_dir: str, num_classes: int, bit_depth: int
) -> List[Dict]:
    images: Dict[str, str] = {}
    problems: List[str] = []
    for file in sorted(os.listdir(image_dir)):
        stem, ext = os.path.splitext(file)
        if ext.lower() not in IMAGE_EXTENSIONS:
            continue
        if stem in images:
            problems.append(f"two images share the stem {stem!r}: {images[stem]} and {file}")
        images[stem] = file
    if not images:
        raise FileNotFoundError(f"Folder dataset '{name}': no images in {image_dir}.")

    pairs = []
    for stem, file in images.items():
        label_file = os.path.join(label_dir, stem + ".png")
        if os.path.isfile(label_file):
            pairs.append((os.path.join(image_dir, file), label_file))
        else:
            problems.append(f"missing label {label_file} for image {os.path.join(image_dir, file)}")

    ignore_label = IGNORE_8BIT if bit_depth == 8 else IGNORE_16BIT
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        checked = list(
            pool.map(lambda p: _check_pair(*p, num_classes, bit_depth, ignore_label), pairs)
        )
    records = []
    for record, problem in checked:
        if problem:
            problems.append(problem)
        else:
            records.append(record)
    if problems:
        listed = "\n  ".join(problems[:_MAX_REPORTED])
        more = len(problems) - _MAX_REPORTED
        raise ValueError(
            f"Folder dataset '{name}' has {len(problems)} problem(s):\n  {listed}"
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
    return records


def _check_pair(
    image_file: str, label_file: str, num_classes: int, bit_depth: int, ignore_label: int
) -> Tuple[Optional[Dict], Optional[str]]:
    """Check one image/label pair; return its record, or a description of the problem."""
    try:
        with Image.open(image_file) as image:
            width, height = image.size
            # images are read upright (EXIF orientation applied, as detectron2's read_image does):
            # orientations 5-8 turn the image by 90 degrees, so the label must be H x W turned too
            if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
    except Exception as e:
        return None, f"unreadable image {image_file}: {e}"
    try:
        label = read_label(label_file)
    except Exception as e:
        return None, f"unreadable label {label_file}: {e}"
    depth = 8 if label.dtype == np.uint8 else 16
    if depth != bit_depth:
        return None, (
            f"label {label_file} is {depth}-bit but the folder's labels are {bit_depth}-bit "
            "(their ignore values differ: store all labels with the same bit depth)"
        )
    if label.shape != (height, width):
        return None, (
            f"label {label_file} is {label.shape[1]}x{label.shape[0]} but image {image_file} "
            f"is {width}x{height}"
        )
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != ignore_label)]
    if bad.size:
        return None, (
            f"label {label_file} has values {bad[:10].tolist()} out of range: classes.json has "
            f"{num_classes} classes (0..{num_classes - 1}) and {ignore_label} means ignored"
        )
    record = {
        "file_name": image_file,
        "sem_seg_file_name": label_file,
        "height": height,
        "width": width,
        "ignore_label": ignore_label,
    }
    return record, None


def ensure_datasets_registered(names: Iterable[str]) -> None:
    """Register the ``sem_seg_folder:`` names among ``names`` that are not registered yet.

    Call it with ``cfg.DATASETS.TRAIN`` and ``cfg.DATASETS.TEST`` before building data loaders,
    evaluators or anything that reads their metadata. Any other name must already be registered
    (the benchmarks are, on ``import lmseg.data``); an unknown one raises a KeyError that says so.
    """
    for name in names:
        if name in DatasetCatalog.list():
            continue
        if is_folder_dataset(name):
            register_folder_dataset(name)
        else:
            raise KeyError(
                f"Dataset '{name}' is not registered. Use a benchmark name of datasets/README.md, "
                f"'{FOLDER_PREFIX}<path>' for a folder of images and labels, or register it in "
                "detectron2's DatasetCatalog first."
            )
