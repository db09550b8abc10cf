"""Dataset registration: the eight benchmarks (on import) and ``sem_seg_folder:`` datasets."""
from .benchmarks import Benchmark, benchmarks, datasets_root, register_all_benchmarks
from .folder import (
    FOLDER_PREFIX,
    ensure_datasets_registered,
    is_folder_dataset,
    register_folder_dataset,
)

register_all_benchmarks()

__all__ = [
    "Benchmark",
    "FOLDER_PREFIX",
    "benchmarks",
    "datasets_root",
    "ensure_datasets_registered",
    "is_folder_dataset",
    "register_all_benchmarks",
    "register_folder_dataset",
]
