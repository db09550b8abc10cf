"""The benchmarks' class lists ("vocabularies"): one JSON list of names per vocabulary, index = label
value.

The benchmark vocabularies live once, beside this module (``lmseg/data/vocabularies/coco.json``,
``ade150.json``, ...), as package data. Names are kept exactly as stored: synonyms separated by ", " and the trailing
space of ADE-150's "bed " are part of the data; only prompt building cleans them.
"""
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import List, Tuple, Union

# Short names of the shipped benchmark vocabularies, with their sizes (checked on loading).
BENCHMARK_VOCABULARIES = {
    "coco": 171,
    "ade150": 150,
    "ade847": 847,
    "pc59": 59,
    "pc459": 459,
    "voc20": 20,
    "voc20b": 59,
}


def vocabulary_dir() -> Path:
    """The folder of the benchmark class lists, ``lmseg/data/vocabularies``."""
    return Path(__file__).resolve().parent


def load_vocabulary(name_or_path: str) -> List[str]:
    """Class names of a vocabulary, in label order.

    Args:
        name_or_path: a benchmark vocabulary's short name (a key of ``BENCHMARK_VOCABULARIES``,
            read from ``lmseg/data/vocabularies/<name>.json``) or the path of a JSON file holding
            a list of class names.
    """
    return list(_load_vocabulary_cached(str(name_or_path)))


@lru_cache(maxsize=None)
def _load_vocabulary_cached(name_or_path: str) -> Tuple[str, ...]:
    if name_or_path in BENCHMARK_VOCABULARIES:
        path = vocabulary_dir() / f"{name_or_path}.json"
    elif name_or_path.endswith(".json") or os.sep in name_or_path or os.path.isfile(name_or_path):
        path = Path(name_or_path)
    else:
        raise KeyError(
            f"Unknown vocabulary {name_or_path!r}: expected one of "
            f"{sorted(BENCHMARK_VOCABULARIES)} or the path of a JSON list of class names."
        )
    names = read_class_list(path)
    expected = BENCHMARK_VOCABULARIES.get(name_or_path)
    if expected is not None and len(names) != expected:
        raise ValueError(f"{path} holds {len(names)} class names, expected {expected}.")
    return tuple(names)


def read_class_list(path: Union[str, "os.PathLike[str]"]) -> List[str]:
    """Read and check a JSON list of class names (non-empty strings); errors name the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            names = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"Class list not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"Cannot read the class list {path}: {e}") from None
    if not isinstance(names, list) or not names:
        raise ValueError(f"{path} must hold a non-empty JSON list of class names.")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{path}: entry {i} is {name!r}, expected a non-empty string.")
    return names
