"""Finding the descriptions of the names people type in a table of descriptions.

A vocabulary entry may hold synonyms ("cup, mug"); each of them is tried in order and the first one
described wins, each in the tables in order (the first table that has it wins). Names are compared
in lower case with surrounding and repeated whitespace removed: in each table first as they are,
then with simple English plurals reduced to the singular ("cats" -> "cat", "buses" -> "bus",
"berries" -> "berry"), so that a name a table holds as it is ("glasses", a synonym of eyeglasses)
is not taken for the singular of another ("glass"). A table key with a
parenthesised qualifier ("bow (weapon)") also answers to its bare name ("bow") when no other key
has that bare name.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

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
    """The keys of one or more descriptions tables by name, as written and singular."""

    def __init__(self, tables: Iterable[Mapping[str, Mapping[str, str]]]):
        # per table: its names in lower case as written, and reduced to the singular
        self._tables: List[Tuple[Dict[str, Mapping[str, str]], Dict[str, Mapping[str, str]]]] = []
        bare: Dict[str, List[Mapping[str, str]]] = {}
        for table in tables:
            literal: Dict[str, Mapping[str, str]] = {}
            singular: Dict[str, Mapping[str, str]] = {}
            for key, entry in table.items():
                for name in [key, *synonyms(key)]:
                    literal.setdefault(_literal(name), entry)
                    singular.setdefault(normalise(name), entry)
                for name in synonyms(key):
                    stripped = _QUALIFIER.sub("", name)
                    if stripped != name:
                        bare.setdefault(normalise(stripped), [])
                        if entry not in bare[normalise(stripped)]:
                            bare[normalise(stripped)].append(entry)
            self._tables.append((literal, singular))
        # A bare name answers only when exactly one qualified key has it.
        self._bare = {n: e[0] for n, e in bare.items() if len(e) == 1}

    def find(self, entry: str) -> Optional[Dict[str, str]]:
        """The descriptions of ``entry``, or None: its names in order, each looked up in the tables
        in order, in each as written and then singular; then a qualified key's bare name."""
        for name in [entry, *synonyms(entry)]:
            for literal, singular in self._tables:
                for table, key in ((literal, _literal(name)), (singular, normalise(name))):
                    if key in table:
                        return dict(table[key])
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
