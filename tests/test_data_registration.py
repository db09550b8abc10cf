"""Dataset registration: the eight benchmarks on synthetic copies of their layouts, vocabularies,
and ``sem_seg_folder:`` datasets with their error reports."""
import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser

import train_net
from lmseg.data import (
    BENCHMARK_VOCABULARIES,
    benchmarks,
    ensure_datasets_registered,
    load_vocabulary,
    read_label,
    register_all_benchmarks,
    register_folder_dataset,
)
from lmseg.engine import Trainer
from tests.helpers.model_helpers import TINY_CONFIG, tiny_cfg
from tests.helpers.synthetic_datasets import write_benchmark, write_folder_dataset, write_image, write_label

BENCHMARKS = {b.name: b for b in benchmarks()}
EXPECTED = {
    # name: (vocabulary, vocabulary size, evaluated classes, ignore value, label suffix)
    "coco_2017_train_stuff_all_sem_seg": ("coco", 171, 171, 255, ".png"),
    "coco_2017_test_stuff_all_sem_seg": ("coco", 171, 171, 255, ".png"),
    "ade20k_150_test_sem_seg": ("ade150", 150, 150, 255, ".png"),
    "ade20k_full_sem_seg_freq_val_all": ("ade847", 847, 847, 65535, ".tif"),
    "context_59_test_sem_seg": ("pc59", 59, 59, 255, ".png"),
    "context_459_test_sem_seg": ("pc459", 459, 459, 459, ".tif"),
    "voc_2012_test_sem_seg": ("voc20", 20, 20, 255, ".png"),
    "voc_2012_test_background_sem_seg": ("voc20b", 59, 21, 255, ".png"),
}


@pytest.fixture
def benchmark_root(tmp_path):
    """The benchmarks registered under an empty temporary root; the usual root afterwards."""
    register_all_benchmarks(str(tmp_path))
    yield str(tmp_path)
    register_all_benchmarks()


def test_the_eight_benchmarks_are_registered_on_import():
    assert set(EXPECTED) == set(BENCHMARKS)
    assert set(EXPECTED) <= set(DatasetCatalog.list())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_loads_from_its_layout(benchmark_root, name):
    vocabulary, size, num_eval, ignore, suffix = EXPECTED[name]
    pairs = write_benchmark(benchmark_root, BENCHMARKS[name], num_images=2)
    # Images without labels (the rest of VOC's JPEGImages) are not part of the dataset.
    write_image(os.path.join(benchmark_root, BENCHMARKS[name].image_dir, "unlabelled.jpg"), 8, 8)

    records = DatasetCatalog.get(name)
    assert [(r["file_name"], r["sem_seg_file_name"]) for r in records] == pairs
    assert all(r["ignore_label"] == ignore for r in records)
    label = read_label(records[0]["sem_seg_file_name"])
    assert label.dtype == (np.uint16 if suffix == ".tif" else np.uint8)
    assert records[0]["sem_seg_file_name"].endswith(suffix)

    meta = MetadataCatalog.get(name)
    assert meta.stuff_classes == load_vocabulary(vocabulary) and len(meta.stuff_classes) == size
    assert meta.vocabulary == vocabulary
    assert meta.ignore_label == ignore
    assert meta.evaluator_type == "sem_seg"
    assert meta.image_root == os.path.join(benchmark_root, BENCHMARKS[name].image_dir)
    assert meta.sem_seg_root == os.path.join(benchmark_root, BENCHMARKS[name].label_dir)
    assert len(meta.eval_classes) == num_eval
    assert len(meta.eval_class_map) == size
    if name != "voc_2012_test_background_sem_seg":
        assert meta.eval_classes == meta.stuff_classes
        assert meta.eval_class_map == list(range(size))


def test_voc_background_metadata():
    meta = MetadataCatalog.get("voc_2012_test_background_sem_seg")
    assert meta.stuff_classes[:20] == load_vocabulary("voc20")
    assert meta.eval_classes == load_vocabulary("voc20") + ["background"]
    assert meta.eval_class_map == list(range(20)) + [20] * 39


def test_vocabulary_names_are_kept_as_stored():
    ade150 = load_vocabulary("ade150")
    assert "bed " in ade150 and ade150.index("bed ") == 7
    ade847 = load_vocabulary("ade847")
    assert ade847[1] == "building, edifice"
    assert sum(name.split(", ")[0] == "bag" for name in ade847) == 3
    for name, size in BENCHMARK_VOCABULARIES.items():
        assert len(load_vocabulary(name)) == size


def test_vocabulary_from_path_and_errors(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(["cat", "dog"]))
    assert load_vocabulary(str(path)) == ["cat", "dog"]
    with pytest.raises(KeyError, match="Unknown vocabulary"):
        load_vocabulary("no_such_vocabulary")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_vocabulary(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_vocabulary(str(tmp_path / "missing.json"))


@pytest.mark.parametrize(
    "name, folder, script",
    [
        ("ade20k_full_sem_seg_freq_val_all", "ADE20K_2021_17_01/annotations_detectron2/validation",
         "prepare_ade20k_full.py"),
        ("context_459_test_sem_seg", "VOCdevkit/VOC2010/annotations_detectron2/pc459_val",
         "prepare_pascal_context.py"),
        ("voc_2012_test_sem_seg", "VOCdevkit/VOC2012/annotations_detectron2/val", "prepare_voc.py"),
        ("coco_2017_train_stuff_all_sem_seg", "coco-stuff/annotations_detectron2/train2017",
         "prepare_coco_stuff.py"),
        ("ade20k_150_test_sem_seg", "ADEChallengeData2016/annotations_detectron2/validation",
         "prepare_ade20k_150.py"),
    ],
)
def test_missing_benchmark_names_folder_and_script(benchmark_root, name, folder, script):
    with pytest.raises(FileNotFoundError) as error:
        DatasetCatalog.get(name)
    assert os.path.join(benchmark_root, folder) in str(error.value)
    assert f"datasets/{script}" in str(error.value)


def test_label_without_image_is_reported(benchmark_root):
    benchmark = BENCHMARKS["voc_2012_test_sem_seg"]
    write_benchmark(benchmark_root, benchmark, num_images=1)
    orphan = os.path.join(benchmark_root, benchmark.label_dir, "orphan.png")
    write_label(orphan, np.zeros((4, 4), np.uint8))
    with pytest.raises(FileNotFoundError, match="orphan.jpg"):
        DatasetCatalog.get(benchmark.name)


# ---------------------------------------------------------------------------------------------
# sem_seg_folder: datasets


def _folder_name(path) -> str:
    return f"sem_seg_folder:{path}"


def _register(path):
    name = _folder_name(path)
    ensure_datasets_registered([name])
    return name


def test_folder_dataset_8bit(tmp_path):
    labels = [np.array([[0, 1], [2, 255]], np.uint8), np.array([[2, 2], [1, 0]], np.uint8)]
    pairs = write_folder_dataset(str(tmp_path), ["sky", "road", "tree"], labels)
    name = _register(tmp_path)
    records = DatasetCatalog.get(name)
    assert [(r["file_name"], r["sem_seg_file_name"]) for r in records] == pairs
    assert all((r["height"], r["width"], r["ignore_label"]) == (2, 2, 255) for r in records)
    meta = MetadataCatalog.get(name)
    assert meta.stuff_classes == meta.eval_classes == ["sky", "road", "tree"]
    assert meta.ignore_label == 255 and meta.eval_class_map == [0, 1, 2]
    assert meta.vocabulary == str(tmp_path / "classes.json")
    assert load_vocabulary(meta.vocabulary) == ["sky", "road", "tree"]
    # Listing again returns fresh records (callers may modify theirs).
    records[0]["file_name"] = "changed"
    assert DatasetCatalog.get(name)[0]["file_name"] == pairs[0][0]


def test_folder_dataset_16bit_and_image_formats(tmp_path):
    classes = [f"class {i}" for i in range(300)]
    labels = [np.array([[0, 299], [256, 65535]], np.uint16)]
    write_folder_dataset(str(tmp_path), classes, labels, image_ext=".png")
    name = _register(tmp_path)
    assert MetadataCatalog.get(name).ignore_label == 65535
    (record,) = DatasetCatalog.get(name)
    assert record["file_name"].endswith(".png") and record["ignore_label"] == 65535
    assert read_label(record["sem_seg_file_name"]).tolist() == [[0, 299], [256, 65535]]


def test_8bit_folder_with_too_many_classes_is_refused(tmp_path):
    write_folder_dataset(str(tmp_path), [str(i) for i in range(256)], [np.zeros((2, 2), np.uint8)])
    with pytest.raises(ValueError, match="16-bit"):
        _register(tmp_path)


def _problem(tmp_path) -> str:
    name = _register(tmp_path)
    with pytest.raises(ValueError) as error:
        DatasetCatalog.get(name)
    return str(error.value)


def test_folder_missing_label_is_reported(tmp_path):
    write_folder_dataset(str(tmp_path), ["a", "b"], [np.zeros((2, 2), np.uint8)] * 2)
    os.remove(tmp_path / "labels" / "sample_001.png")
    message = _problem(tmp_path)
    assert "missing label" in message and str(tmp_path / "labels" / "sample_001.png") in message


def test_folder_value_out_of_range_is_reported(tmp_path):
    labels = [np.zeros((2, 2), np.uint8), np.array([[0, 1], [2, 7]], np.uint8)]
    write_folder_dataset(str(tmp_path), ["a", "b"], labels)
    message = _problem(tmp_path)
    assert str(tmp_path / "labels" / "sample_001.png") in message
    assert "[2, 7]" in message and "sample_000" not in message


def test_folder_unreadable_image_and_label_are_reported(tmp_path):
    write_folder_dataset(str(tmp_path), ["a", "b"], [np.zeros((2, 2), np.uint8)] * 3)
    (tmp_path / "images" / "sample_000.jpg").write_bytes(b"not an image")
    (tmp_path / "labels" / "sample_002.png").write_bytes(b"not a label")
    message = _problem(tmp_path)
    assert "unreadable image " + str(tmp_path / "images" / "sample_000.jpg") in message
    assert "unreadable label " + str(tmp_path / "labels" / "sample_002.png") in message


def test_folder_rgb_label_and_size_mismatch_are_reported(tmp_path):
    write_folder_dataset(str(tmp_path), ["a", "b"], [np.zeros((2, 2), np.uint8)] * 3)
    write_image(str(tmp_path / "labels" / "sample_001.png"), 2, 2)  # RGB, not class indices
    write_label(str(tmp_path / "labels" / "sample_002.png"), np.zeros((3, 2), np.uint8))
    message = _problem(tmp_path)
    assert "unreadable label " + str(tmp_path / "labels" / "sample_001.png") in message
    assert "RGB" in message
    assert str(tmp_path / "labels" / "sample_002.png") + " is 2x3" in message


def _mixed_folder(path, depths: str) -> str:
    """A folder dataset whose labels sample_000, sample_001, ... have the bit depths of depths
    ("8" or "F" for 16 each); returns the registration's error message."""
    labels = [np.zeros((2, 2), np.uint16 if d == "F" else np.uint8) for d in depths]
    write_folder_dataset(str(path), ["a", "b"], labels)
    with pytest.raises(ValueError) as error:
        _register(path)  # refused at registration, before anything lists the dataset or builds a model
    return str(error.value)


def test_folder_mixing_8_and_16_bit_labels_names_the_odd_files(tmp_path):
    # the first label (alphabetically) is the odd one: the 8-bit majority decides
    message = _mixed_folder(tmp_path / "one", "F888")
    assert f"mixes label bit depths in {tmp_path / 'one' / 'labels'}: 3 files are 8-bit and 1 is 16-bit" in message
    assert "(the 16-bit ones: sample_000.png)" in message and "sample_001" not in message
    assert "store every label with one bit depth" in message
    # up to five of the fewer are named, the rest counted
    message = _mixed_folder(tmp_path / "many", "FFFFFF88888888")
    assert "8 files are 8-bit and 6 are 16-bit (the 16-bit ones: sample_000.png, sample_001.png, " \
           "sample_002.png, sample_003.png, sample_004.png and 1 more)" in message
    assert "sample_006" not in message
    # a tie names both
    message = _mixed_folder(tmp_path / "tie", "8F")
    assert "(the 8-bit ones: sample_000.png; the 16-bit ones: sample_001.png)" in message


def test_a_folder_of_mixed_bit_depths_stops_training_before_the_model_is_built(tmp_path, monkeypatch):
    write_folder_dataset(str(tmp_path), ["a", "b"], [np.zeros((2, 2), np.uint16), np.zeros((2, 2), np.uint8),
                                                     np.zeros((2, 2), np.uint8)])

    def no_build(cfg):
        raise AssertionError("the model was built before the dataset was checked")

    monkeypatch.setattr(Trainer, "build_model", classmethod(lambda cls, cfg: no_build(cfg)))
    cfg = tiny_cfg("DATASETS.TRAIN", f'("{_folder_name(tmp_path)}",)', "OUTPUT_DIR", str(tmp_path / "out"))
    with pytest.raises(ValueError, match="2 files are 8-bit and 1 is 16-bit"):
        Trainer(cfg)
    # an evaluation too, with the folder as its test set
    args = default_argument_parser().parse_args(
        ["--config-file", TINY_CONFIG, "--eval-only", "DATASETS.TRAIN", "()",
         "DATASETS.TEST", f'("{_folder_name(tmp_path)}",)', "OUTPUT_DIR", str(tmp_path / "eval")])
    with pytest.raises(ValueError, match="2 files are 8-bit and 1 is 16-bit"):
        train_net.main(args)


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "classes.json"),
        ("[1, 2", "classes.json"),
        ('{"a": 1}', "list"),
        ('["a", ""]', "entry 1"),
    ],
)
def test_folder_bad_classes_json_is_reported(tmp_path, content, expected):
    write_folder_dataset(str(tmp_path), ["a"], [np.zeros((2, 2), np.uint8)])
    classes = tmp_path / "classes.json"
    if content is None:
        classes.unlink()
    else:
        classes.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        register_folder_dataset(_folder_name(tmp_path))
    assert str(classes) in str(error.value) and expected in str(error.value)


def test_folder_without_images_folder_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="images"):
        register_folder_dataset(_folder_name(tmp_path))


def test_ensure_registered_rejects_unknown_names():
    with pytest.raises(KeyError, match="sem_seg_folder:<path>"):
        ensure_datasets_registered(["no_such_dataset"])
    ensure_datasets_registered(["ade20k_150_test_sem_seg"])  # registered: nothing to do
