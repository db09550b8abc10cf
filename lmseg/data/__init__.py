"""LMSeg's data: the benchmarks' class lists, benchmark and folder datasets, label reading, the
dataset mapper.

Importing this package registers the eight benchmark datasets of ``datasets/README.md`` under
``$DETECTRON2_DATASETS`` (no dataset file is read until a dataset is listed). Their metadata, and
that of ``sem_seg_folder:<path>`` datasets, holds:

- ``stuff_classes``: the vocabulary given to the model, names exactly as in its JSON file;
- ``ignore_label``: the ignore value of the dataset's label files (255, 459 or 65535);
- ``eval_classes``: the classes evaluated (VOC-20b: the 20 VOC classes and "background");
- ``eval_class_map``: for each vocabulary index, the evaluated class its predictions count as;
- ``vocabulary``: the vocabulary's short name (a folder dataset: the path of its classes.json);
- ``evaluator_type`` ("sem_seg"), ``image_root``, ``sem_seg_root``.
"""
from .dataset_mappers import SemanticSegmentationDatasetMapper
from .datasets import (
    FOLDER_PREFIX,
    benchmarks,
    datasets_root,
    ensure_datasets_registered,
    is_folder_dataset,
    register_all_benchmarks,
    register_folder_dataset,
)
from .labels import read_label
from .vocabularies import BENCHMARK_VOCABULARIES, load_vocabulary

__all__ = [
    "BENCHMARK_VOCABULARIES",
    "FOLDER_PREFIX",
    "SemanticSegmentationDatasetMapper",
    "benchmarks",
    "datasets_root",
    "ensure_datasets_registered",
    "is_folder_dataset",
    "load_vocabulary",
    "read_label",
    "register_all_benchmarks",
    "register_folder_dataset",
]
