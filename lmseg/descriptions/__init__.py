"""Class descriptions, in one place, read top to bottom:

- :mod:`.format`: the file format, its validation, and how a description becomes a prompt;
- :mod:`.bank`: the descriptions LMSeg ships (package data) and reading files and folders of them;
- :mod:`.generator`: asking an LLM for descriptions (``python -m prompt_gen`` is its command line).
"""
from .bank import benchmark_descriptions_file, read_descriptions, shipped_descriptions_dir
from .format import (
    ATTRIBUTES,
    CONTEXT_LENGTH,
    DescriptionError,
    Descriptions,
    compose_prompt,
    count_tokens,
    entry_problems,
    load_descriptions,
    prompt_name,
    token_problems,
    validate_descriptions,
)

__all__ = [
    "ATTRIBUTES",
    "CONTEXT_LENGTH",
    "DescriptionError",
    "Descriptions",
    "benchmark_descriptions_file",
    "compose_prompt",
    "count_tokens",
    "entry_problems",
    "load_descriptions",
    "prompt_name",
    "read_descriptions",
    "shipped_descriptions_dir",
    "token_problems",
    "validate_descriptions",
]
