"""Prompts: class names -> P prompt texts per class (templates and descriptions).

The descriptions themselves (format, shipped bank, generator) are :mod:`lmseg.descriptions`; the
model's vocabulary and its cached text embeddings are :mod:`lmseg.modeling.class_text`.
"""
from __future__ import annotations

import datetime
import functools
import logging
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from detectron2.utils import comm

from ..descriptions.lookup import find_descriptions
from ..descriptions import (
    ATTRIBUTES,
    Descriptions,
    compose_prompt,
    prompt_name,
    read_descriptions,
    shipped_descriptions_dir,
    validate_descriptions,
)

logger = logging.getLogger(__name__)


# What makes a class's P prompts (MODEL.PROMPTS.TEXTS): the templates, the descriptions, or both.
PROMPT_TEXTS = ("both", "template", "descriptions")
# How the P prompt embeddings enter the cost volume (MODEL.PROMPTS.COMBINE).
COMBINE_MODES = ("channels", "mean")


DescriptionsArg = Union[None, str, Mapping[str, Mapping[str, str]]]


class PromptBuilder:
    """Turns class names into P prompt texts per class, the same P for every class.

    The prompts of a class are its templates (each formatted with the name), then one composed
    description per attribute ("a wall, which is ..."), or only one of the two (``texts``). A class
    that has no description gets a template in its description slots (the templates in turn), and
    one log line names such classes.

    Args:
        templates: format strings with one "{}" for the class name; at least one.
        texts: "both", "template" or "descriptions" (see PROMPT_TEXTS).
        attributes: which descriptions, in order (a subset of lmseg.descriptions.ATTRIBUTES).
        descriptions: where the descriptions of a vocabulary without its own come from: a file, a
            folder of files, or "" for the shipped bank (lmseg/descriptions/data).
        combine: "channels" (P cost channels) or "mean" (one mean embedding, see :meth:`combine`).
        generate: optional ``generate(names, vocabulary) -> descriptions`` asked for the names
            described nowhere (an LLM, see :func:`build_prompt_builder`); what it cannot describe is
            templated. It is called on every look-up, with no names when all are described, so that
            every process of a distributed run takes part in the same exchanges (see :func:`_ask_llm`).
    """

    def __init__(
        self,
        templates: Sequence[str],
        texts: str = "both",
        attributes: Sequence[str] = ATTRIBUTES,
        descriptions: str = "",
        combine: str = "channels",
        generate: Optional[Callable[[List[str], List[str]], Mapping[str, Mapping[str, str]]]] = None,
    ):
        if not templates:
            raise ValueError(
                "MODEL.PROMPTS.TEMPLATES is empty: give at least one template, e.g. ['A photo of a {} in the scene'] "
                "(it also stands in for the descriptions of classes that have none)"
            )
        for t in templates:
            if t.count("{}") != 1:
                raise ValueError(f"MODEL.PROMPTS.TEMPLATES: {t!r} must contain exactly one '{{}}'")
        if texts not in PROMPT_TEXTS:
            raise ValueError(f"MODEL.PROMPTS.TEXTS={texts!r}: expected one of {', '.join(PROMPT_TEXTS)}")
        if combine not in COMBINE_MODES:
            raise ValueError(f"MODEL.PROMPTS.COMBINE={combine!r}: expected one of {', '.join(COMBINE_MODES)}")
        bad = [a for a in attributes if a not in ATTRIBUTES]
        if bad or len(set(attributes)) != len(attributes) or (texts != "template" and not attributes):
            raise ValueError(
                f"MODEL.PROMPTS.ATTRIBUTES={list(attributes)}: expected distinct names among {', '.join(ATTRIBUTES)}"
                + (" (at least one, since MODEL.PROMPTS.TEXTS uses descriptions)" if not attributes else "")
            )
        self.templates = list(templates)
        self.texts = texts
        self.attributes = list(attributes) if texts != "template" else []
        self.descriptions = descriptions
        self.combine_mode = combine
        self.generate = generate
        if descriptions and not os.path.exists(descriptions):
            raise FileNotFoundError(f"MODEL.PROMPTS.DESCRIPTIONS={descriptions!r}: no such file or folder")

    @property
    def num_templates(self) -> int:
        return len(self.templates) if self.texts != "descriptions" else 0

    @property
    def num_prompts(self) -> int:
        """P: prompts per class."""
        return self.num_templates + len(self.attributes)

    @property
    def num_channels(self) -> int:
        """Cost-volume channels per class: P, or 1 when the prompts are averaged."""
        return 1 if self.combine_mode == "mean" else self.num_prompts

    def lookup(self, class_names: Sequence[str], descriptions: DescriptionsArg = None) -> Dict[str, Dict[str, str]]:
        """The descriptions found for ``class_names`` (names described nowhere are absent).

        Looked up in order: ``descriptions`` (a vocabulary's own file or mapping, e.g. a benchmark's),
        then MODEL.PROMPTS.DESCRIPTIONS, then every file of the shipped bank; names are matched as
        :mod:`lmseg.descriptions.lookup` says (synonyms, case, whitespace, plurals).
        """
        tables = []
        if isinstance(descriptions, str):
            if os.path.exists(descriptions):
                tables.append(read_descriptions(descriptions))
            else:
                logger.warning("Descriptions %s not found: the template stands in for them", descriptions)
        elif descriptions is not None:
            tables.append(validate_descriptions(descriptions, source="the descriptions given to set_vocabulary"))
        if self.descriptions:
            tables.append(read_descriptions(self.descriptions))
        bank = shipped_descriptions_dir()
        if bank.is_dir():
            tables.append(read_descriptions(str(bank)))
        found = find_descriptions(list(class_names), tables)
        missing = [n for n in class_names if n not in found]
        if self.generate is not None:
            for name, entry in self.generate(missing, list(class_names)).items():
                if name in missing:
                    found[name] = dict(entry)
        return found

    def __call__(self, class_names: Sequence[str], descriptions: DescriptionsArg = None) -> List[List[str]]:
        """P prompts for each class (T lists of P strings)."""
        names = list(class_names)
        found = self.lookup(names, descriptions) if self.attributes else {}
        missing = [n for n in names if n not in found] if self.attributes else []
        if self.attributes:
            def show(items):
                return ", ".join(repr(n) for n in items[:20]) + (f" and {len(items) - 20} more" if len(items) > 20 else "")

            described = [n for n in names if n in found]
            logger.info(
                "Descriptions for %d of %d classes%s; template only for %d%s. To describe the rest, give a "
                "descriptions file (MODEL.PROMPTS.DESCRIPTIONS, format in lmseg/descriptions/format.py) or set "
                "MODEL.PROMPTS.LLM.ENABLED True",
                len(described), len(names), f" ({show(described)})" if described else "",
                len(missing), f" ({show(missing)})" if missing else "",
            )
        prompts = []
        for name in names:
            short = prompt_name(name)
            own = [t.format(short) for t in self.templates][: self.num_templates]
            entry = found.get(name)
            for i, attribute in enumerate(self.attributes):
                if entry is not None:
                    own.append(compose_prompt(name, entry[attribute]))
                else:
                    own.append(self.templates[i % len(self.templates)].format(short))
            prompts.append(own)
        return prompts

    def combine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(T, P, C) L2-normalised prompt embeddings -> (T, P, C), or (T, 1, C) re-normalised mean."""
        if self.combine_mode == "mean":
            return F.normalize(embeddings.mean(dim=1, keepdim=True), dim=-1)
        return embeddings


def build_prompt_builder(cfg) -> PromptBuilder:
    """The PromptBuilder of a config's MODEL.PROMPTS (with the LLM when MODEL.PROMPTS.LLM.ENABLED)."""
    p = cfg.MODEL.PROMPTS
    generate = None
    if p.LLM.ENABLED:
        generate = functools.partial(
            _ask_llm, model=p.LLM.MODEL, base_url=p.LLM.BASE_URL or None, cache=os.path.expanduser(p.LLM.CACHE)
        )
    return PromptBuilder(p.TEMPLATES, p.TEXTS, list(p.ATTRIBUTES), p.DESCRIPTIONS, p.COMBINE, generate)


def _ask_llm(names: List[str], vocabulary: List[str], *, model: str, base_url: Optional[str], cache: str) -> Descriptions:
    """Descriptions of ``names`` from the LLM cache, asking the LLM (at temperature 0) for the ones
    it lacks; on a failure to get them the reason is logged and the names stay undescribed (templated).

    In a distributed run (a torch.distributed process group of several processes) every process
    calls this for every vocabulary it sets, in the same order (the model is built and evaluated on
    all of them), with no names when it lacks none. The processes first exchange the names they
    lack, which must be the same (or all stop with an error); then the main process alone reads the
    cache and asks the LLM, and a second exchange hands its descriptions to the others, which wait
    for them, so that every process uses the same texts. A failure of the main process is raised on
    every process: none is left waiting.
    """
    if comm.get_world_size() == 1:
        return _describe_with_llm(names, vocabulary, model=model, base_url=base_url, cache=cache) if names else {}
    group = _llm_group()
    lacking = comm.all_gather(list(names), group=group)  # the names of every process, by rank
    disagree = [rank for rank, other in enumerate(lacking) if other != lacking[0]]
    if disagree:
        raise RuntimeError(
            "MODEL.PROMPTS.LLM: the processes lack descriptions for different classes (process 0: "
            f"{lacking[0]}, process {disagree[0]}: {lacking[disagree[0]]}); every process must set the "
            "same vocabularies and read the same descriptions files (MODEL.PROMPTS.DESCRIPTIONS, the "
            "datasets' own, the shipped bank)"
        )
    if not names:
        return {}
    answer, error = None, None
    if comm.is_main_process():
        try:
            answer = _describe_with_llm(names, vocabulary, model=model, base_url=base_url, cache=cache)
        except Exception as e:  # raised below, once the other processes have been told
            error, answer = e, f"{type(e).__name__}: {e}"
    else:
        logger.info("Waiting for the main process to describe %d undescribed classes", len(names))
    answer = comm.all_gather(answer, group=group)[0]  # the main process's descriptions, or why it has none
    if error is not None:
        raise error
    if isinstance(answer, str):
        raise RuntimeError(f"MODEL.PROMPTS.LLM: the main process failed to get the descriptions: {answer}")
    return answer


# How long the other processes wait for the main process's LLM answers: a large undescribed
# vocabulary on a slow server takes far longer than a process group's default timeout (30 min).
LLM_WAIT = datetime.timedelta(hours=24)


_LLM_GROUPS: Dict[int, "torch.distributed.ProcessGroup"] = {}


def _llm_group() -> "torch.distributed.ProcessGroup":
    """A gloo group of every process that waits up to :data:`LLM_WAIT`, made once per process
    group (by every process together, at its first exchange)."""
    world = id(torch.distributed.group.WORLD)
    if world not in _LLM_GROUPS:
        _LLM_GROUPS[world] = torch.distributed.new_group(backend="gloo", timeout=LLM_WAIT)
    return _LLM_GROUPS[world]


def _describe_with_llm(names: List[str], vocabulary: List[str], *, model: str, base_url: Optional[str], cache: str) -> Descriptions:
    """This process's look-up in the cache and request to the LLM (see :func:`_ask_llm`)."""
    from ..descriptions.generator import Endpoint, GeneratorError, RetryPolicy, describe

    endpoint = Endpoint(model=model, base_url=base_url, temperature=0.0)
    logger.info("Looking up %d undescribed classes in %s, asking %s for the missing", len(names), cache, endpoint.url)
    try:
        return describe(names, vocabulary, endpoint, cache, policy=RetryPolicy(retries=3, patience=60.0), log=logger.warning)
    except GeneratorError as e:
        logger.warning("MODEL.PROMPTS.LLM: %s", e)
        return {}
