"""LMSeg in a web page: upload an image, type a vocabulary, look at the segmentation.

    python demo/app.py                                   # http://127.0.0.1:7860
    python demo/app.py --config-file configs/tiny.yaml   # the offline installation check
    python demo/app.py --weights model.pth --port 8080 --share
    python -m lmseg.demo.web ..., lmseg-web ...          # the same, once LMSeg is installed

The model is chosen as by the command-line demo (lmseg.demo.common.build_segmenter): without --config-file, CAT-Seg's ViT-B (its weights are
downloaded once), or the untrained offline check (configs/tiny.yaml) where they cannot be fetched.
Every request goes through lmseg.Segmenter, the demo's own inference path, one at a time (a queue
in front of the model: two visitors never hold the accelerator's memory at once).

The page: an image (or the example the command-line demo uses), a vocabulary with the syntax of
--vocab (classes separated by ",", synonyms of one class by "|") or a benchmark vocabulary from the
menu, sliding-window inference on or off. It shows the overlay with its legend, a table of the
classes present (pixel share, score) whose rows show one class's mask or score map when selected,
and offers the overlay, the label map (PNG) and the summary (JSON) for download, as the
command-line demo writes them. Bad input (no image, a file that is not an image, a too large image,
an empty or too large vocabulary) gets a message in the page; the server keeps serving.

Needs Gradio: pip install "lmseg[web]" (in a checkout, make web installs it and starts this page).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

try:
    import gradio as gr
except ImportError:  # the web extra is optional: say how to get it instead of a traceback
    gr = None

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..api import WEIGHTS_HINT, Segmentation, Segmenter, parse_vocabulary
from ..data.vocabularies import load_vocabulary
from ..images import InputError, read_image
from ..visualize import palette
from .common import EXAMPLE_IMAGE, EXAMPLE_VOCABULARY, UsageError, build_segmenter, configure_logging, write_outputs

logger = logging.getLogger("lmseg.app")

# The menu of benchmark vocabularies: label shown, name in lmseg/data/vocabularies.
BENCHMARKS = {
    "COCO-Stuff (171 classes)": "coco",
    "ADE20K-150": "ade150",
    "ADE20K-847": "ade847",
    "PASCAL Context 59": "pc59",
    "PASCAL Context 459": "pc459",
    "PASCAL VOC 20": "voc20",
}
# Longest side of the per-class views (mask, score map) kept for a visitor after a request.
VIEW_SIDE = 1024
# Results of a request (downloads) are deleted this many seconds after it.
KEEP_SECONDS = 3600


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lmseg-web", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", metavar="FILE", help="model config (default: as the command-line demo, CAT-Seg's ViT-B)")
    parser.add_argument("--weights", metavar="PATH|URL", help="weights (MODEL.WEIGHTS); a URL is downloaded once into the cache")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default: 7860)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 serves the network (default: 127.0.0.1)")
    parser.add_argument("--share", action="store_true", help="also serve through a temporary public gradio.live link")
    parser.add_argument("--max-image-pixels", type=int, default=40_000_000, metavar="N",
                        help="larger images are refused with a message (default: 40,000,000)")
    parser.add_argument("--max-classes", type=int, default=1000, metavar="N",
                        help="larger vocabularies are refused with a message (default: 1000; ADE20K-847 fits)")
    parser.add_argument("--max-file-size", default="50mb", metavar="SIZE", help="largest upload, e.g. 50mb (default: 50mb)")
    parser.add_argument("--queue-size", type=int, default=32, metavar="N",
                        help="requests waiting at most; more are told the queue is full (default: 32)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                        help="config overrides (last on the line), e.g. --opts MODEL.DEVICE cpu")
    args = parser.parse_args(argv)
    if len(args.opts) % 2:
        parser.error(f"--opts takes KEY VALUE pairs; got an odd number of items: {' '.join(args.opts)}")
    if args.max_classes < 1 or args.max_image_pixels < 1 or args.queue_size < 1:
        parser.error("--max-classes, --max-image-pixels and --queue-size must be at least 1")
    return args


def vocabulary_text(names: Sequence[str]) -> str:
    """Class names (synonyms as "a, b", as in the benchmark class lists) in the vocabulary box's syntax."""
    return ", ".join("|".join(s.strip() for s in name.split(",")) for name in names)


@dataclass
class ClassViews:
    """What a visitor can look at after a request, at most VIEW_SIDE pixels on a side: the image,
    the label map, and the score (probability) map of each present class, quantised to 0-255."""

    image: np.ndarray  # (h, w, 3) uint8
    labels: np.ndarray  # (h, w) class indices
    present: List[int]  # the table's rows: class indices, largest first
    names: List[str]
    scores: Dict[int, np.ndarray]  # class index -> (h, w) uint8


class WebDemo:
    """The page's actions on one :class:`Segmenter`, with the limits that keep a server serving."""

    def __init__(self, segmenter: Segmenter, *, max_image_pixels: int, max_classes: int, workdir: str):
        self.segmenter = segmenter
        self.max_image_pixels = max_image_pixels
        self.max_classes = max_classes
        self.workdir = Path(workdir)

    # ------------------------------------------------------------------------------ inputs
    def load_image(self, path: Optional[str]) -> np.ndarray:
        """The uploaded file as RGB, or InputError saying what is wrong with it."""
        if not path:
            raise InputError("no image: upload one (or pick the example below)")
        name = Path(path).name
        too_large = f"more than the {self.max_image_pixels:,} this page takes: downscale it first (or start the app " \
                    "with a larger --max-image-pixels)"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
                with Image.open(path) as img:  # the header only: refuse a huge image before decoding it
                    width, height = img.size
        except Image.DecompressionBombError:  # Pillow's own limit, at twice its MAX_IMAGE_PIXELS
            raise InputError(f"{name} has {too_large}") from None
        except (UnidentifiedImageError, OSError):
            raise InputError(f"{name} is not an image (or a format Pillow cannot read): upload a JPEG, PNG or WebP") from None
        if width * height > self.max_image_pixels:
            raise InputError(f"{name} is {width} x {height} pixels, {too_large}")
        try:
            return read_image(path)
        except InputError as err:  # its message names the uploaded copy's path: use the file's name
            raise InputError(str(err).replace(path, name)) from None

    def parse(self, text: str) -> List[str]:
        names = parse_vocabulary(text or "")
        if len(names) > self.max_classes:
            raise InputError(
                f"{len(names):,} classes is more than the {self.max_classes:,} this page takes: shorten the "
                "vocabulary (or start the app with a larger --max-classes)"
            )
        return names

    # ----------------------------------------------------------------------------- actions
    def preview(self, path: Optional[str]):
        """The uploaded image, shown before it is segmented, and a status line about it."""
        if not path:
            return None, gr.skip()
        try:
            image = self.load_image(path)
        except InputError as err:
            return None, error_text(err)
        height, width = image.shape[:2]
        return image, f"{Path(path).name}: {width} x {height} pixels. Press Segment."

    def segment(self, path: Optional[str], text: str, sliding: bool):
        """Segment the uploaded image: overlay, table, downloads, class views, selected row, class
        view and its caption, status. A refused request changes only the status (gr.skip())."""
        keep = (gr.skip(),) * 7
        try:
            names = self.parse(text)
            image = self.load_image(path)
        except InputError as err:
            return (*keep, error_text(err))
        start = time.perf_counter()
        try:
            # One request at a time (the queue's concurrency limit), so the switch is this request's.
            self.segmenter.model.sliding_window = bool(sliding)  # Segmenter has no switch of its own
            result = self.segmenter(image, vocabulary=names, probabilities=True)
            folder = Path(tempfile.mkdtemp(dir=self.workdir))
            stem = folder / Path(path).name
            write_outputs(image, result, stem, Path(path).name)
            views = views_of(image, result)
        except InputError as err:
            return (*keep, error_text(err))
        except MemoryError:
            return (*keep, error_text("not enough memory for this image and vocabulary: downscale the image or shorten the vocabulary"))
        except Exception as err:  # the page shows a message; the traceback goes to the server's log
            logger.exception("segmentation failed")
            return (*keep, error_text(f"segmentation failed ({type(err).__name__}: {err}); the server log has the details"))
        self.prune()
        seconds = time.perf_counter() - start
        rows = [[result.names[i], round(100 * float(result.pixel_share[i]), 2), round(float(result.scores[i]), 3)]
                for i in result.present]
        files = [f"{stem}.overlay.jpg", f"{stem}.labels.png", f"{stem}.json"]
        height, width = result.label_map.shape
        status = (
            f"{width} x {height} pixels, {len(names)} classes, {len(result.present)} present "
            f"(sliding window {'on' if sliding else 'off'}, {seconds:.1f} s). Select a row of the table to see "
            "that class's mask or score map."
        )
        return f"{stem}.overlay.jpg", rows, files, views, None, None, "", status

    def prune(self) -> None:
        """Delete the results of requests older than KEEP_SECONDS."""
        limit = time.time() - KEEP_SECONDS
        for folder in self.workdir.iterdir():
            if folder.stat().st_mtime < limit:
                shutil.rmtree(folder, ignore_errors=True)


def error_text(err) -> str:
    return f"**Cannot segment:** {err}"


def views_of(image: np.ndarray, result: Segmentation) -> ClassViews:
    """The image, labels and present classes' score maps brought to at most VIEW_SIDE a side."""
    height, width = result.label_map.shape
    scale = min(1.0, VIEW_SIDE / max(height, width))
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    rows = ((np.arange(h) + 0.5) * height / h).astype(int)  # nearest pixel: labels are not averaged
    cols = ((np.arange(w) + 0.5) * width / w).astype(int)
    small = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    scores = {}
    for i in result.present:  # probabilities come at the processing size: bilinear to the view's
        probability = result.probabilities[i].numpy()
        scores[i] = (cv2.resize(probability, (w, h), interpolation=cv2.INTER_LINEAR) * 255 + 0.5).clip(0, 255).astype(np.uint8)
    return ClassViews(small, result.label_map[rows][:, cols], list(result.present), result.names, scores)


def class_view(views: Optional[ClassViews], row: Optional[int], kind: str):
    """One class's mask (its pixels in its legend colour, the rest dimmed) or score map."""
    if views is None or row is None or not 0 <= row < len(views.present):
        return None, ""
    i = views.present[row]
    if kind == "score map":
        coloured = cv2.cvtColor(cv2.applyColorMap(views.scores[i], cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)
        picture = cv2.addWeighted(views.image, 0.25, coloured, 0.75, 0)
        caption = f"**{views.names[i]}**: probability, dark blue 0 to yellow 1"
    else:
        colour = palette(len(views.names))[i].astype(np.float32)
        mask = views.labels == i
        picture = (views.image * 0.3).astype(np.uint8)
        picture[mask] = (views.image[mask] * 0.4 + colour * 0.6).astype(np.uint8)
        caption = f"**{views.names[i]}**: its pixels in its legend colour, the rest dimmed"
    return picture, caption


def build_page(web: WebDemo):
    """The Gradio page (not launched)."""
    trained = web.segmenter.trained
    sliding_default = bool(web.segmenter.cfg.TEST.SLIDING_WINDOW)
    with gr.Blocks(title="LMSeg: open-vocabulary segmentation", analytics_enabled=False) as page:
        gr.Markdown("# LMSeg: open-vocabulary semantic segmentation\nSegment an image into any classes you name.")
        if not trained:
            gr.Markdown(
                "**Untrained model:** no trained weights are loaded, so the labels are those of an untrained "
                f"model and mean nothing. For {WEIGHTS_HINT}.",
                elem_id="untrained",
            )
        views = gr.State(None, time_to_live=KEEP_SECONDS)
        row = gr.State(None, time_to_live=KEEP_SECONDS)
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="image_file")
                preview = gr.Image(label="Image", interactive=False, height=260, elem_id="preview")
                vocab = gr.Textbox(
                    label='Vocabulary: classes separated by ",", synonyms of one class by "|"',
                    value=EXAMPLE_VOCABULARY, lines=2, max_lines=6, elem_id="vocab",
                )
                benchmark = gr.Dropdown(
                    choices=list(BENCHMARKS), value=None, label="or a benchmark's vocabulary", elem_id="benchmark"
                )
                sliding = gr.Checkbox(value=sliding_default, label="Sliding window (slower; finer on large images)",
                                      elem_id="sliding")
                run = gr.Button("Segment", variant="primary", elem_id="run")
                gr.Examples([[str(EXAMPLE_IMAGE), EXAMPLE_VOCABULARY]], inputs=[upload, vocab], label="Example (as make demo)")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                overlay = gr.Image(label="Overlay", show_label=False, interactive=False, format="png", elem_id="overlay")
                table = gr.Dataframe(
                    headers=["class", "pixel share (%)", "score"], datatype=["str", "number", "number"],
                    interactive=False, label="Classes present (select a row)", elem_id="classes",
                )
                kind = gr.Radio(["mask", "score map"], value="mask", label="Show the selected class's", elem_id="view_kind")
                view_caption = gr.Markdown(elem_id="view_caption")
                view = gr.Image(label="Selected class", show_label=False, interactive=False, format="png", elem_id="class_view")
                downloads = gr.File(label="Downloads: overlay, label map (PNG), summary (JSON)", file_count="multiple",
                                    interactive=False, elem_id="downloads")

        # Progress shows on the images; the status line stays readable.
        upload.change(web.preview, inputs=upload, outputs=[preview, status], show_progress_on=preview)
        benchmark.change(lambda key: vocabulary_text(load_vocabulary(BENCHMARKS[key])) if key else gr.skip(),
                         inputs=benchmark, outputs=vocab)
        run.click(web.segment, inputs=[upload, vocab, sliding],
                  outputs=[overlay, table, downloads, views, row, view, view_caption, status],
                  concurrency_limit=1, concurrency_id="model", show_progress_on=overlay)

        def select(views_value, kind_value, event: gr.SelectData):
            index = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
            return (index, *class_view(views_value, index, kind_value))

        table.select(select, inputs=[views, kind], outputs=[row, view, view_caption])
        kind.change(class_view, inputs=[views, row, kind], outputs=[view, view_caption])
    return page


def main(argv=None) -> int:
    args = parse_args(argv)
    if gr is None:
        print(
            'error: the web demo needs Gradio: pip install "lmseg[web]" (in a checkout: pip install -e ".[web]", '
            "which make web does)",
            file=sys.stderr,
        )
        return 2
    configure_logging()
    try:
        segmenter = build_segmenter(args.config_file, args.weights, args.opts)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lmseg-web-") as workdir:
        web = WebDemo(segmenter, max_image_pixels=args.max_image_pixels, max_classes=args.max_classes, workdir=workdir)
        page = build_page(web)
        page.queue(default_concurrency_limit=1, max_size=args.queue_size)
        theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no font download
        page.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=args.max_file_size,
                    allowed_paths=[workdir], theme=theme, show_error=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
