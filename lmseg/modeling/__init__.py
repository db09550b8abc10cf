"""LMSeg's model: one module per stage, strung together by the LMSeg meta-architecture."""
from .clip_encoder import ClipEncoder, build_clip_encoder
from .fusion import FUSION_MODES, FeatureFusion
from .meta_arch import LMSeg
from .sam_encoder import SAM_ARCHS, SamEncoder, build_sam_encoder
from .summary import format_parameter_summary, parameter_summary

__all__ = [
    "LMSeg",
    "ClipEncoder",
    "SamEncoder",
    "FeatureFusion",
    "FUSION_MODES",
    "SAM_ARCHS",
    "build_clip_encoder",
    "build_sam_encoder",
    "parameter_summary",
    "format_parameter_summary",
]
