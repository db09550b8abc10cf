"""Prompts: a vocabulary of class names -> P texts per class -> cached text embeddings (T, P, C)."""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch


def validate_vocabulary(class_names: Sequence[str]) -> List[str]:
    """Check a vocabulary and return it as a list; raises ValueError saying what is wrong.

    A name is one class and may list synonyms separated by ", "; duplicates are judged on the whole
    string, as written.
    """
    if isinstance(class_names, str):
        raise TypeError("the vocabulary must be a list of class names, not one string; split it first")
    names = list(class_names)
    if not names:
        raise ValueError("the vocabulary is empty: give at least one class name")
    bad = [repr(n) for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"class names must be non-empty strings; got {', '.join(bad[:5])}")
    dupes = [n for n, c in Counter(names).items() if c > 1]
    if dupes:
        raise ValueError(f"the vocabulary repeats {', '.join(repr(n) for n in dupes[:10])}: each name must be unique")
    return names


def prompt_name(class_name: str) -> str:
    """The text a class name contributes to its prompts: its first synonym, stripped."""
    return class_name.split(", ")[0].strip()


def load_descriptions(path: str) -> Dict[str, List[str]]:
    """Read a descriptions JSON: {class name: [description, ...]}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.PROMPTS.DESCRIPTIONS={path!r}: no such file")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in data.values()
    ):
        raise ValueError(f"{path}: expected a JSON object mapping class names to lists of descriptions")
    return data


class PromptBuilder:
    """Turns class names into P prompt texts per class.

    The prompts of a class are each template formatted with its name, followed by its descriptions.
    Every class gets the same number P of prompts.

    Args:
        templates: format strings with one "{}" for the class name.
        descriptions: optional {class name: [description, ...]}, the same number per class.
    """

    def __init__(self, templates: Sequence[str], descriptions: Optional[Dict[str, List[str]]] = None):
        for t in templates:
            if t.count("{}") != 1:
                raise ValueError(f"MODEL.PROMPTS.TEMPLATES: {t!r} must contain exactly one '{{}}'")
        self.templates = list(templates)
        self.descriptions = descriptions or {}
        counts = {len(v) for v in self.descriptions.values()}
        if len(counts) > 1:
            raise ValueError(
                f"MODEL.PROMPTS.DESCRIPTIONS: classes have different numbers of descriptions {sorted(counts)}; "
                "every class needs the same number"
            )
        self.num_descriptions = counts.pop() if counts else 0
        if not self.templates and not self.num_descriptions:
            raise ValueError("no prompts: set MODEL.PROMPTS.TEMPLATES or MODEL.PROMPTS.DESCRIPTIONS")

    @property
    def num_prompts(self) -> int:
        return len(self.templates) + self.num_descriptions

    def __call__(self, class_names: Sequence[str]) -> List[List[str]]:
        """P prompts for each class (T lists of P strings)."""
        if self.num_descriptions:
            missing = [n for n in class_names if n not in self.descriptions]
            if missing:
                raise KeyError(
                    f"no descriptions for {len(missing)} classes ({', '.join(repr(n) for n in missing[:5])}"
                    f"{', ...' if len(missing) > 5 else ''}); generate them with prompt_gen or "
                    "set MODEL.PROMPTS.DESCRIPTIONS ''"
                )
        return [
            [t.format(prompt_name(n)) for t in self.templates] + list(self.descriptions.get(n, []))
            for n in class_names
        ]


class TextEmbeddingCache:
    """Remembers the text embeddings of one vocabulary, keyed on everything that decides them.

    The key holds the prompt texts, and for every text-tower parameter its storage and version
    counter (bumped by every in-place update: optimizer steps, ``load_state_dict``), so new weights
    or a new vocabulary are never served stale embeddings.
    """

    def __init__(self):
        self._key: Optional[Tuple] = None
        self._value: Optional[torch.Tensor] = None

    def get(self, prompts: List[List[str]], params: Sequence[torch.Tensor], compute: Callable[[], torch.Tensor]):
        key = (
            tuple(tuple(p) for p in prompts),
            tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params),
            _autocast_state(params[0].device),
        )
        if key != self._key:
            self._value = compute()
            self._key = key
        return self._value

    def clear(self) -> None:
        self._key = self._value = None


def _autocast_state(device: torch.device):
    kind = device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return None
