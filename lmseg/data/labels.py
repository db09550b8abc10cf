"""Reading semantic-segmentation label files: 8-bit PNGs and 16-bit PNG/TIFF files.

A label file holds one class index per pixel. 8-bit files (PIL modes "L" and "P", whose palette
indices are the values) carry up to 256 values; 16-bit files (PIL "I;16*" modes, and "I" as older
Pillow versions open 16-bit PNGs) up to 65536. detectron2's own readers convert labels to 8 bits
("L"), which clips 16-bit values, so everything here reads the stored values unchanged.
"""
import os
from typing import Union

import numpy as np
from PIL import Image

# The ignore value of labels without their own convention ("sem_seg_folder:" datasets): the
# largest value of the file's bit depth.
IGNORE_8BIT = 255
IGNORE_16BIT = 65535

PathLike = Union[str, os.PathLike]


def label_bit_depth(mode: str) -> int:
    """Bit depth (8 or 16) of a single-channel label image given its PIL mode."""
    if mode in ("L", "P"):
        return 8
    if mode.startswith("I;16") or mode == "I":
        return 16
    raise ValueError(
        f"PIL mode {mode!r} is not a single-channel 8- or 16-bit label image "
        "(expected class indices stored as grey levels or palette indices)."
    )


def read_label(path: PathLike, dtype: Union[type, str, None] = None) -> np.ndarray:
    """Read a label file as an H x W array of the stored values.

    Args:
        path: a PNG or TIFF label file.
        dtype: numpy dtype of the result; None keeps the file's (uint8 or uint16). The signature
            matches detectron2's ``sem_seg_loading_fn`` (called with ``dtype=int``).
    """
    with Image.open(path) as image:
        label_bit_depth(image.mode)  # rejects RGB, float and other non-label images
        array = np.array(image)
    if array.dtype == np.int32:  # mode "I": a 16-bit PNG opened by an older Pillow
        if array.size and (array.min() < 0 or array.max() > IGNORE_16BIT):
            raise ValueError(f"{path}: values outside the 16-bit range.")
        array = array.astype(np.uint16)
    if dtype is not None:
        array = array.astype(dtype)
    return array
