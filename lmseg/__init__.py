"""LMSeg: open-vocabulary semantic segmentation with CLIP, SAM and LLM-written class descriptions.

Importing the package registers the ``LMSeg`` meta-architecture with detectron2 and the benchmark
datasets with its catalogs.
"""
import warnings

# detectron2 (2024) and fvcore script a few functions with torch.jit at import, which current
# PyTorch deprecates: a warning about their code, printed at the start of every command, that a
# user of LMSeg can do nothing about.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

from . import data  # noqa: E402,F401  (registers the datasets)
from . import modeling  # noqa: E402,F401  (registers the meta-architecture)
from .api import Segmentation, Segmenter  # noqa: E402
from .config import add_lmseg_config, get_config_file  # noqa: E402
from .modeling import LMSeg  # noqa: E402

__version__ = "0.1.0"

__all__ = ["LMSeg", "Segmentation", "Segmenter", "add_lmseg_config", "get_config_file", "__version__"]
