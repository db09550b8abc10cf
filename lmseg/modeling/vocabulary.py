"""The vocabulary of a model: its class names, their prompts, and their text embeddings."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Sequence, Tuple

import torch

from .clip_encoder import ClipEncoder
from .prompts import PromptBuilder, TextEmbeddingCache, validate_vocabulary


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

    def set(self, class_names: Sequence[str]) -> None:
        """Validate the names and build their prompts (see ``LMSeg.set_vocabulary``)."""
        names = validate_vocabulary(class_names)
        self.prompts = self.prompt_builder(names)
        self.names = tuple(names)

    @contextmanager
    def using(self, class_names: Sequence[str]) -> Iterator[None]:
        """Temporarily set the vocabulary; the previous one (or none) is restored on exit."""
        previous = self.names
        self.set(class_names)
        try:
            yield
        finally:
            if previous:
                self.set(previous)
            else:
                self.names, self.prompts = (), []

    def embeddings(self, clip: ClipEncoder) -> torch.Tensor:
        """L2-normalised prompt embeddings (T, P, C) from CLIP's text tower.

        Recomputed whenever gradients must flow into a trainable text tower; otherwise cached,
        keyed on the prompts and on the text weights' storage and version.
        """
        if not self.names:
            raise RuntimeError("the model has no vocabulary: call model.set_vocabulary([...class names...]) first")
        t, p = len(self.prompts), self.prompt_builder.num_prompts
        params = clip.text_parameters()

        def compute() -> torch.Tensor:
            flat = [text for prompts in self.prompts for text in prompts]
            return clip.encode_text(flat).view(t, p, -1)

        if torch.is_grad_enabled() and any(q.requires_grad for q in params):
            return compute()
        return self._cache.get(self.prompts, params, compute)
