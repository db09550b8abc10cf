"""The dataset mapper: a dataset record -> the model's input dict (image and label tensors).

Training: resize the short side, random crop with a single-category area limit, detectron2's
SSD colour augmentation, flip, padding to the crop size. Each record's label is read with its stored values (8-
or 16-bit) and the dataset's ignore value (``record["ignore_label"]``, or the metadata's
``ignore_label``) becomes the model's ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``.
At test time (``is_train=False``) it only resizes, as detectron2's ``DatasetMapper`` does, but
keeps 16-bit label values, which ``DatasetMapper`` clips to 8 bits. Evaluation reads label files
itself, so the test-time ``sem_seg`` matters only to code that uses it.
"""
import copy
import logging
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.projects.point_rend import ColorAugSSDTransform

from .datasets import ensure_datasets_registered
from .labels import read_label

__all__ = ["SemanticSegmentationDatasetMapper"]

# Padded image pixels: mid-grey, near the normalisation mean (their labels are ignored anyway).
_IMAGE_PAD_VALUE = 128


class SemanticSegmentationDatasetMapper:
    """Map a record {"file_name", "sem_seg_file_name", ["ignore_label"], ...} to the model input
    {"image": 3 x H x W uint8 tensor, "sem_seg": H x W int64 tensor, "height", "width",
    "file_name"}; "height" and "width" are the original image size (detectron2's convention).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str = "RGB",
        ignore_value: int = 255,
        dataset_ignore_label: Optional[int] = None,
        num_classes: Optional[int] = None,
        pad_size: Optional[Sequence[int]] = None,
        size_divisibility: int = -1,
    ):
        """
        Args:
            is_train: whether the mapper serves training (pads) or testing.
            augmentations: applied in order to image and label.
            image_format: channel order of the output image (detectron2's ``read_image`` format).
            ignore_value: the model's ignore value, which the dataset's ignore value becomes.
            dataset_ignore_label: ignore value of records without an "ignore_label" key.
            num_classes: largest vocabulary among the datasets mapped. In training it must not
                reach ``ignore_value``: the loss would ignore the class of that index. (At test
                time such a class is indistinguishable from ignored pixels in "sem_seg"; the
                evaluator reads the label files, not "sem_seg".)
            pad_size: (h, w) training images and labels are padded to, at least.
            size_divisibility: pad training images and labels to a multiple of this (<= 0: off).
        """
        if is_train and num_classes is not None and num_classes > ignore_value:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE = {ignore_value} is a class index of the data "
                f"({num_classes} classes): set it to a value >= {num_classes}, e.g. 65535."
            )
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_value = ignore_value
        self.dataset_ignore_label = dataset_ignore_label
        self.pad_size = tuple(pad_size) if pad_size is not None else None
        self.size_divisibility = size_divisibility
        mode = "training" if is_train else "inference"
        logging.getLogger(__name__).info(f"[{type(self).__name__}] {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict:
        if is_train:
            names = cfg.DATASETS.TRAIN
            augmentations = [
                T.ResizeShortestEdge(
                    cfg.INPUT.MIN_SIZE_TRAIN,
                    cfg.INPUT.MAX_SIZE_TRAIN,
                    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
                )
            ]
            if cfg.INPUT.CROP.ENABLED:
                augmentations.append(
                    T.RandomCrop_CategoryAreaConstraint(
                        cfg.INPUT.CROP.TYPE,
                        cfg.INPUT.CROP.SIZE,
                        cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                        cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                    )
                )
            if cfg.INPUT.COLOR_AUG_SSD:
                # detectron2's own SSD-style colour augmentation, as Mask2Former and CAT-Seg use it
                augmentations.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
            if cfg.INPUT.RANDOM_FLIP != "none":
                augmentations.append(
                    T.RandomFlip(
                        horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                        vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
                    )
                )
        else:
            names = cfg.DATASETS.TEST
            augmentations = [
                T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")
            ]

        ensure_datasets_registered(names)
        metadata = [MetadataCatalog.get(name) for name in names]
        ignore_labels = {m.ignore_label for m in metadata}
        crop_is_absolute = cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.TYPE == "absolute"
        return {
            "is_train": is_train,
            "augmentations": augmentations,
            "image_format": cfg.INPUT.FORMAT,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "dataset_ignore_label": ignore_labels.pop() if len(ignore_labels) == 1 else None,
            "num_classes": max((len(m.stuff_classes) for m in metadata), default=None),
            "pad_size": cfg.INPUT.CROP.SIZE if is_train and crop_is_absolute else None,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    def __call__(self, dataset_dict: Dict) -> Dict:
        record = copy.deepcopy(dataset_dict)
        image = utils.read_image(record["file_name"], format=self.image_format)
        utils.check_image_size(record, image)  # also sets "height"/"width" if absent

        label_file = record.pop("sem_seg_file_name", None)
        dataset_ignore = record.pop("ignore_label", self.dataset_ignore_label)
        label = None
        if label_file is not None:
            label = self._read_label(label_file, dataset_ignore, image.shape[:2])
        elif self.is_train:
            raise ValueError(f"Training record of {record['file_name']} has no sem_seg_file_name.")

        aug_input = T.AugInput(image, sem_seg=label)
        self.augmentations(aug_input)
        image, label = aug_input.image, aug_input.sem_seg
        if self.is_train:
            image, label = self._pad(image, label)

        # H x W x C -> C x H x W
        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if label is not None:
            record["sem_seg"] = torch.as_tensor(label.astype(np.int64))
        return record

    def _read_label(
        self, label_file: str, dataset_ignore: Optional[int], image_hw: Sequence[int]
    ) -> np.ndarray:
        """The label with the model's ignore value, as uint8 when its values fit (detectron2
        resizes uint8 arrays with PIL) and float32 otherwise (exact below 2**24; resized with
        torch, which has no integer nearest-neighbour resizing)."""
        if dataset_ignore is None:
            raise ValueError(
                f"Unknown ignore value for {label_file}: the record has no 'ignore_label' and "
                "the datasets mapped have different ones."
            )
        stored = read_label(label_file)
        if stored.shape != tuple(image_hw):
            raise ValueError(
                f"Label {label_file} is {stored.shape[1]}x{stored.shape[0]}, its image "
                f"{image_hw[1]}x{image_hw[0]}."
            )
        label = stored.astype(np.int64)
        label[stored == dataset_ignore] = self.ignore_value
        if label.size and label.min() >= 0 and label.max() <= 255:
            return label.astype(np.uint8)
        return label.astype(np.float32)

    def _pad(self, image: np.ndarray, label: Optional[np.ndarray]):
        """Pad at the bottom and right to pad_size and to a multiple of size_divisibility."""
        h, w = image.shape[:2]
        target_h, target_w = h, w
        if self.pad_size is not None:
            target_h, target_w = max(h, self.pad_size[0]), max(w, self.pad_size[1])
        if self.size_divisibility > 0:
            d = self.size_divisibility
            target_h, target_w = -(-target_h // d) * d, -(-target_w // d) * d
        if (target_h, target_w) == (h, w):
            return image, label
        padding = ((0, target_h - h), (0, target_w - w))
        image = np.pad(image, padding + ((0, 0),), constant_values=_IMAGE_PAD_VALUE)
        if label is not None:
            label = np.pad(label, padding, constant_values=self.ignore_value)
        return image, label
