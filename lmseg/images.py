"""Images as users give them, turned into the RGB uint8 arrays (H, W, 3) the model takes.

Accepted: a file path, a PIL image, a numpy array or a torch tensor. Arrays are RGB (OpenCV's BGR must
be converted first), (H, W, 3), (H, W, 4) (alpha ignored) or (H, W) / (H, W, 1) grayscale; tensors
may also be (3, H, W) / (1, 3, H, W). Values: uint8 as 0-255, uint16 scaled from 0-65535, other
integers if they lie in 0-255, floats in [0, 1] (when every value does) or else 0-255. Anything else
raises :class:`InputError` saying what is expected.
"""
from __future__ import annotations

import os
import warnings
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = Union[str, "os.PathLike[str]", np.ndarray, Image.Image, torch.Tensor]


class InputError(ValueError):
    """An image or vocabulary that cannot be used; the message says what is expected."""


def read_image(path: Union[str, "os.PathLike[str]"]) -> np.ndarray:
    """An image file as an upright RGB uint8 array (H, W, 3).

    EXIF orientation is applied; 16-bit images are scaled (not clipped) to 8 bits; palette,
    grayscale, CMYK and alpha images become RGB (alpha dropped). Raises :class:`InputError` for a
    missing, unreadable, truncated or too large file (Pillow's decompression-bomb limit).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder, not an image")
    try:
        with warnings.catch_warnings():
            # up to twice Pillow's MAX_IMAGE_PIXELS (179 million pixels) opens, without the warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return pil_to_rgb(ImageOps.exif_transpose(img))
    except Image.DecompressionBombError as err:
        raise InputError(f"{path}: too large to open safely ({err}); downscale it first") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image (or a format Pillow cannot read)") from None
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: cannot read the image, truncated or corrupt ({err})") from None


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """A PIL image as an RGB uint8 array (H, W, 3); 16- and 32-bit modes are scaled, not clipped."""
    if img.mode.startswith("I;16"):
        return to_rgb(np.asarray(img).astype(np.uint16))
    if img.mode == "I":  # 32-bit integers: Pillow's mode for some 16-bit files
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise InputError(f"a 32-bit integer image with values in [{values.min()}, {values.max()}]: expected 0-65535")
        return to_rgb(values.astype(np.uint16 if values.size and values.max() > 255 else np.uint8))
    if img.mode == "F":
        return to_rgb(np.asarray(img))
    if img.mode == "P":  # a palette may carry transparency: through RGBA, whose alpha is then dropped
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGB"))


def to_rgb(image: ImageLike) -> np.ndarray:
    """Any accepted image (see the module's docstring) as an RGB uint8 array (H, W, 3)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return pil_to_rgb(image)
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.permute(1, 2, 0)  # (C, H, W), torch's layout, to (H, W, C)
        if array.dtype == torch.bfloat16:
            array = array.float()
        image = array.numpy()
    if not isinstance(image, np.ndarray):
        raise InputError(
            f"cannot segment a {type(image).__name__}: expected a file path, a PIL image, an RGB numpy array "
            "(H, W, 3) or a torch tensor"
        )
    return _array_to_rgb(image)


def _array_to_rgb(a: np.ndarray) -> np.ndarray:
    shape = tuple(a.shape)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = a[..., None].repeat(3, axis=2)
    elif a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    elif not (a.ndim == 3 and a.shape[-1] == 3):
        hint = ""
        if a.ndim == 3 and a.shape[0] in (1, 3, 4):
            hint = " (channels first? use array.transpose(1, 2, 0))"
        elif a.ndim == 4:
            hint = " (a batch? pass a list of images)"
        raise InputError(f"an image array of shape {shape}: expected (H, W, 3) RGB, (H, W, 4), or (H, W) grayscale{hint}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"an empty image array of shape {shape}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.uint16:
        return (a.astype(np.float32) * (255 / 65535) + 0.5).astype(np.uint8)
    if a.dtype == np.bool_:
        raise InputError("a boolean array is a mask, not an image: expected uint8 0-255, uint16, or float in [0, 1]")
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise InputError(
                f"an image of {a.dtype} values in [{lo}, {hi}]: expected 0-255 (or a uint16 array for 16-bit images)"
            )
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise InputError("a float image with NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 255:
            raise InputError(f"a float image with values in [{lo:g}, {hi:g}]: expected [0, 1] or 0-255")
        scale = 255.0 if hi <= 1.0 else 1.0  # every value in [0, 1]: a [0, 1] image
        return (a.astype(np.float32) * scale + 0.5).clip(0, 255).astype(np.uint8)
    raise InputError(f"an image array of dtype {a.dtype}: expected uint8, uint16 or float")
