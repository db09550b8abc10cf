"""prompt_gen: the command line that has an LLM describe the classes of a vocabulary
(``python -m prompt_gen --help``) and checks descriptions files (``python -m prompt_gen.check``).

The generator itself, the format and the shipped descriptions are LMSeg's (:mod:`lmseg.descriptions`);
this package is their command line.
"""
from lmseg.descriptions.generator import (
    Endpoint,
    Generator,
    GeneratorError,
    Report,
    RetryPolicy,
    build_request,
    read_classes,
)

__all__ = ["Endpoint", "Generator", "GeneratorError", "Report", "RetryPolicy", "build_request", "read_classes"]
