"""Photometric distortion of training images: random brightness, contrast, saturation and hue,
in the manner of SSD's colour augmentation (``INPUT.COLOR_AUG_SSD``).

As everywhere in detectron2, an Augmentation draws the parameters and returns a Transform that
applies them deterministically; labels pass through unchanged.
"""
from typing import Tuple

import cv2
import numpy as np
from detectron2.data import transforms as T


class PhotometricTransform(T.Transform):
    """Change brightness, contrast, saturation and hue of an H x W x 3 uint8 image by fixed amounts.

    Args:
        brightness_delta: added to every channel (0-255 scale).
        contrast: factor on every channel, applied before the HSV changes if ``contrast_first``,
            after them otherwise.
        saturation: factor on the HSV saturation.
        hue_delta: shift of the HSV hue, in degrees.
        contrast_first: order of the contrast change and the HSV changes.
        image_format: "RGB" or "BGR", the channel order of the images.
    """

    def __init__(
        self,
        brightness_delta: float = 0.0,
        contrast: float = 1.0,
        saturation: float = 1.0,
        hue_delta: float = 0.0,
        contrast_first: bool = True,
        image_format: str = "RGB",
    ):
        super().__init__()
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"Photometric distortion needs RGB or BGR images, not {image_format}.")
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        out = img.astype(np.float32) + self.brightness_delta
        if self.contrast_first:
            out *= self.contrast
        if self.saturation != 1.0 or self.hue_delta != 0.0:
            out = self._change_hsv(np.clip(out, 0, 255))
        if not self.contrast_first:
            out *= self.contrast
        return np.clip(out, 0, 255).round().astype(np.uint8)

    def _change_hsv(self, img: np.ndarray) -> np.ndarray:
        # OpenCV's float HSV: H in degrees [0, 360), S and V in [0, 1], from RGB/BGR in [0, 1].
        to_hsv, from_hsv = (
            (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB)
            if self.image_format == "RGB"
            else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)
        )
        hsv = cv2.cvtColor(img / 255.0, to_hsv)
        hsv[..., 0] = (hsv[..., 0] + self.hue_delta) % 360.0
        hsv[..., 1] = np.clip(hsv[..., 1] * self.saturation, 0.0, 1.0)
        return cv2.cvtColor(hsv, from_hsv) * 255.0

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> T.Transform:
        return T.NoOpTransform()


class RandomPhotometricDistortion(T.Augmentation):
    """Draw a :class:`PhotometricTransform`: each of brightness, contrast, saturation and hue
    changes with probability ``prob``, by an amount drawn uniformly from its range."""

    def __init__(
        self,
        brightness_delta: float = 32.0,
        contrast_range: Tuple[float, float] = (0.5, 1.5),
        saturation_range: Tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18.0,
        prob: float = 0.5,
        image_format: str = "RGB",
    ):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> PhotometricTransform:
        def maybe(low: float, high: float, default: float) -> float:
            return float(self._rand_range(low, high)) if self._rand_range() < self.prob else default

        return PhotometricTransform(
            brightness_delta=maybe(-self.brightness_delta, self.brightness_delta, 0.0),
            contrast=maybe(*self.contrast_range, 1.0),
            saturation=maybe(*self.saturation_range, 1.0),
            hue_delta=maybe(-self.hue_delta, self.hue_delta, 0.0),
            contrast_first=bool(self._rand_range() < 0.5),
            image_format=self.image_format,
        )
