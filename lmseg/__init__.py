"""LMSeg: open-vocabulary semantic segmentation with CLIP, SAM and LLM-written class descriptions.

Importing the package registers the ``LMSeg`` meta-architecture with detectron2 and the benchmark
datasets with its catalogs.
"""
from . import data  # noqa: F401  (registers the datasets)
from . import modeling  # noqa: F401  (registers the meta-architecture)
from .api import Segmentation, Segmenter
from .config import add_lmseg_config
from .modeling import LMSeg

__version__ = "0.1.0"

__all__ = ["LMSeg", "Segmentation", "Segmenter", "add_lmseg_config", "__version__"]
