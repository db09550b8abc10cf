"""demo/demo.py end to end on the tiny config: outputs, legends, bad inputs, vocabularies, video,
the default model's download and its offline fallback, and agreement with lmseg.Segmenter."""
import functools
import http.server
import io
import json
import os
import re
import resource
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from lmseg import Segmenter
from lmseg.images import read_image
from lmseg.visualize import _font_path_for, _font_paths, draw_overlay

from tests.helpers.model_helpers import REPO, TINY_CONFIG, tiny_cfg

VOCAB = " sky , grass|lawn,house, red ball "
VOCAB_NAMES = ["sky", "grass, lawn", "house", "red ball"]


from lmseg.demo import cli as demo
from lmseg.demo import common as demo_common


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny model's checkpoint, so that the demo's process and the test's model are the same."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, path)
    return str(path)


def _run(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "demo/demo.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _photo(h, w, seed=0):
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.uint8)
    image[: h // 2] = (90, 150, 230)
    image[h // 2 :] = (60, 160, 50)
    return (image + rng.integers(0, 60, image.shape)).clip(0, 255).astype(np.uint8)


def _save(path, image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _check_outputs(stem, size, names=VOCAB_NAMES):
    """Every output of one image exists at the input's size; the JSON, the label PNG and the legend
    agree on the classes present. Returns the label map."""
    overlay = Image.open(f"{stem}.overlay.jpg")
    labels = np.asarray(Image.open(f"{stem}.labels.png"))
    summary = json.loads(open(f"{stem}.json", encoding="utf-8").read())
    assert overlay.size[::-1] == labels.shape == size == (summary["height"], summary["width"])
    assert summary["vocabulary"] == names
    present = {p["index"] for p in summary["present"]}
    assert present == set(np.unique(labels).tolist())
    shares = {p["index"]: p["pixel_share"] for p in summary["present"]}
    for i in present:
        assert shares[i] == pytest.approx((labels == i).mean(), abs=1e-6)
    legend = summary["legend"]["shown"] + summary["legend"]["summarised"]
    assert legend == [p["name"] for p in summary["present"]]  # exactly the classes present, largest first
    return labels


@pytest.mark.slow
def test_every_image_is_written_at_its_size_bad_ones_skipped_and_the_api_agrees(tmp_path, weights):
    src = tmp_path / "photos"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated by 90 degrees
    good = {
        "a/x.jpg": ((48, 64), _save(src / "a/x.jpg", Image.fromarray(_photo(48, 64)))),
        "b/x.jpg": ((40, 30), _save(src / "b/x.jpg", Image.fromarray(_photo(40, 30, seed=1)))),
        "a/x.png": ((20, 25), _save(src / "a/x.png", Image.fromarray(_photo(20, 25, seed=2)))),
        "gray.png": ((33, 41), _save(src / "gray.png", Image.fromarray(_photo(33, 41)[..., 1]))),
        "rgba.png": ((30, 30), _save(src / "rgba.png", Image.fromarray(np.dstack([_photo(30, 30), np.full((30, 30), 9, np.uint8)])))),
        "deep.png": ((24, 36), _save(src / "deep.png", Image.fromarray(_photo(24, 36)[..., 0].astype(np.uint16) * 257))),
        "palette.png": ((28, 32), _save(src / "palette.png", Image.fromarray(_photo(28, 32)).quantize(16))),
        "rotated.jpg": ((50, 30), _save(src / "rotated.jpg", Image.fromarray(_photo(30, 50)), exif=exif)),
        "dot.png": ((1, 1), _save(src / "dot.png", Image.fromarray(_photo(1, 1)))),
    }
    whole = io.BytesIO()
    Image.fromarray(_photo(64, 64)).save(whole, format="JPEG")
    (src / "truncated.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    (src / "notes.jpg").write_text("not an image")
    out = tmp_path / "out"
    proc = _run("--config-file", TINY_CONFIG, "--weights", weights, "--input", str(src), str(tmp_path / "nowhere.jpg"),
                "--vocab", VOCAB, "--output", str(out))
    assert proc.returncode == 1, proc.stderr[-3000:]  # something was skipped, the rest written
    assert "Traceback" not in proc.stderr and "untrained" not in proc.stderr
    assert f"{src / 'truncated.jpg'}: skipped: " in proc.stderr and "truncated or corrupt" in proc.stderr
    assert f"{src / 'notes.jpg'}: skipped: " in proc.stderr and "not an image" in proc.stderr
    assert f"{tmp_path / 'nowhere.jpg'}: skipped: " in proc.stderr and "no such file" in proc.stderr
    assert "3 input(s) skipped" in proc.stderr
    assert len([line for line in proc.stdout.splitlines() if "->" in line]) == len(good)  # one line per image
    seg = Segmenter.from_config(TINY_CONFIG, weights=weights)
    seg.set_vocabulary(VOCAB)
    for name, (size, path) in good.items():
        labels = _check_outputs(out / "photos" / name, size)  # relative to the inputs' common folder
        np.testing.assert_array_equal(seg(str(path)).label_map, labels, err_msg=name)  # the API's labels
    # 16-bit is scaled, not clipped; the palette image reads as its colours; EXIF rotation applied
    np.testing.assert_array_equal(read_image(good["deep.png"][1])[..., 0], _photo(24, 36)[..., 0])
    np.testing.assert_array_equal(read_image(good["palette.png"][1]), np.asarray(Image.open(good["palette.png"][1]).convert("RGB")))
    assert read_image(good["rotated.jpg"][1]).shape == (50, 30, 3)


@pytest.mark.slow
def test_a_video_is_written_back_and_an_untrained_model_is_said_once(tmp_path):
    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 5, (40, 32))
    for k in range(6):
        writer.write(np.roll(_photo(32, 40), 3 * k, axis=1)[..., ::-1].copy())
    writer.release()
    _save(tmp_path / "still.png", Image.fromarray(_photo(32, 40)))
    out = tmp_path / "out"
    proc = _run("--config-file", TINY_CONFIG, "--video-input", video, "--input", str(tmp_path / "still.png"),
                "--vocab", "sky,grass", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("the labels are those of an untrained model") == 1
    capture = cv2.VideoCapture(str(out / "clip.avi.overlay.mp4"))
    frames = []
    ok, frame = capture.read()
    while ok:
        frames.append(frame)
        ok, frame = capture.read()
    assert len(frames) == 6 and frames[0].shape == (32, 40, 3)
    assert "clip.avi: 6 frames" in proc.stdout
    _check_outputs(out / "still.png", (32, 40), ["sky", "grass"])


@pytest.mark.parametrize(
    "vocab, rc, check",
    [
        (["--vocab", ""], 2, "--vocab: the vocabulary '' is empty"),
        (["--vocab", " , "], 2, "is empty"),
        (["--vocab", "cat,,dog"], 2, "has an empty name"),
        (["--vocab", "cat, cat"], 2, "repeats 'cat'"),
        (["--vocab", "cat|kitty, Cat"], 2, "--vocab: the vocabulary names a class twice: 'Cat' (entry 2) and "
                                          "'cat|kitty' (entry 1) both name 'Cat' (as 'cat', case ignored)"),
        (["--vocab-file", "no/such/list.txt"], 2, "no such file, and not a benchmark name"),
        (["--vocab", "  cat ,   dog "], 0, ["cat", "dog"]),
        (["--vocab", "猫,собака|пёс,café"], 0, ["猫", "собака, пёс", "café"]),
        (["--vocab", "cat"], 0, ["cat"]),
        (["--vocab-file", "ade150"], 0, 150),
        ([], 0, 150),  # the documented default: ade150
    ],
)
def test_vocabularies(tmp_path, capsys, weights, vocab, rc, check):
    path = _save(tmp_path / "img.png", Image.fromarray(_photo(24, 32)))
    code = demo.main(["--config-file", TINY_CONFIG, "--weights", weights, "--input", str(path), *vocab,
                      "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == rc, err
    if rc:
        assert check in err and "Traceback" not in err
        return
    summary = json.loads((tmp_path / "out" / "img.png.json").read_text(encoding="utf-8"))
    assert summary["vocabulary"] == check if isinstance(check, list) else len(summary["vocabulary"]) == check
    labels = _check_outputs(tmp_path / "out" / "img.png", (24, 32), summary["vocabulary"])
    if check == ["cat"]:
        assert not labels.any()


def test_vocabulary_files_and_five_thousand_classes(tmp_path, capsys, weights):
    path = _save(tmp_path / "img.png", Image.fromarray(_photo(40, 60)))
    lines = tmp_path / "classes.txt"
    lines.write_text("# my classes\nsky\n\n grass | lawn \nhouse\n", encoding="utf-8")
    listed = tmp_path / "classes.json"
    listed.write_text(json.dumps([f"class {i}" for i in range(5000)]))
    args = ["--config-file", TINY_CONFIG, "--weights", weights, "--input", str(path)]
    assert demo.main([*args, "--vocab-file", str(lines), "--output", str(tmp_path / "a")]) == 0
    _check_outputs(tmp_path / "a" / "img.png", (40, 60), ["sky", "grass, lawn", "house"])
    assert demo.main([*args, "--vocab-file", str(listed), "--output", str(tmp_path / "b")]) == 0
    labels = _check_outputs(tmp_path / "b" / "img.png", (40, 60), [f"class {i}" for i in range(5000)])
    assert Image.open(tmp_path / "b" / "img.png.labels.png").mode.startswith("I")  # 16-bit above 256 classes
    assert labels.max() < 5000
    capsys.readouterr()


@pytest.mark.slow
def test_a_ten_thousand_pixel_square_image_keeps_memory_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the test reads the outputs back
    # grayscale and uniform: a small file, quick to write and decode
    path = _save(tmp_path / "big.png", Image.new("L", (10_000, 10_000), 120), compress_level=1)
    out = tmp_path / "out"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = _run("--config-file", TINY_CONFIG, "--input", str(path), "--vocab", "sky,grass,house,road", "--output", str(out))
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_outputs(out / "big.png", (10_000, 10_000), ["sky", "grass", "house", "road"])
    # four float32 score maps at the full size alone would take 1.6 GB on top of the images
    if peak_kib > before:
        assert peak_kib < 3_000_000, f"peak memory {peak_kib / 1e6:.1f} GB"


def test_bad_arguments_and_inputs_stop_with_a_message(tmp_path, capsys):
    for argv, message in [
        (["--input", str(tmp_path / "none*.jpg"), "--vocab", "cat"], "no images found"),
        (["--input", str(tmp_path), "--vocab", "cat", "--config-file", "nope.yaml"], "config file 'nope.yaml' not found"),
        (["--input", str(tmp_path / "x.png"), "--vocab", "cat", "--weights", "nope.pth"], "--weights nope.pth: no such file"),
        (["--input", str(tmp_path / "x.png"), "--vocab", "cat", "--config-file", TINY_CONFIG, "--opts", "MODEL.NOPE", "1"],
         "Non-existent key: MODEL.NOPE"),
    ]:
        _save(tmp_path / "x.png", Image.fromarray(_photo(8, 8)))
        assert demo.main(argv) == 2, argv
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.main(["--vocab", "cat"])  # nothing to segment: argparse's usage message
    assert "give images with --input or a video with --video-input" in capsys.readouterr().err


def test_an_output_that_cannot_be_written_stops_before_the_model_is_built(tmp_path, capsys, monkeypatch):
    def no_build(*args):
        raise AssertionError("the model was built before --output was checked")

    monkeypatch.setattr(demo, "build_segmenter", no_build)
    image = _save(tmp_path / "img.png", Image.fromarray(_photo(8, 8)))
    taken = tmp_path / "taken"
    taken.write_text("")
    cases = [
        (taken, f"--output {taken} is a file, not a folder"),
        (taken / "sub" / "out", f"--output {taken / 'sub' / 'out'} cannot be created: {taken} is a file, not a folder"),
    ]
    for out, message in cases:
        assert demo.main(["--input", str(image), "--vocab", "cat", "--output", str(out)]) == 3
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    # a folder that may not be written: permissions do not bind root, who runs the tests, so the
    # operating system's answer for tmp_path is replaced by a refusal
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(tmp_path) else access(path, mode))
    assert demo.main(["--input", str(image), "--vocab", "cat", "--output", str(tmp_path / "new" / "out")]) == 3
    assert f"cannot be written: {tmp_path} is not writable" in capsys.readouterr().err


def test_an_output_folder_inside_the_inputs_is_not_segmented_again(tmp_path, capsys, weights):
    photos = tmp_path / "photos"
    _save(photos / "x.png", Image.fromarray(_photo(16, 16)))
    _save(photos / "sub" / "y.png", Image.fromarray(_photo(16, 16, seed=1)))
    out = photos / "out"
    written = ["sub/y.png.json", "sub/y.png.labels.png", "sub/y.png.overlay.jpg",
               "x.png.json", "x.png.labels.png", "x.png.overlay.jpg"]
    args = ["--config-file", TINY_CONFIG, "--weights", weights, "--vocab", "sky,grass", "--output", str(out)]
    for _ in range(2):  # the second run finds the first one's results under photos/
        assert demo.main([*args, "--input", str(photos)]) == 0
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == written
        assert capsys.readouterr().out.count(" -> ") == 2  # x.png and sub/y.png, nothing under out/
    # a glob leaves them out too
    assert demo.image_paths([str(photos / "**" / "*.png")], out) == [str(photos / "sub" / "y.png"), str(photos / "x.png")]
    # an input inside the output folder is searched as named, the demo's own results in it excepted
    _save(out / "z.png", Image.fromarray(_photo(16, 16, seed=2)))
    assert demo.image_paths([str(out)], out) == [str(out / "z.png")]
    assert demo.image_paths([str(out / "x.png.overlay.jpg")], out) == [str(out / "x.png.overlay.jpg")]  # named


def test_an_output_folder_that_is_the_input_folder_is_not_segmented_again(tmp_path, capsys, weights):
    photos = tmp_path / "photos"
    _save(photos / "x.png", Image.fromarray(_photo(16, 16)))
    args = ["--config-file", TINY_CONFIG, "--weights", weights, "--vocab", "sky,grass", "--output", str(photos)]
    for _ in range(2):
        assert demo.main([*args, "--input", str(photos)]) == 0
        assert sorted(p.name for p in photos.iterdir()) == ["x.png", "x.png.json", "x.png.labels.png", "x.png.overlay.jpg"]
        assert capsys.readouterr().out.count(" -> ") == 1


def test_ctrl_c_in_a_folder_keeps_what_was_written_and_says_so(tmp_path, capsys, monkeypatch, weights):
    photos = tmp_path / "photos"
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        _save(photos / name, Image.fromarray(_photo(16, 16, seed=i)))
    segment = Segmenter.__call__
    calls = []

    def interrupted_on_the_second_image(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return segment(self, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "__call__", interrupted_on_the_second_image)
    out = tmp_path / "out"
    try:
        code = demo.main(["--config-file", TINY_CONFIG, "--weights", weights, "--input", str(photos),
                          "--vocab", "sky,grass", "--output", str(out)])
    except KeyboardInterrupt:  # let through, it would stop the test session rather than fail the test
        pytest.fail("the KeyboardInterrupt went through the demo's main")
    err = capsys.readouterr().err
    assert code == 130, err
    assert f"Interrupted: 1 of 3 images written to {out}/; the other 2 were not segmented" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.png.json", "a.png.labels.png", "a.png.overlay.jpg"]
    _check_outputs(out / "a.png", (16, 16), ["sky", "grass"])


def test_outputs_keep_relative_paths_and_full_names():
    names = demo.output_names(["a/x.jpg", "b/x.jpg", "a/x.png", "a/deeper/y.jpg"])
    assert names == ["a/x.jpg", "b/x.jpg", "a/x.png", os.path.join("a", "deeper", "y.jpg")]
    assert demo.output_names(["/somewhere/photo.jpg"]) == ["photo.jpg"]


def test_default_model_is_downloaded_once_or_the_offline_check_runs(tmp_path, monkeypatch, capsys, weights):
    served = tmp_path / "served"
    served.mkdir()
    (served / "model_base.pth").write_bytes(open(weights, "rb").read())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    image = _save(tmp_path / "img.png", Image.fromarray(_photo(24, 32)))
    monkeypatch.setenv("LMSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(demo_common, "DEFAULT_CONFIG", TINY_CONFIG)  # stands for CAT-Seg ViT-B
    try:
        monkeypatch.setattr(demo_common, "CATSEG_VITB_URL", f"http://127.0.0.1:{httpd.server_address[1]}/model_base.pth")
        assert demo.main(["--input", str(image), "--vocab", VOCAB, "--output", str(tmp_path / "a")]) == 0
        assert (tmp_path / "cache" / "model_base.pth").read_bytes() == (served / "model_base.pth").read_bytes()
        seg = Segmenter.from_config(TINY_CONFIG, weights=weights)
        np.testing.assert_array_equal(seg(str(image), VOCAB).label_map, _check_outputs(tmp_path / "a" / "img.png", (24, 32)))
    finally:
        httpd.shutdown()
        httpd.server_close()
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)  # the default output folder is relative
    monkeypatch.setenv("LMSEG_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(demo_common, "CATSEG_VITB_URL", "http://127.0.0.1:1/model_base.pth")  # nothing listens there
    assert demo.main(["--input", str(image), "--vocab", VOCAB]) == 0
    err = capsys.readouterr().err
    assert re.search(r"Cannot fetch the default weights: cannot reach 127\.0\.0\.1:1 to download model_base\.pth", err)
    assert f"put it at {tmp_path / 'empty' / 'model_base.pth'}" in err
    assert "Running the offline installation check instead, on tiny.yaml" in err
    assert "Writing the results to demo_output/" in err


def test_legend_scales_with_the_image_and_summarises_hundreds_of_classes():
    names = [f"class {i}" for i in range(300)]
    labels = np.repeat(np.arange(300), 2)[None].repeat(200, 0)  # (200, 600), 300 equal stripes
    labels[:, :100] = 7  # the largest class
    _, legend = draw_overlay(np.zeros((200, 600, 3), np.uint8), labels, names)
    assert legend.shown[0] == 7 and 3 <= len(legend.shown) < 20
    assert sorted(legend.shown + legend.summarised) == sorted(np.unique(labels).tolist())

    def panel_height(size):
        canvas, _ = draw_overlay(np.full((size, size, 3), 255, np.uint8), np.zeros((size, size), np.int64), ["sky"])
        dark = (canvas[:, : size // 2] < 128).all(axis=2).any(axis=1)
        return np.flatnonzero(dark).max() + 1

    small, large = panel_height(400), panel_height(4000)
    assert large >= 8 * small > 0 and large >= 4000 / 45  # about a fiftieth of the image per line
    # DejaVu Sans draws Latin, Cyrillic, Greek...; other scripts come from a font that has them
    assert {_font_path_for(c) for c in "собака café"} == {_font_paths()[0]} and "DejaVuSans" in _font_paths()[0]
    assert _font_path_for("猫") != _font_paths()[0]
