"""Finding the descriptions of the names people type in a table of descriptions.

A vocabulary entry may hold synonyms ("cup, mug"); each of them is tried in order and the first one
described wins. Names are compared in lower case with surrounding and repeated whitespace removed:
first as they are, then with simple English plurals reduced to the singular ("cats" -> "cat",
"buses" -> "bus", "berries" -> "berry"), so that a name the tables hold as it is ("glasses", a
synonym of eyeglasses) is not taken for the singular of another ("glass"). A table key with a
parenthesised qualifier ("bow (weapon)") also answers to its bare name ("bow") when no other key
has that bare name.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

_QUALIFIER = re.compile(r"\s*\([^)]*\)\s*$")


def synonyms(entry: str) -> List[str]:
    """The names of a vocabulary entry, first name first ("cup, mug" -> ["cup", "mug"])."""
    return [s.strip() for s in entry.split(",") if s.strip()]


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and re.search(r"(ss|sh|ch|x|z|us)es$", word):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _literal(name: str) -> str:
    return " ".join(name.lower().split())


def normalise(name: str) -> str:
    """The form names are compared in: lower case, single spaces, last word singular."""
    words = name.lower().split()
    if not words:
        return ""
    words[-1] = _singular(words[-1])
    return " ".join(words)


class DescriptionIndex:
    """The keys of one or more descriptions tables by normalised name; earlier tables win."""

    def __init__(self, tables: Iterable[Mapping[str, Mapping[str, str]]]):
        self._literal: Dict[str, Mapping[str, str]] = {}
        self._exact: Dict[str, Mapping[str, str]] = {}
        bare: Dict[str, List[Mapping[str, str]]] = {}
        for table in tables:
            for key, entry in table.items():
                for name in [key, *synonyms(key)]:
                    self._literal.setdefault(_literal(name), entry)
                    self._exact.setdefault(normalise(name), entry)
                for name in synonyms(key):
                    stripped = _QUALIFIER.sub("", name)
                    if stripped != name:
                        bare.setdefault(normalise(stripped), [])
                        if entry not in bare[normalise(stripped)]:
                            bare[normalise(stripped)].append(entry)
        # A bare name answers only when exactly one qualified key has it.
        self._bare = {n: e[0] for n, e in bare.items() if len(e) == 1}

    def find(self, entry: str) -> Optional[Dict[str, str]]:
        """The descriptions of the first name of ``entry`` that has any, or None."""
        names = [entry, *synonyms(entry)]
        for table, form in ((self._literal, _literal), (self._exact, normalise)):
            for name in names:
                if form(name) in table:
                    return dict(table[form(name)])
        for name in synonyms(entry):
            key = normalise(name)
            if key in self._bare:
                return dict(self._bare[key])
        return None


def find_descriptions(
    class_names: Sequence[str], tables: Sequence[Mapping[str, Mapping[str, str]]]
) -> Dict[str, Dict[str, str]]:
    """``{entry: descriptions}`` for the entries of ``class_names`` found in ``tables`` (in order)."""
    index = DescriptionIndex(tables)
    found = {}
    for name in class_names:
        entry = index.find(name)
        if entry is not None:
            found[name] = entry
    return found
