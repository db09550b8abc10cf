"""demo/demo.py end to end with the tiny config, and the overlay drawing."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from lmseg.visualize import classes_by_area, draw_overlay, palette

from model_helpers import REPO, TINY_CONFIG


def _demo(*args):
    return subprocess.run(
        [sys.executable, "demo/demo.py", "--config-file", TINY_CONFIG, *args],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_demo_writes_labels_and_overlay_and_reports_unreadable_files(tmp_path):
    other = tmp_path / "second.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(other)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    out = tmp_path / "out"
    proc = _demo("--input", "demo/example.jpg", str(broken), str(other), "--vocab", "sky, grass,house,red ball",
                 "--output", str(out))
    assert proc.returncode == 1  # one input failed, the others were still written
    assert f"{broken}: skipped, cannot read it as an image" in proc.stderr
    labels = np.asarray(Image.open(out / "example_labels.png"))
    assert labels.shape == (240, 320) and labels.max() < 4
    overlay = np.asarray(Image.open(out / "example_overlay.jpg"))
    assert overlay.shape[0] == 240 and overlay.shape[1] > 320
    assert np.asarray(Image.open(out / "second_labels.png")).shape == (50, 70)
    assert "demo/example.jpg: " in proc.stdout


def test_demo_vocabulary_file_and_bad_vocabularies(tmp_path):
    vocab = tmp_path / "classes.json"
    vocab.write_text(json.dumps(["road", "car"]))
    proc = _demo("--input", "demo/example.jpg", "--vocab-file", str(vocab), "--output", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _demo("--input", "demo/example.jpg", "--vocab", "cat,,sofa", "--output", str(tmp_path / "b"))
    assert proc.returncode == 2 and "--vocab 'cat,,sofa' has an empty name" in proc.stderr
    proc = _demo("--input", "demo/example.jpg", "--vocab", "cat,cat", "--output", str(tmp_path / "c"))
    assert proc.returncode == 2 and "repeats 'cat'" in proc.stderr
    proc = _demo("--input", str(tmp_path / "nothing*.jpg"), "--vocab", "cat", "--output", str(tmp_path / "d"))
    assert proc.returncode == 2 and "no images found" in proc.stderr


def test_overlay_and_legend():
    image = np.zeros((20, 30, 3), np.uint8)
    labels = np.zeros((20, 30), np.int64)
    labels[:, 20:] = 2
    names = ["a", "b", "c"]
    assert [(i, n) for i, n, _ in classes_by_area(labels, names)] == [(0, "a"), (2, "c")]
    out = draw_overlay(image, labels, names)
    assert out.shape[0] >= 20 and out.shape[1] > 30
    assert len({tuple(c) for c in palette(50)}) == 50
