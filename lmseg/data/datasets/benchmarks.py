"""The eight benchmark datasets, registered under ``$DETECTRON2_DATASETS`` with CAT-Seg's names,
folders, label formats and ignore values, so that data prepared for CAT-Seg works as is.

Registration touches no file: a dataset's folders are listed when ``DatasetCatalog.get(name)``
is called, and a missing folder is reported with the ``datasets/prepare_*.py`` script that makes it.
The layouts are described in ``datasets/README.md``.
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from ...descriptions.bank import benchmark_descriptions_file
from ..vocabularies import load_vocabulary


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lies under the datasets root and how its labels read."""

    name: str  # detectron2 dataset name
    image_dir: str  # relative to the datasets root
    label_dir: str  # relative to the datasets root
    label_ext: str  # ".png" or ".tif"
    ignore_label: int  # value of unlabelled pixels in the label files
    vocabulary: str  # vocabulary given to the model (lmseg/data/vocabularies/<vocabulary>.json)
    prepare_script: str  # the script in datasets/ that writes label_dir (and image_dir if needed)
    # Evaluated classes when they differ from the vocabulary (VOC-20b), and the evaluated class
    # that each vocabulary index counts as.
    eval_classes: Optional[List[str]] = None
    eval_class_map: Optional[List[int]] = None


_VOC = "VOCdevkit/VOC2012"
_CONTEXT = "VOCdevkit/VOC2010"
_ADE_FULL = "ADE20K_2021_17_01"


def _voc_background_benchmark() -> Benchmark:
    # The model gets voc20b's 59 names: the 20 VOC classes, then 39 Pascal Context names that
    # stand for the background. Evaluation has 21 classes; every prediction >= 20 is background,
    # which the labels store as 20.
    num_voc, num_vocabulary = 20, 59
    return Benchmark(
        name="voc_2012_test_background_sem_seg",
        image_dir=f"{_VOC}/JPEGImages",
        label_dir=f"{_VOC}/annotations_detectron2_bg/val",
        label_ext=".png",
        ignore_label=255,
        vocabulary="voc20b",
        prepare_script="prepare_voc.py",
        eval_classes=load_vocabulary("voc20") + ["background"],
        eval_class_map=list(range(num_voc)) + [num_voc] * (num_vocabulary - num_voc),
    )


def benchmarks() -> List[Benchmark]:
    """The eight benchmarks of DATASETS.md, in its order."""
    return [
        Benchmark(
            "coco_2017_train_stuff_all_sem_seg", "coco-stuff/images/train2017",
            "coco-stuff/annotations_detectron2/train2017", ".png", 255, "coco",
            "prepare_coco_stuff.py",
        ),
        Benchmark(
            "coco_2017_test_stuff_all_sem_seg", "coco-stuff/images/val2017",
            "coco-stuff/annotations_detectron2/val2017", ".png", 255, "coco",
            "prepare_coco_stuff.py",
        ),
        Benchmark(
            "ade20k_150_test_sem_seg", "ADEChallengeData2016/images/validation",
            "ADEChallengeData2016/annotations_detectron2/validation", ".png", 255, "ade150",
            "prepare_ade20k_150.py",
        ),
        Benchmark(
            "ade20k_full_sem_seg_freq_val_all", f"{_ADE_FULL}/images_detectron2/validation",
            f"{_ADE_FULL}/annotations_detectron2/validation", ".tif", 65535, "ade847",
            "prepare_ade20k_full.py",
        ),
        Benchmark(
            "context_59_test_sem_seg", f"{_CONTEXT}/JPEGImages",
            f"{_CONTEXT}/annotations_detectron2/pc59_val", ".png", 255, "pc59",
            "prepare_pascal_context.py",
        ),
        Benchmark(
            # 459 (one past the last class) marks unlabelled pixels; the official labels have none.
            "context_459_test_sem_seg", f"{_CONTEXT}/JPEGImages",
            f"{_CONTEXT}/annotations_detectron2/pc459_val", ".tif", 459, "pc459",
            "prepare_pascal_context.py",
        ),
        Benchmark(
            # Background is ignored (255): only the 20 object classes are evaluated.
            "voc_2012_test_sem_seg", f"{_VOC}/JPEGImages", f"{_VOC}/annotations_detectron2/val",
            ".png", 255, "voc20", "prepare_voc.py",
        ),
        _voc_background_benchmark(),
    ]


def load_benchmark(benchmark: Benchmark, root: str) -> List[Dict]:
    """List a benchmark's records: one per label file, with the image of the same stem (.jpg).

    The label folder drives the list, so images without labels (the rest of VOC's or Pascal
    Context's JPEGImages) are left out, and so are the VOC images whose label the prepare script
    skipped for being entirely ignored.
    """
    image_dir = os.path.join(root, benchmark.image_dir)
    label_dir = os.path.join(root, benchmark.label_dir)
    for folder in (label_dir, image_dir):
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"Dataset '{benchmark.name}' expects the folder {os.path.abspath(folder)}, which "
                f"does not exist. Prepare it with `python datasets/{benchmark.prepare_script}` "
                "(see datasets/README.md), or point $DETECTRON2_DATASETS at the folder that holds "
                f"it (now: {os.path.abspath(root)})."
            )
    label_names = sorted(n for n in os.listdir(label_dir) if n.endswith(benchmark.label_ext))
    if not label_names:
        raise FileNotFoundError(
            f"Dataset '{benchmark.name}': no *{benchmark.label_ext} label files in {label_dir}. "
            f"Prepare them with `python datasets/{benchmark.prepare_script}`."
        )
    image_names = set(os.listdir(image_dir))
    records = []
    for label_name in label_names:
        stem = label_name[: -len(benchmark.label_ext)]
        image_name = stem + ".jpg"
        if image_name not in image_names:
            raise FileNotFoundError(
                f"Dataset '{benchmark.name}': label {os.path.join(label_dir, label_name)} has no "
                f"image {os.path.join(image_dir, image_name)}."
            )
        records.append(
            {
                "file_name": os.path.join(image_dir, image_name),
                "sem_seg_file_name": os.path.join(label_dir, label_name),
                # Carried by every record so that mappers handle each file's own ignore value,
                # also when training mixes datasets.
                "ignore_label": benchmark.ignore_label,
            }
        )
    return records


def register_benchmark(benchmark: Benchmark, root: str) -> None:
    """Register (or re-register, replacing an earlier registration) one benchmark under root."""
    if benchmark.name in DatasetCatalog.list():
        DatasetCatalog.remove(benchmark.name)
    if benchmark.name in MetadataCatalog.list():
        MetadataCatalog.remove(benchmark.name)
    DatasetCatalog.register(benchmark.name, lambda b=benchmark, r=root: load_benchmark(b, r))
    stuff_classes = load_vocabulary(benchmark.vocabulary)
    MetadataCatalog.get(benchmark.name).set(
        stuff_classes=stuff_classes,
        ignore_label=benchmark.ignore_label,
        evaluator_type="sem_seg",
        image_root=os.path.join(root, benchmark.image_dir),
        sem_seg_root=os.path.join(root, benchmark.label_dir),
        vocabulary=benchmark.vocabulary,
        # The class descriptions the model uses with this vocabulary (prompt_gen/descriptions/).
        descriptions=benchmark_descriptions_file(benchmark.vocabulary),
        eval_classes=benchmark.eval_classes or list(stuff_classes),
        eval_class_map=benchmark.eval_class_map or list(range(len(stuff_classes))),
    )


def datasets_root() -> str:
    """The datasets root: ``$DETECTRON2_DATASETS``, default ``datasets`` (relative to the working
    directory, as in detectron2)."""
    return os.getenv("DETECTRON2_DATASETS", "datasets")


def register_all_benchmarks(root: Optional[str] = None) -> None:
    """Register the eight benchmarks under root (default: :func:`datasets_root`), replacing any
    earlier registration of the same names (tests re-register them under temporary roots)."""
    root = datasets_root() if root is None else root
    for benchmark in benchmarks():
        register_benchmark(benchmark, root)
