"""The descriptions format: one file format, its validation, and how a description becomes a prompt.

A descriptions file is a JSON object per vocabulary, keyed by the exact vocabulary entry (synonyms
and all, as in the class lists of :mod:`lmseg.data.vocabularies`)::

    {"wall": {"color": "usually painted white, beige or pale grey",
              "shape": "a large flat vertical surface that runs from floor to ceiling",
              "texture": "made of smooth matte plaster, paint, brick or concrete"}}

A description never repeats the class name: :func:`compose_prompt` puts name and description
together ("a wall, which is usually painted white, beige or pale grey"), and every composed prompt
must fit CLIP's context of 77 tokens, counted with CLIP's own tokenizer, so nothing is ever cut.
:func:`validate_descriptions` is the single check used by the generator, the model and the tests.

Run ``python -m prompt_gen.check FILE [--vocabulary <vocabulary>]`` to check a file.
"""
from __future__ import annotations

import functools
import json
import os
import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

# The visual attributes an LLM describes for each class, in prompt order.
ATTRIBUTES = ("color", "shape", "texture")
# CLIP's text context, start and end tokens included.
CONTEXT_LENGTH = 77

Descriptions = Dict[str, Dict[str, str]]


class DescriptionError(ValueError):
    """A descriptions file or object breaks the format; the message lists every problem found."""


def prompt_name(class_name: str) -> str:
    """The text a vocabulary entry contributes to its prompts: its first synonym, stripped."""
    return class_name.split(", ")[0].strip()


def compose_prompt(class_name: str, description: str) -> str:
    """The prompt text of one description: "a wall, which is usually painted white"."""
    name = prompt_name(class_name)
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"{article} {name}, which is {description.strip()}"


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def count_tokens(text: str) -> int:
    """Tokens CLIP's tokenizer gives ``text``, start and end tokens included."""
    return len(_tokenizer().encode(text)) + 2


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def _mentions(text: str, name: str) -> bool:
    """Whether ``name`` occurs in ``text`` as whole words (case-insensitive)."""
    name = _normalised(name)
    if not name:
        return False
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", _normalised(text)) is not None


def entry_problems(class_name: str, entry: object) -> List[str]:
    """What is wrong with one entry (an empty list when nothing is); no tokenizer, no vocabulary."""
    where = repr(class_name)
    if not isinstance(entry, Mapping):
        return [f"{where}: expected an object with keys {', '.join(ATTRIBUTES)}, got {type(entry).__name__}"]
    problems = []
    missing = [a for a in ATTRIBUTES if a not in entry]
    extra = [str(k) for k in entry if k not in ATTRIBUTES]
    if missing:
        problems.append(f"{where}: missing {', '.join(missing)}")
    if extra:
        problems.append(f"{where}: unknown keys {', '.join(extra)} (allowed: {', '.join(ATTRIBUTES)})")
    name = prompt_name(class_name)
    for attribute in ATTRIBUTES:
        text = entry.get(attribute)
        if attribute not in entry:
            continue
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{where}: {attribute} must be a non-empty string")
            continue
        if "\n" in text:
            problems.append(f"{where}: {attribute} must be one line")
        first = _normalised(text).split(" ", 1)[0]
        if first in ("is", "which", "are"):
            problems.append(
                f"{where}: {attribute} starts with {first!r}; write what follows 'a {name}, which is'"
            )
        if _mentions(text, name):
            problems.append(f"{where}: {attribute} repeats the class name {name!r}; the prompt adds it")
    return problems


def token_problems(class_name: str, entry: Mapping[str, str]) -> List[str]:
    """Composed prompts of one (well-formed) entry that do not fit CLIP's context."""
    problems = []
    for attribute in ATTRIBUTES:
        n = count_tokens(compose_prompt(class_name, entry[attribute]))
        if n > CONTEXT_LENGTH:
            problems.append(
                f"{class_name!r}: the {attribute} prompt is {n} tokens, over CLIP's {CONTEXT_LENGTH}; shorten it"
            )
    return problems


def validate_descriptions(
    data: object,
    *,
    source: str = "descriptions",
    vocabulary: Optional[Sequence[str]] = None,
    check_tokens: bool = True,
    max_problems: int = 20,
) -> Descriptions:
    """Check descriptions and return them as ``{entry: {attribute: text}}``; raises
    :class:`DescriptionError` listing every problem (up to ``max_problems`` of them).

    With ``vocabulary``, every entry of it must be described and no other entry may appear, and no
    two entries may share the text of an attribute (the descriptions must tell classes apart).
    """
    if isinstance(data, Mapping) and data and all(isinstance(v, list) for v in data.values()):
        raise DescriptionError(
            f"{source}: this is the old list format ({{class: [text, ...]}}); write each class as "
            f'{{"color": "...", "shape": "...", "texture": "..."}} (e.g. regenerate it with '
            "python -m prompt_gen, see prompt_gen/README.md)"
        )
    if not isinstance(data, Mapping):
        raise DescriptionError(f"{source}: expected a JSON object mapping class names to descriptions")
    problems: List[str] = []
    for name, entry in data.items():
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{name!r}: class names must be non-empty strings")
            continue
        found = entry_problems(name, entry)
        problems += found
        if not found and check_tokens:
            problems += token_problems(name, entry)
    if vocabulary is not None:
        wanted = list(vocabulary)
        missing = [n for n in wanted if n not in data]
        unknown = [n for n in data if n not in set(wanted)]
        if missing:
            problems.append(f"{len(missing)} entries of the vocabulary have no description: {_listed(missing)}")
        if unknown:
            problems.append(f"{len(unknown)} entries are not in the vocabulary: {_listed(unknown)}")
        problems += _shared_texts(data)
    if problems:
        shown = problems[:max_problems]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise DescriptionError(f"{source}: {len(problems)} problems:\n  " + "\n  ".join(shown) + more)
    return {name: {a: entry[a].strip() for a in ATTRIBUTES} for name, entry in data.items()}


def _shared_texts(data: Mapping[str, Mapping[str, str]]) -> List[str]:
    problems = []
    for attribute in ATTRIBUTES:
        seen: Dict[str, str] = {}
        for name, entry in data.items():
            text = entry.get(attribute) if isinstance(entry, Mapping) else None
            if not isinstance(text, str):
                continue
            key = _normalised(text)
            if key in seen:
                problems.append(f"{seen[key]!r} and {name!r} share the {attribute} description {text!r}")
            else:
                seen[key] = name
    return problems


def _listed(names: Iterable[str], limit: int = 5) -> str:
    names = list(names)
    head = ", ".join(repr(n) for n in names[:limit])
    return head + (", ..." if len(names) > limit else "")


def load_descriptions(path: str, vocabulary: Optional[Sequence[str]] = None) -> Descriptions:
    """Read and validate a descriptions JSON file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such descriptions file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DescriptionError(f"{path}: not valid JSON ({e})") from None
    return validate_descriptions(data, source=path, vocabulary=vocabulary)
