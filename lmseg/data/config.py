"""Configuration keys of LMSeg's data pipeline that detectron2's defaults lack."""
from detectron2.config import CfgNode as CN


def add_data_config(cfg: CN) -> None:
    """Add the training mapper's keys to a detectron2 config, in place.

    The mapper also reads detectron2's own INPUT keys: MIN_SIZE_TRAIN, MAX_SIZE_TRAIN,
    MIN_SIZE_TRAIN_SAMPLING, MIN_SIZE_TEST, MAX_SIZE_TEST, CROP.{ENABLED,TYPE,SIZE}, RANDOM_FLIP
    and FORMAT (the model expects "RGB").
    """
    # Largest fraction of a training crop that a single category may cover (ignored pixels not
    # counted): a crop is drawn again, up to 10 times, until no category covers more. 1.0 turns
    # the limit off.
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # Colour augmentation of training images: detectron2's ColorAugSSDTransform (random brightness,
    # contrast, saturation and hue changes, as in SSD), which Mask2Former and CAT-Seg use.
    cfg.INPUT.COLOR_AUG_SSD = False
    # Pad training images and labels at the bottom and right to a multiple of this (labels with the
    # ignore value). <= 0: no padding beyond the crop size (an "absolute" crop larger than the
    # resized image is always padded to the crop size).
    cfg.INPUT.SIZE_DIVISIBILITY = -1
