"""The class text of a model: its vocabulary (class names), their prompts, and their cached text
embeddings (T, P, C)."""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ..descriptions.lookup import synonyms
from .clip_encoder import ClipEncoder
from .prompts import DescriptionsArg, PromptBuilder


def validate_vocabulary(class_names: Sequence[str]) -> List[str]:
    """Check a vocabulary and return it as a list; raises ValueError saying what is wrong.

    Every path that takes a vocabulary checks it here: ``LMSeg.set_vocabulary`` (evaluation and
    training included), ``lmseg.Segmenter``, the demo and the web page. An entry is one class and
    may list synonyms separated by ", ". Refused: an empty vocabulary or name, an entry repeated as
    written, and two entries that share a name once case and surrounding whitespace are ignored
    (``cat`` and ``Cat``; ``cat, kitty`` and ``kitty``): two classes of one name cannot be told
    apart (where the name is the first of both, their prompts are the same and the later entry wins
    no pixel). A shipped benchmark's list is accepted as it is, although ADE-847's shares names
    between entries ("bag" three times), since its scores compare with the published ones only
    unchanged.
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
    clashes = _name_clashes(names)
    if clashes and not _is_benchmark_vocabulary(names):
        listed = "; ".join(clashes[:_MAX_CLASHES])
        more = f"; and {len(clashes) - _MAX_CLASHES} more" if len(clashes) > _MAX_CLASHES else ""
        raise ValueError(f"the vocabulary names a class twice: {listed}{more}")
    return names


# Name clashes listed in one error message; the rest are counted.
_MAX_CLASHES = 5


def _name_clashes(names: Sequence[str]) -> List[str]:
    """One sentence per entry that shares a name (case and surrounding whitespace ignored) with an
    earlier entry, naming both entries (numbered from 1) and how to resolve it."""
    owner: Dict[str, int] = {}  # a name, case-folded -> the index of the first entry naming it
    clashes = []
    for j, entry in enumerate(names):
        clash = None
        for name in synonyms(entry):
            i = owner.setdefault(name.casefold(), j)
            if i != j and clash is None:
                clash = i, name
        if clash is None:
            continue
        i, name = clash
        earlier = next(s for s in synonyms(names[i]) if s.casefold() == name.casefold())
        if len(synonyms(names[i])) == len(synonyms(entry)) == 1:
            how = "case is ignored" if earlier != name else "surrounding spaces are ignored"
            clashes.append(
                f"{entry!r} (entry {j + 1}) and {names[i]!r} (entry {i + 1}) are the same name once {how}; drop one"
            )
        else:  # entries shown with "|" between synonyms, as the demos and lmseg.Segmenter take them
            spellings: Dict[str, str] = {}  # the synonyms of both, each name once whatever its case
            for synonym in synonyms(names[i]) + synonyms(entry):
                spellings.setdefault(synonym.casefold(), synonym)
            merged = "|".join(spellings.values())
            spelt = "" if earlier == name else f" (as {earlier!r}, case ignored)"
            later, first = "|".join(synonyms(entry)), "|".join(synonyms(names[i]))
            clashes.append(
                f"{later!r} (entry {j + 1}) and {first!r} (entry {i + 1}) both name {name!r}{spelt}; "
                f"merge them as {merged!r}, or drop {name!r} from one"
            )
    return clashes


def _is_benchmark_vocabulary(names: Sequence[str]) -> bool:
    """Whether the names are a shipped benchmark's class list (synonyms compared stripped)."""
    from ..data.vocabularies import BENCHMARK_VOCABULARIES, load_vocabulary

    cleaned = [synonyms(n) for n in names]
    return any(
        len(names) == size and cleaned == [synonyms(n) for n in load_vocabulary(short)]
        for short, size in BENCHMARK_VOCABULARIES.items()
    )


class Vocabulary:
    """The classes of every forward call, in output order, with their P prompts each.

    Args:
        prompt_builder: turns class names into prompt texts.
    """

    def __init__(self, prompt_builder: PromptBuilder):
        self.prompt_builder = prompt_builder
        self.names: Tuple[str, ...] = ()
        self.prompts: List[List[str]] = []  # T lists of P texts
        self._cache = TextEmbeddingCache()

    def set(self, class_names: Sequence[str], descriptions: DescriptionsArg = None) -> None:
        """Validate the names and build their prompts (see ``LMSeg.set_vocabulary``)."""
        names = validate_vocabulary(class_names)
        self.prompts = self.prompt_builder(names, descriptions)
        self.names = tuple(names)

    @contextmanager
    def using(self, class_names: Sequence[str], descriptions: DescriptionsArg = None) -> Iterator[None]:
        """Temporarily set the vocabulary; the previous one (or none) is restored on exit, prompts
        and all."""
        previous = self.names, self.prompts
        self.set(class_names, descriptions)
        try:
            yield
        finally:
            self.names, self.prompts = previous

    def embeddings(self, clip: ClipEncoder) -> torch.Tensor:
        """L2-normalised prompt embeddings (T, P, C) from CLIP's text tower, all T x P texts in one
        batched pass; (T, 1, C) when the builder averages them (MODEL.PROMPTS.COMBINE "mean").

        Recomputed whenever gradients must flow into a trainable text tower; otherwise cached,
        keyed on the prompts and on the text weights' storage and version.
        """
        if not self.names:
            raise RuntimeError("the model has no vocabulary: call model.set_vocabulary([...class names...]) first")
        t, p = len(self.prompts), self.prompt_builder.num_prompts
        params = clip.text_parameters()

        def compute() -> torch.Tensor:
            flat = [text for prompts in self.prompts for text in prompts]
            return self.prompt_builder.combine(clip.encode_text(flat).view(t, p, -1))

        if torch.is_grad_enabled() and any(q.requires_grad for q in params):
            return compute()
        return self._cache.get(self.prompts, params, compute)


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
