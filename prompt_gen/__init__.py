"""prompt_gen: have an LLM describe the classes of a vocabulary (``python -m prompt_gen --help``)."""
from .generator import Endpoint, Generator, GeneratorError, Report, RetryPolicy, build_request, read_classes

__all__ = ["Endpoint", "Generator", "GeneratorError", "Report", "RetryPolicy", "build_request", "read_classes"]
