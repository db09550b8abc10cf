"""The bank of descriptions LMSeg ships, and reading descriptions from files and folders.

The bank is the folder ``lmseg/descriptions/data/``: one ``<vocabulary>.json`` per benchmark
vocabulary (``coco``, ``ade150``, ``ade847``, ``pc59``, ``pc459``, ``voc20``, ``voc20b``), plus
``lvis`` (the 1,203 categories of LVIS v1, keyed by their names and synonyms, "aerosol can, spray
can") and ``everyday`` (everyday names none of the others holds, "bee", "french fries"), each in
the format of :mod:`lmseg.descriptions.format`. It is package data, so it is there wherever LMSeg is
installed.
"""
from __future__ import annotations

import functools
import glob
import os
from pathlib import Path

from .format import Descriptions, load_descriptions


def shipped_descriptions_dir() -> Path:
    """The folder of the shipped descriptions files, ``lmseg/descriptions/data``."""
    return Path(__file__).resolve().parent / "data"


def benchmark_descriptions_file(vocabulary: str) -> str:
    """The shipped descriptions file of a benchmark vocabulary ("coco", "ade150", ...)."""
    return str(shipped_descriptions_dir() / f"{vocabulary}.json")


def read_descriptions(path: str) -> Descriptions:
    """Descriptions from a file, or from every ``*.json`` of a folder (in name order, the first file
    that describes a name wins). Each file is validated; files are re-read only when they change."""
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.json")))
    elif os.path.isfile(path):
        files = [path]
    else:
        raise FileNotFoundError(f"descriptions {path!r}: no such file or folder")
    merged: Descriptions = {}
    for file in files:
        for name, entry in _read_file(file, os.path.getmtime(file)).items():
            merged.setdefault(name, entry)
    return merged


@functools.lru_cache(maxsize=32)
def _read_file(path: str, mtime: float) -> Descriptions:
    return load_descriptions(path)
