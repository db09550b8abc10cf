"""Semantic-segmentation evaluation over a dataset's evaluated classes.

detectron2's ``SemSegEvaluator`` takes its classes and ignore value from the metadata but
evaluates the vocabulary itself (``stuff_classes``). Open-vocabulary benchmarks may evaluate other
classes than the model predicts: VOC-20b gives the model 59 names and evaluates 21 classes, every
prediction of index 20 or more counting as background. This evaluator argmaxes the model's scores
over the vocabulary, maps the winning index through ``eval_class_map`` and scores it against the
labels over ``eval_classes``, reading labels with their stored values (8- or 16-bit PNG/TIFF) and
ignoring the dataset's ``ignore_label``. It reports what ``SemSegEvaluator`` reports: mIoU, fwIoU,
mACC, pACC, per-class IoU and accuracy (and boundary IoU for fewer than 255 classes).
"""
from typing import Dict, List, Optional

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import SemSegEvaluator

from ..data import ensure_datasets_registered, read_label


class LMSegSemSegEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` over the metadata's ``eval_classes`` and ``eval_class_map``."""

    def __init__(
        self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None
    ):
        """
        Args:
            dataset_name: a registered dataset (or a ``sem_seg_folder:`` name, registered here)
                whose metadata has ``stuff_classes`` and ``ignore_label``; ``eval_classes`` and
                ``eval_class_map`` default to the vocabulary and the identity.
            distributed: gather results from all processes before evaluating.
            output_dir: where ``sem_seg_predictions.json`` and ``sem_seg_evaluation.pth`` go.
        """
        ensure_datasets_registered([dataset_name])
        super().__init__(dataset_name, distributed, output_dir, sem_seg_loading_fn=read_label)
        meta = MetadataCatalog.get(dataset_name)
        vocabulary_size = len(meta.stuff_classes)
        self._class_names: List[str] = list(getattr(meta, "eval_classes", meta.stuff_classes))
        self._num_classes = len(self._class_names)
        class_map = np.asarray(getattr(meta, "eval_class_map", range(vocabulary_size)))
        if class_map.shape != (vocabulary_size,) or not (
            (class_map >= 0) & (class_map < self._num_classes)
        ).all():
            raise ValueError(
                f"Dataset '{dataset_name}': eval_class_map must give, for each of the "
                f"{vocabulary_size} vocabulary entries, an evaluated class in "
                f"0..{self._num_classes - 1}."
            )
        self._eval_class_map = class_map.astype(np.int64)
        # Boundary IoU works on uint8 masks whose value num_classes marks ignored pixels.
        self._compute_boundary_iou = self._num_classes < np.iinfo(np.uint8).max

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        """
        Args:
            inputs: the model's inputs, each with the "file_name" of a dataset record.
            outputs: the model's outputs, each with "sem_seg": a T x H x W score tensor over the
                vocabulary (T entries) at the label's resolution.
        """
        n = self._num_classes
        for input, output in zip(inputs, outputs):
            scores = output["sem_seg"]
            if scores.shape[0] != len(self._eval_class_map):
                raise ValueError(
                    f"{input['file_name']}: the prediction scores {scores.shape[0]} classes, the "
                    f"vocabulary of {self._dataset_name} has {len(self._eval_class_map)}."
                )
            pred = self._eval_class_map[scores.argmax(dim=0).to(self._cpu_device).numpy()]
            gt_file = self.input_file_to_gt_file[input["file_name"]]
            gt = self.sem_seg_loading_fn(gt_file, dtype=np.int64)
            if gt.shape != pred.shape:
                raise ValueError(
                    f"Prediction for {input['file_name']} is {pred.shape[1]}x{pred.shape[0]}, its "
                    f"label {gt_file} is {gt.shape[1]}x{gt.shape[0]}."
                )
            ignored = gt == self._ignore_label
            invalid = ~ignored & ((gt < 0) | (gt >= n))
            if invalid.any():
                raise ValueError(
                    f"Label {gt_file} has values {np.unique(gt[invalid])[:10].tolist()} that are "
                    f"neither classes (0..{n - 1}) nor the ignore value {self._ignore_label}."
                )
            gt[ignored] = n  # the extra row/column of the confusion matrix, left out of metrics

            # Rows: prediction, columns: ground truth (as in SemSegEvaluator).
            self._conf_matrix += np.bincount(
                (n + 1) * pred.reshape(-1) + gt.reshape(-1), minlength=self._conf_matrix.size
            ).reshape(self._conf_matrix.shape)
            if self._compute_boundary_iou:
                b_gt = self._mask_to_boundary(gt.astype(np.uint8))
                b_pred = self._mask_to_boundary(pred.astype(np.uint8))
                self._b_conf_matrix += np.bincount(
                    (n + 1) * b_pred.reshape(-1) + b_gt.reshape(-1),
                    minlength=self._conf_matrix.size,
                ).reshape(self._conf_matrix.shape)
            self._predictions.extend(self.encode_json_sem_seg(pred, input["file_name"]))
