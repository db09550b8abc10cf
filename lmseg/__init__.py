"""LMSeg."""
