"""Checkpoints: LMSeg's own (saved atomically, loaded through detectron2's checkpointer) and
CAT-Seg's published ones, recognised and converted to LMSeg's names on load."""
from .catseg import CatSegFormatError, convert_catseg_to_lmseg, convert_lmseg_to_catseg, is_catseg_state
from .checkpointer import (
    LMSegCheckpointer,
    MissingWeightsError,
    check_weights_file,
    load_catseg_state,
    load_weights,
    pretrained_parts_in,
)

__all__ = [
    "CatSegFormatError",
    "LMSegCheckpointer",
    "MissingWeightsError",
    "check_weights_file",
    "convert_catseg_to_lmseg",
    "convert_lmseg_to_catseg",
    "is_catseg_state",
    "load_catseg_state",
    "load_weights",
    "pretrained_parts_in",
]
