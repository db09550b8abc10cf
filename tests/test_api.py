"""lmseg.Segmenter: inputs of every kind, vocabularies, results, bounded memory (tiny config)."""
import logging
import re
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import lmseg.api as api
import lmseg.images as images
from lmseg import Segmentation, Segmenter
from lmseg.api import parse_vocabulary
from lmseg.images import InputError

from tests.helpers.model_helpers import REPO, TINY_CONFIG

VOCAB = "sky, grass|lawn ,house,red ball"


@pytest.fixture(scope="module")
def seg():
    torch.manual_seed(0)
    return Segmenter.from_config(TINY_CONFIG)


def _image(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.uint8)
    image[: h // 2] = (90, 150, 230)  # a sky over a lawn, with noise so that several classes win
    image[h // 2 :] = (60, 160, 50)
    return (image + rng.integers(0, 60, image.shape)).clip(0, 255).astype(np.uint8)


def test_result_holds_labels_scores_and_shares_at_the_image_size(seg):
    image = _image()
    result = seg(image, vocabulary=VOCAB, probabilities=True)
    assert isinstance(result, Segmentation)
    assert result.vocabulary == ("sky", "grass, lawn", "house", "red ball")
    assert result.names == ["sky", "grass", "house", "red ball"]
    assert result.label_map.shape == image.shape[:2] and result.label_map.dtype == np.uint8
    # the label map is the argmax of the probabilities resized to the image, and each score the
    # mean winning probability over the class's pixels
    full = F.interpolate(result.probabilities[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    best, labels = full.max(dim=0)
    np.testing.assert_array_equal(result.label_map, labels.numpy())
    for c in range(4):
        mask = labels == c
        assert result.pixel_share[c] == pytest.approx(mask.float().mean().item())
        expected = best[mask].mean().item() if mask.any() else 0.0
        assert result.scores[c] == pytest.approx(expected, rel=1e-5)
    assert result.pixel_share.sum() == pytest.approx(1.0)
    shares = [result.pixel_share[i] for i in result.present]
    assert shares == sorted(shares, reverse=True) and set(result.present) == set(np.unique(result.label_map).tolist())
    np.testing.assert_allclose(result.probability_map("grass"), full[1].numpy(), atol=1e-6)
    summary = result.to_dict()
    assert [p["name"] for p in summary["present"]] == [result.names[i] for i in result.present]
    assert (summary["height"], summary["width"]) == image.shape[:2]


def test_vocabulary_changes_between_calls_and_persists(seg):
    image = _image()
    first = seg(image, vocabulary=["cat"])
    assert first.vocabulary == ("cat",) and not first.label_map.any() and first.pixel_share[0] == 1.0
    seg.set_vocabulary("cat,dog,sofa|couch")
    second = seg(image)
    assert second.vocabulary == ("cat", "dog", "sofa, couch") == seg.vocabulary
    assert second.label_map.max() < 3


def test_vocabulary_parsing_and_refusals():
    assert parse_vocabulary(" cat , sofa | couch,日本語 ") == ["cat", "sofa, couch", "日本語"]
    assert parse_vocabulary(["bed ", "sofa|couch"]) == ["bed ", "sofa, couch"]  # list names kept as given
    for bad, message in [
        ("", "is empty"),
        (" , ", "is empty"),
        ("cat,,sofa", "has an empty name"),
        ("cat, cat", "repeats 'cat'"),
        ([], "vocabulary is empty"),
        (["sofa|"], "empty synonym"),
        (["cat", 3], "class names must be strings"),
    ]:
        with pytest.raises(InputError, match=message):
            parse_vocabulary(bad)


@pytest.mark.parametrize("vocabulary, message", [
    ("cat, Cat", "'Cat' (entry 2) and 'cat' (entry 1) are the same name once case is ignored; drop one"),
    (["cat", " cat "], "' cat ' (entry 2) and 'cat' (entry 1) are the same name once surrounding spaces "
                       "are ignored; drop one"),
    ("cat|kitty, kitty", "'kitty' (entry 2) and 'cat|kitty' (entry 1) both name 'kitty'; merge them as "
                         "'cat|kitty', or drop 'kitty' from one"),
    ("dog, cat|kitty, Kitty|tabby", "'Kitty|tabby' (entry 3) and 'cat|kitty' (entry 2) both name 'Kitty' "
                                    "(as 'kitty', case ignored); merge them as 'cat|kitty|tabby', or "
                                    "drop 'Kitty' from one"),
])
def test_entries_that_share_a_name_are_refused_naming_both(vocabulary, message):
    with pytest.raises(InputError) as err:
        parse_vocabulary(vocabulary)
    assert str(err.value) == f"the vocabulary names a class twice: {message}"


def test_every_clash_is_listed_up_to_five():
    with pytest.raises(InputError) as err:
        parse_vocabulary("cat|kitty, cat, Cat, " + ", ".join(f"x{i}, X{i}" for i in range(5)))
    listed = str(err.value)
    assert "'cat' (entry 2) and 'cat|kitty' (entry 1) both name 'cat'" in listed
    assert "'Cat' (entry 3) and 'cat|kitty' (entry 1) both name 'Cat' (as 'cat', case ignored)" in listed
    assert listed.endswith("; and 2 more") and listed.count("(entry") == 10


def test_a_benchmark_list_is_accepted_as_published():
    from lmseg.data import load_vocabulary

    ade847 = load_vocabulary("ade847")  # shares names between entries: "bag" three times
    assert parse_vocabulary(ade847) == ade847
    with pytest.raises(InputError, match=r"'screen door\|screen' \(entry 58\) and 'blind\|screen' \(entry 52\) both name 'screen'"):
        parse_vocabulary(ade847[:-1])  # no longer the benchmark's list


def test_every_image_kind_gives_the_labels_of_its_rgb_uint8_version(seg, tmp_path):
    seg.set_vocabulary(VOCAB)
    image = _image()
    expected = seg(image).label_map
    path = tmp_path / "x.png"
    Image.fromarray(image).save(path)
    same = {
        "uint16 (scaled)": image.astype(np.uint16) * 257,
        "float in [0, 1]": image / 255.0,
        "float 0-255": image.astype(np.float32),
        "int64 0-255": image.astype(np.int64),
        "RGBA": np.dstack([image, np.full(image.shape[:2], 7, np.uint8)]),
        "PIL": Image.fromarray(image),
        "path": str(path),
        "pathlib": path,
        "tensor CHW": torch.from_numpy(image).permute(2, 0, 1),
        "tensor 1CHW float": torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
        "tensor HWC": torch.from_numpy(image),
    }
    for kind, value in same.items():
        np.testing.assert_array_equal(seg(value).label_map, expected, err_msg=kind)
    gray = image[..., 1]
    gray_labels = seg(np.dstack([gray] * 3)).label_map
    for value in (gray, gray[..., None], Image.fromarray(gray), torch.from_numpy(gray)):
        np.testing.assert_array_equal(seg(value).label_map, gray_labels)
    # a dark float image is read as [0, 1], not as 0-255
    dark = np.full((8, 8, 3), 0.9)
    assert (images.to_rgb(dark) == 230).all() and (images.to_rgb(dark * 255) == 230).all()
    assert (images.to_rgb(np.full((2, 2), 65535, np.uint16)) == 255).all()


@pytest.mark.parametrize(
    "value, message",
    [
        (np.zeros((3, 20, 30), np.uint8), r"channels first\? use array.transpose\(1, 2, 0\)"),
        (np.zeros((2, 20, 30, 3), np.uint8), "a batch"),
        (np.zeros((20, 30, 5), np.uint8), r"expected \(H, W, 3\) RGB"),
        (np.zeros((0, 30, 3), np.uint8), "empty image"),
        (np.full((4, 4, 3), 300, np.int32), r"values in \[300, 300\]: expected 0-255"),
        (np.full((4, 4, 3), -0.5), r"expected \[0, 1\] or 0-255"),
        (np.full((4, 4, 3), np.nan), "NaN"),
        (np.zeros((4, 4), bool), "a mask, not an image"),
        (np.zeros((4, 4, 3), np.complex64), "dtype complex64"),
        ("no/such/file.jpg", "no such file"),
        (12, "cannot segment a int"),
    ],
)
def test_bad_images_are_refused_with_what_is_expected(seg, value, message):
    with pytest.raises(InputError, match=message):
        seg(value, vocabulary="cat")


def test_a_bad_image_in_a_list_is_named_by_its_position(seg):
    with pytest.raises(InputError, match=r"image 2 of 3: an image array of shape \(3, 8, 8\)"):
        seg([_image(), np.zeros((3, 8, 8), np.uint8), _image()], vocabulary="cat")


def test_batch_equals_single_calls_and_sizes_may_differ(seg):
    seg.set_vocabulary(VOCAB)
    images = [_image(), _image(30, 20, seed=1), _image(1, 1, seed=2)]
    seg.batch_size = 2
    batch = seg(images)
    assert isinstance(batch, list) and len(batch) == 3
    for image, result in zip(images, batch):
        np.testing.assert_array_equal(result.label_map, seg(image).label_map)
        assert result.label_map.shape == image.shape[:2]


def test_large_images_are_processed_at_the_test_size_and_labelled_in_bounded_steps(seg, monkeypatch):
    seg.set_vocabulary(VOCAB)
    image = np.tile(_image(), (4, 4, 1))  # 192 x 256, larger than MIN_SIZE_TEST 96
    seen = []
    forward = seg.model.forward
    monkeypatch.setattr(seg.model, "forward", lambda inputs: seen.extend(inputs) or forward(inputs))
    reference = seg(image)
    assert tuple(seen[0]["image"].shape) == (3, 96, 128) == (3, *seg.processing_size(192, 256))
    assert (seen[0]["height"], seen[0]["width"]) == (96, 128)  # scores come at the processing size
    # the same labels when every step holds one row of two classes only
    monkeypatch.setattr(api, "STEP_ELEMENTS", 512)
    small_steps = seg(image)
    np.testing.assert_array_equal(small_steps.label_map, reference.label_map)
    np.testing.assert_allclose(small_steps.scores, reference.scores, rtol=1e-5)
    # a huge vocabulary gets its scores at a smaller size, the labels still at the image's
    monkeypatch.setattr(api, "SCORE_ELEMENTS", 4 * 24 * 32)
    seen.clear()
    shrunk = seg(image)
    assert (seen[0]["height"], seen[0]["width"]) == (24, 32) and shrunk.label_map.shape == (192, 256)
    assert seg.processing_size(1, 10_000) == (1, seg.cfg.INPUT.MAX_SIZE_TEST)  # extreme aspect ratios keep at least a pixel


def test_large_vocabularies_get_wider_label_maps(seg):
    names = [f"class {i}" for i in range(300)]
    result = seg(_image(), vocabulary=names)
    assert result.label_map.dtype == np.uint16 and result.label_map.max() < 300
    assert len(result.scores) == len(result.pixel_share) == 300


def test_cpu_fallback_and_untrained_model_are_each_said_once(caplog, monkeypatch):
    monkeypatch.setattr(api, "_said_cpu", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="lmseg.api"):
        first = Segmenter.from_config(TINY_CONFIG, device="cuda")
        Segmenter.from_config(TINY_CONFIG, device="cuda")
    assert first.device.type == "cpu" and not first.trained
    text = caplog.text
    assert text.count("CUDA is not available: running on the CPU") == 1
    assert "the labels are those of an untrained model" in text
    with pytest.raises(FileNotFoundError, match="config file 'nope.yaml' not found"):
        Segmenter.from_config("nope.yaml")


def test_the_getting_started_python_example_runs_as_written(monkeypatch, capsys):
    readme = (REPO / "GETTING_STARTED.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    example = next(b for b in blocks if "from lmseg import Segmenter" in b)
    monkeypatch.chdir(REPO)
    exec(compile(example, "GETTING_STARTED.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "(400, 600)" and len(lines) >= 2
    assert all(re.fullmatch(r"\S.* of the image, score \d\.\d\d", line) for line in lines[1:])


def test_sixteen_bit_files_are_scaled_not_clipped(tmp_path):
    rgb = np.stack([np.full((4, 5), 65535), np.full((4, 5), 257 * 100), np.full((4, 5), 257 * 3)], -1).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb[..., ::-1])  # OpenCV writes BGR
    Image.fromarray(np.full((4, 5), 257 * 200, np.uint16)).save(tmp_path / "gray16.png")
    assert (images.read_image(tmp_path / "rgb16.png") == (255, 100, 3)).all()
    assert (images.read_image(tmp_path / "gray16.png") == 200).all()


def test_an_image_too_large_to_open_safely_is_refused(tmp_path):
    # a PNG header announcing 20,000 x 20,000 pixels: Pillow's decompression-bomb check stops at it
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 0, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    with pytest.raises(InputError, match="bomb.png: too large to open safely .*downscale it first"):
        images.read_image(path)
