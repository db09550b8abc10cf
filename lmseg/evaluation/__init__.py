"""Evaluation of semantic segmentation on LMSeg's datasets."""
from .sem_seg_evaluation import LMSegSemSegEvaluator

__all__ = ["LMSegSemSegEvaluator"]
