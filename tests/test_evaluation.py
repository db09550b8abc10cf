"""LMSegSemSegEvaluator on hand-made predictions and labels, with exact metric values: VOC-20b's
background mapping, 16-bit TIFF labels (65535 ignored), PC-459's ignore value 459, folders."""
import math
import os

import numpy as np
import pytest
import torch

from lmseg.data import register_all_benchmarks
from lmseg.data.datasets.benchmarks import benchmarks
from lmseg.engine import Trainer
from lmseg.evaluation import LMSegSemSegEvaluator
from tests.helpers.model_helpers import tiny_cfg
from tests.helpers.synthetic_datasets import write_benchmark, write_folder_dataset

BENCHMARKS = {b.name: b for b in benchmarks()}


@pytest.fixture
def root(tmp_path):
    register_all_benchmarks(str(tmp_path))
    yield str(tmp_path)
    register_all_benchmarks()


def _scores(argmax: np.ndarray, num_classes: int) -> torch.Tensor:
    """T x H x W scores whose argmax is the given index map (a runner-up keeps it non-trivial)."""
    scores = torch.rand(num_classes, *argmax.shape, generator=torch.Generator().manual_seed(0))
    scores.scatter_(0, torch.as_tensor(argmax, dtype=torch.int64)[None], 2.0)
    return scores


def _evaluate(name: str, pairs, predictions, vocabulary_size: int):
    evaluator = LMSegSemSegEvaluator(name, distributed=False)
    evaluator.reset()
    for (image, _), argmax in zip(pairs, predictions):
        evaluator.process([{"file_name": image}], [{"sem_seg": _scores(argmax, vocabulary_size)}])
    return evaluator.evaluate()["sem_seg"]


def test_voc_background_predictions_of_index_20_and_more_count_as_background(root):
    # Labels: 0 = aeroplane, 5 = bus, 20 = background, 255 = ignored.
    label = np.array([[0, 20, 255], [5, 20, 20]], np.uint8)
    pairs = write_benchmark(root, BENCHMARKS["voc_2012_test_background_sem_seg"], 1, labels=[label])
    # Vocabulary indices: 35 and 20 are background names (-> 20), 7 (cat) over the ignored pixel,
    # 3 (boat) on a background pixel.
    prediction = np.array([[0, 35, 7], [5, 20, 3]])
    res = _evaluate("voc_2012_test_background_sem_seg", pairs, [prediction], 59)

    # Evaluated classes present: aeroplane (1/1 right), bus (1/1), background (2/3 right, one
    # pixel predicted as boat): IoU 1, 1, 2/3. Boat has no ground truth, so no IoU.
    assert res["IoU-aeroplane"] == pytest.approx(100)
    assert res["IoU-bus"] == pytest.approx(100)
    assert res["IoU-background"] == pytest.approx(200 / 3)
    assert math.isnan(res["IoU-boat"]) and math.isnan(res["IoU-cat"])
    assert res["mIoU"] == pytest.approx(100 * (1 + 1 + 2 / 3) / 3)
    assert res["fwIoU"] == pytest.approx(100 * (1 * 1 + 1 * 1 + 2 / 3 * 3) / 5)
    assert res["mACC"] == pytest.approx(100 * (1 + 1 + 2 / 3) / 3)
    assert res["pACC"] == pytest.approx(100 * 4 / 5)
    assert "IoU-bag" not in res  # vocabulary names that stand for background are not evaluated
    assert len([k for k in res if k.startswith("IoU-")]) == 21


def test_16bit_tiff_labels_with_65535_ignored(root):
    label = np.array([[846, 846, 65535, 300], [300, 300, 0, 65535]], np.uint16)
    pairs = write_benchmark(root, BENCHMARKS["ade20k_full_sem_seg_freq_val_all"], 1, labels=[label])
    prediction = np.array([[846, 300, 5, 300], [300, 300, 0, 846]])
    res = _evaluate("ade20k_full_sem_seg_freq_val_all", pairs, [prediction], 847)

    # 6 valid pixels, one wrong (an 846 predicted as 300): pACC 5/6. Class 846: gt 2, predicted 1,
    # right 1 -> IoU 1/2. Class 300: gt 3, predicted 4, right 3 -> IoU 3/4. Class 0: IoU 1.
    names = [n for n in res if n.startswith("IoU-")]
    assert len(names) == 847
    iou = {i: res[n] for i, n in enumerate(names)}
    assert iou[846] == pytest.approx(50) and iou[300] == pytest.approx(75)
    assert iou[0] == pytest.approx(100) and math.isnan(iou[5])
    assert res["mIoU"] == pytest.approx(100 * (0.5 + 0.75 + 1) / 3)
    assert res["pACC"] == pytest.approx(100 * 5 / 6)
    assert res["mACC"] == pytest.approx(100 * (0.5 + 1 + 1) / 3)


def test_pascal_context_459_ignores_459(root):
    label = np.array([[458, 459], [0, 459]], np.uint16)
    pairs = write_benchmark(root, BENCHMARKS["context_459_test_sem_seg"], 1, labels=[label])
    res = _evaluate("context_459_test_sem_seg", pairs, [np.array([[458, 1], [1, 2]])], 459)
    assert res["pACC"] == pytest.approx(50)
    assert res["mIoU"] == pytest.approx(50)  # class 458: 1, class 0: 0 (its pixel went to 1)


def test_several_images_accumulate(root):
    labels = [np.array([[0, 1]], np.uint8), np.array([[1, 255]], np.uint8)]
    pairs = write_benchmark(root, BENCHMARKS["ade20k_150_test_sem_seg"], 2, labels=labels)
    predictions = [np.array([[0, 0]]), np.array([[1, 149]])]
    res = _evaluate("ade20k_150_test_sem_seg", pairs, predictions, 150)
    # Class 0: gt 1, pred 2, tp 1 -> 1/2. Class 1: gt 2, pred 1, tp 1 -> 1/2.
    assert res["mIoU"] == pytest.approx(50) and res["pACC"] == pytest.approx(100 * 2 / 3)
    assert res["IoU-wall"] == pytest.approx(50)
    assert "BoundaryIoU-wall" in res  # boundary IoU is computed for fewer than 255 classes


def test_folder_dataset_is_registered_by_the_evaluator(tmp_path):
    label = np.array([[0, 1], [1, 255]], np.uint8)
    pairs = write_folder_dataset(str(tmp_path), ["cat", "dog"], [label])
    res = _evaluate(f"sem_seg_folder:{tmp_path}", pairs, [np.array([[0, 1], [0, 0]])], 2)
    assert res["IoU-cat"] == pytest.approx(50) and res["IoU-dog"] == pytest.approx(50)


def test_bad_labels_and_predictions_are_reported(root):
    label = np.array([[0, 150]], np.uint8)  # 150 is neither an ADE-150 class nor 255
    pairs = write_benchmark(root, BENCHMARKS["ade20k_150_test_sem_seg"], 1, labels=[label])
    evaluator = LMSegSemSegEvaluator("ade20k_150_test_sem_seg", distributed=False)
    evaluator.reset()
    inputs = [{"file_name": pairs[0][0]}]
    with pytest.raises(ValueError, match=r"img_000.png has values \[150\]"):
        evaluator.process(inputs, [{"sem_seg": _scores(np.zeros((1, 2), int), 150)}])
    with pytest.raises(ValueError, match="is 3x1, its label"):
        evaluator.process(inputs, [{"sem_seg": _scores(np.zeros((1, 3), int), 150)}])
    with pytest.raises(ValueError, match="scores 20 classes"):
        evaluator.process(inputs, [{"sem_seg": _scores(np.zeros((1, 2), int), 20)}])


def test_each_test_set_writes_to_a_short_folder_of_its_own(tmp_path):
    label = np.array([[0, 1]], np.uint8)
    names, images = [], []
    for parent in ("a", "b"):  # two folders of the same name, a/val and b/val
        pairs = write_folder_dataset(str(tmp_path / parent / "val"), ["cat", "dog"], [label])
        names.append(f"sem_seg_folder:{tmp_path / parent / 'val'}")
        images.append(pairs[0][0])
    cfg = tiny_cfg("OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.TEST", str(tuple(names)))
    for name, image, folder in zip(names, images, ("val", "val-2")):
        evaluator = Trainer.build_evaluator(cfg, name)
        evaluator.reset()
        evaluator.process([{"file_name": image}], [{"sem_seg": _scores(label, 2)}])
        evaluator.evaluate()
        assert (tmp_path / "out" / "inference" / folder / "sem_seg_evaluation.pth").is_file()
    assert sorted(os.listdir(tmp_path / "out" / "inference")) == ["val", "val-2"]
