#!/usr/bin/env python
"""A screenshot of the web demo (demo/app.py) on its example, taken in headless Chromium.

    python tools/web_screenshot.py                       # docs/web_demo.png, offline model
    python tools/web_screenshot.py --config-file configs/catseg_vitb.yaml --opts MODEL.WEIGHTS model_base.pth

It starts the app on a free port, opens the page in Chromium (Debian's `chromium` and
`chromium-driver` packages) driven by Selenium, runs the example that `make demo` uses, selects the
largest class and saves the page. The browser helpers here are also those of tests/test_web.py.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import List, Optional, Sequence

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# Headless, and quiet on a machine without network: no background requests, updates or sync.
BROWSER_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
)


def find_browser() -> List[Optional[str]]:
    """[chromium, chromedriver] executables (None where missing)."""
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    return [browser, shutil.which("chromedriver")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(args: Sequence[str], port: int, log_path: Path, timeout: float = 180.0) -> subprocess.Popen:
    """Start demo/app.py with ``args`` on ``port`` and wait until it serves its page."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "GRADIO_ANALYTICS_ENABLED": "False"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "demo" / "app.py"), *args, "--port", str(port)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"demo/app.py exited with status {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"demo/app.py did not serve within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def chromium(profile: str, width: int = 1400, height: int = 1000):
    """A headless Chromium driven by Selenium, with a fresh profile folder."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = find_browser()
    if not browser or not driver:
        raise RuntimeError("Chromium and its driver are needed: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=Service(driver), options=options)


def wait_for(driver, condition, timeout: float = 60.0, what: str = "the page"):
    """Poll ``condition(driver)`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition(driver)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def text_of(driver, selector: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return found[0].text if found else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/tiny.yaml", help="passed to demo/app.py (default: configs/tiny.yaml)")
    parser.add_argument("--output", default="docs/web_demo.png", help="where to save (default: docs/web_demo.png)")
    parser.add_argument("--width", type=int, default=900, help="width the screenshot is scaled to (default: 900)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="passed to demo/app.py")
    args = parser.parse_args(argv)
    from selenium.webdriver.common.by import By

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        app_args = ["--config-file", args.config_file] + (["--opts", *args.opts] if args.opts else [])
        app = start_app(app_args, port, Path(tmp) / "app.log")
        try:
            driver = chromium(str(Path(tmp) / "profile"))
            try:
                driver.get(f"http://127.0.0.1:{port}/")
                example = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".gallery-item, tr.tr-body"),
                                   what="the example")
                example[0].click()
                wait_for(driver, lambda d: "Press Segment" in text_of(d, "#status"), what="the example to load")
                driver.find_element(By.CSS_SELECTOR, "#run").click()
                wait_for(driver, lambda d: "present" in text_of(d, "#status"), timeout=600, what="the segmentation")
                driver.find_element(By.CSS_SELECTOR, "#classes [data-row='0'][data-col='0']").click()
                wait_for(driver, lambda d: text_of(d, "#view_caption"), what="the class view")
                full = driver.execute_script("return document.documentElement.scrollHeight")
                driver.set_window_size(1400, full + 120)  # the whole page, top to bottom
                driver.execute_script("window.scrollTo(0, 0)")
                time.sleep(1)  # images fade in
                shot = Path(tmp) / "page.png"
                driver.save_screenshot(str(shot))
            finally:
                driver.quit()
        finally:
            app.terminate()
            app.wait(timeout=30)
        page = Image.open(shot).convert("RGB")
        page = page.resize((args.width, round(page.height * args.width / page.width)), Image.LANCZOS)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        page.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.output, optimize=True)
    print(f"wrote {args.output} ({os.path.getsize(args.output) // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
