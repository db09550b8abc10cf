"""The web demo (demo/app.py) in a real headless Chromium driven by Selenium, on configs/tiny.yaml.

Needs Chromium and its driver (Debian: chromium, chromium-driver), Selenium and Gradio (the test
extra). Where one is missing the browser tests are skipped, except in CI (CI=true, which .ci/run
sets after installing the browser): there a missing browser is a failure. Screenshots of every
state are saved under $LMSEG_TEST_ARTIFACTS/web (default tests/artifacts/web, not committed).
"""
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from PIL import Image

from lmseg.api import parse_vocabulary
from lmseg.data.vocabularies import load_vocabulary
from lmseg.modeling.prompts import prompt_name
from lmseg.visualize import palette

from tests.helpers import load_tool
from tests.helpers.model_helpers import REPO, TINY_CONFIG

browser_tools = load_tool("web_screenshot")  # tools/web_screenshot.py: the browser helpers
IN_CI = os.environ.get("CI") == "true"
# The app under test refuses images above this many pixels (so a "huge" image stays small to make).
MAX_PIXELS = 200_000


def _load_app():
    from lmseg.demo import web

    return web


def _missing(what: str):
    if IN_CI:
        pytest.fail(f"{what}: CI must run the browser tests (.ci/run installs chromium and chromium-driver; "
                    "the test extra brings selenium and gradio)")
    pytest.skip(what)


# ------------------------------------------------------------------------------ without a browser
@pytest.mark.slow
def test_core_package_does_not_import_gradio():
    """Every module of lmseg but the web page itself (lmseg.demo.web) imports without Gradio."""
    code = (
        "import importlib, pkgutil, sys, lmseg\n"
        "for m in pkgutil.walk_packages(lmseg.__path__, 'lmseg.'):\n"
        "    if m.name != 'lmseg.demo.web': importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('gradio', 'gradio_client')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_example_is_make_demos_photo_and_vocabulary():
    app = _load_app()
    makefile = (REPO / "Makefile").read_text()
    assert (REPO / re.search(r"^INPUT \?= (.+)$", makefile, re.M).group(1)).resolve() == app.EXAMPLE_IMAGE.resolve()
    assert app.EXAMPLE_VOCABULARY == re.search(r"^VOCAB \?= (.+)$", makefile, re.M).group(1)
    assert app.EXAMPLE_IMAGE.is_file()


def test_benchmark_menu_fills_the_box_with_every_class():
    app = _load_app()
    assert sorted(app.BENCHMARKS.values()) == sorted(["coco", "ade150", "ade847", "pc59", "pc459", "voc20"])
    for key in app.BENCHMARKS.values():
        names = load_vocabulary(key)
        typed = parse_vocabulary(app.vocabulary_text(names))  # what the box gives the model
        assert typed == [", ".join(s.strip() for s in name.split(",")) for name in names], key


def test_the_vocabulary_box_refuses_a_name_given_twice(tmp_path):
    app = _load_app()
    web = app.WebDemo(None, max_image_pixels=10**6, max_classes=10, workdir=str(tmp_path))
    with pytest.raises(app.InputError, match=r"'Cat' \(entry 2\) and 'cat' \(entry 1\) are the same name once case is ignored"):
        web.parse("cat, Cat")
    assert web.parse("cat|Cat, dog") == ["cat, Cat", "dog"]


def test_app_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    app = _load_app()
    monkeypatch.setattr(app, "gr", None)  # what a failed `import gradio` leaves
    assert app.main(["--config-file", TINY_CONFIG]) == 2
    assert 'the web demo needs Gradio: pip install "lmseg[web]"' in capsys.readouterr().err


def test_images_past_pillows_own_limit_are_refused_by_name(tmp_path, monkeypatch):
    app = _load_app()
    web = app.WebDemo(None, max_image_pixels=10**9, max_classes=10, workdir=str(tmp_path))
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 10,000 pixels: past twice the limit
    with pytest.raises(app.InputError, match=r"^big.png has more than the 1,000,000,000 this page takes"):
        web.load_image(str(tmp_path / "big.png"))


# ------------------------------------------------------------------------------------ in a browser
@pytest.fixture(scope="module")
def artifacts():
    folder = os.path.join(os.environ.get("LMSEG_TEST_ARTIFACTS") or REPO / "tests" / "artifacts", "web")
    os.makedirs(folder, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def page(tmp_path_factory, artifacts):
    """(driver, url) of the app on configs/tiny.yaml in headless Chromium."""
    for module in ("gradio", "selenium"):
        if importlib.util.find_spec(module) is None:
            _missing(f"{module} is not installed (pip install -e .[test])")
    browser, driver_path = browser_tools.find_browser()
    if not browser or not driver_path:
        _missing("Chromium or chromedriver is missing (apt-get install chromium chromium-driver)")
    tmp = tmp_path_factory.mktemp("web")
    port = browser_tools.free_port()
    app = browser_tools.start_app(
        ["--config-file", TINY_CONFIG, "--max-image-pixels", str(MAX_PIXELS)], port, tmp / "app.log")
    driver = None
    try:
        driver = browser_tools.chromium(str(tmp / "profile"))
        driver.get(f"http://127.0.0.1:{port}/")
        browser_tools.wait_for(driver, lambda d: _find(d, "#run"), what="the page")
        yield driver, f"http://127.0.0.1:{port}"
    finally:
        if driver is not None:
            driver.quit()
        app.terminate()
        app.wait(timeout=30)
        log = (tmp / "app.log").read_text()
        with open(os.path.join(artifacts, "app.log"), "w") as f:
            f.write(log)
    assert "Traceback" not in log, log[-3000:]  # every bad input was answered with a message


def _find(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _status(driver) -> str:
    return browser_tools.text_of(driver, "#status")


def _upload(driver, path):
    clear = _find(driver, "#image_file button[aria-label='Clear']")
    if clear:
        clear[0].click()
    field = browser_tools.wait_for(driver, lambda d: _find(d, "#image_file input[type=file]"), what="the upload field")
    field[0].send_keys(str(path))


def _type_vocabulary(driver, text: str):
    from selenium.webdriver.common.keys import Keys

    box = _find(driver, "#vocab textarea")[0]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    if len(text) > 200:  # typing key by key would take minutes: set it as a paste would
        driver.execute_script(
            "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
            box, text)
    else:
        box.send_keys(text)


def _segment(driver, expect: str, timeout: float = 60.0) -> str:
    """Press Segment and return the new status (each step of a test expects a different one),
    checking that it contains ``expect``."""
    before = _status(driver)
    _find(driver, "#run")[0].click()
    status = browser_tools.wait_for(driver, lambda d: _status(d) != before and _status(d), timeout, "a new status")
    assert expect in status
    return status


def _table(driver):
    rows = {}
    for cell in _find(driver, "#classes [role=gridcell]"):
        rows.setdefault(int(cell.get_attribute("data-row")), {})[int(cell.get_attribute("data-col"))] = cell.text
    return [[row[c] for c in sorted(row)] for _, row in sorted(rows.items())]


def _image(driver, selector):
    """The image an <img> in ``selector`` shows, fetched from the app, and its natural size."""
    img = _find(driver, f"{selector} img")[0]
    src, width, height = driver.execute_script(
        "return [arguments[0].src, arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
    return np.asarray(Image.open(io.BytesIO(_get(src))).convert("RGB")), (width, height)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def _scene(path, height=96, width=128):
    """A picture with regions (sky, grass, a red disc) rather than noise."""
    y, x = np.mgrid[:height, :width]
    image = np.zeros((height, width, 3), np.uint8)
    image[y < height // 2] = (110, 160, 230)
    image[y >= height // 2] = (60, 150, 50)
    image[(y - height * 0.6) ** 2 + (x - width * 0.7) ** 2 < (height / 6) ** 2] = (210, 30, 30)
    Image.fromarray(image).save(path)
    return image


@pytest.mark.slow
def test_segment_an_uploaded_image_and_look_at_one_class(page, tmp_path, artifacts):
    driver, _ = page
    shot = lambda name: driver.save_screenshot(os.path.join(artifacts, f"{name}.png"))  # noqa: E731
    assert "labels are those of an untrained model" in browser_tools.text_of(driver, "#untrained")
    image = _scene(tmp_path / "scene.png")
    _upload(driver, tmp_path / "scene.png")
    browser_tools.wait_for(driver, lambda d: "scene.png: 128 x 96 pixels" in _status(d), what="the preview")
    _type_vocabulary(driver, "sky, grass|lawn, house, red ball")
    shot("1_uploaded")
    status = _segment(driver, "present")
    assert status.startswith("128 x 96 pixels, 4 classes") and "sliding window off" in status  # tiny.yaml's
    shot("2_segmented")

    overlay, size = _image(driver, "#overlay")
    assert size == (128, 96) and overlay.shape == (96, 128, 3)  # at the image's size, legend inside
    links = {a.get_attribute("download"): a.get_attribute("href") for a in _find(driver, "#downloads a[download]")}
    assert sorted(links) == ["scene.png.json", "scene.png.labels.png", "scene.png.overlay.jpg"]
    labels = np.asarray(Image.open(io.BytesIO(_get(links["scene.png.labels.png"]))))
    summary = json.loads(_get(links["scene.png.json"]))
    assert labels.shape == (96, 128)
    assert summary["vocabulary"] == ["sky", "grass, lawn", "house", "red ball"]
    names = [prompt_name(n) for n in summary["vocabulary"]]
    counts = np.bincount(labels.ravel(), minlength=len(names))
    in_map = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i]]  # largest first
    table = _table(driver)
    assert [row[0] for row in table] == [names[i] for i in in_map]  # exactly the label map's classes
    assert [float(row[1]) for row in table] == pytest.approx([100 * counts[i] / labels.size for i in in_map], abs=0.006)
    assert [float(row[2]) for row in table] == pytest.approx([c["score"] for c in summary["present"]], abs=6e-4)

    _find(driver, "#classes [data-row='0'][data-col='0']")[0].click()  # the largest class's mask
    first = in_map[0]
    browser_tools.wait_for(driver, lambda d: browser_tools.text_of(d, "#view_caption").startswith(names[first]),
                           what="the class view")
    view, size = _image(driver, "#class_view")
    assert size == (128, 96)
    other = labels != first  # dimmed; the class's pixels are tinted with its legend colour
    assert np.array_equal(view[other], (image[other] * 0.3).astype(np.uint8))
    tint = (image[~other] * 0.4 + palette(len(names))[first].astype(np.float32) * 0.6).astype(np.uint8)
    assert np.array_equal(view[~other], tint)
    shot("3_class_mask")
    _find(driver, "#view_kind input[value='score map']")[0].click()
    browser_tools.wait_for(driver, lambda d: "probability" in browser_tools.text_of(d, "#view_caption"),
                           what="the score map")
    score_view, size = _image(driver, "#class_view")
    assert size == (128, 96) and not np.array_equal(score_view, view)
    shot("4_class_score_map")


@pytest.mark.slow
def test_bad_input_gets_a_message_and_the_app_keeps_serving(page, tmp_path, artifacts):
    driver, _ = page
    shot = lambda name: driver.save_screenshot(os.path.join(artifacts, f"{name}.png"))  # noqa: E731
    _scene(tmp_path / "small.png", 64, 80)
    _upload(driver, tmp_path / "small.png")
    browser_tools.wait_for(driver, lambda d: "small.png: 80 x 64 pixels" in _status(d), what="the preview")

    _type_vocabulary(driver, "")
    assert "the vocabulary '' is empty" in _segment(driver, "Cannot segment")
    shot("5_empty_vocabulary")
    _type_vocabulary(driver, ",".join(f"class {i}" for i in range(5000)))
    assert "5,000 classes is more than the 1,000 this page takes" in _segment(driver, "Cannot segment")
    shot("6_5000_names")

    (tmp_path / "notes.png").write_bytes(b"this is text, not a picture")
    _upload(driver, tmp_path / "notes.png")
    browser_tools.wait_for(driver, lambda d: "notes.png is not an image" in _status(d), what="the refusal")
    _segment(driver, "5,000 classes")  # the vocabulary is checked first
    _type_vocabulary(driver, "cat, dog")
    _segment(driver, "notes.png is not an image")
    shot("7_not_an_image")

    Image.new("RGB", (600, 400), (90, 120, 200)).save(tmp_path / "huge.png")  # above the app's MAX_PIXELS
    _upload(driver, tmp_path / "huge.png")
    expected = f"huge.png is 600 x 400 pixels, more than the {MAX_PIXELS:,} this page takes"
    browser_tools.wait_for(driver, lambda d: expected in _status(d), what="the refusal")
    shot("8_huge_image")
    assert "Traceback" not in _find(driver, "body")[0].text

    _upload(driver, tmp_path / "small.png")  # and a valid request still works
    browser_tools.wait_for(driver, lambda d: "small.png: 80 x 64 pixels" in _status(d), what="the preview")
    _find(driver, "#sliding input")[0].click()
    status = _segment(driver, "present")
    assert status.startswith("80 x 64 pixels, 2 classes") and "sliding window on" in status
    assert {row[0] for row in _table(driver)} <= {"cat", "dog"} and _table(driver)
    assert _image(driver, "#overlay")[1] == (80, 64)
    shot("9_valid_again")
