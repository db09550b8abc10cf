#!/usr/bin/env python
"""Segment your own images (or a video) with any vocabulary.

    python demo/demo.py --input photo.jpg --vocab "cat,sofa|couch,floor"

Without --config-file it runs the best model you can download today, CAT-Seg's ViT-B
(configs/catseg_vitb.yaml with model_base.pth, fetched once into ~/.cache/lmseg or $LMSEG_CACHE).
Where it cannot be fetched, it says which file to put where and runs the offline installation check
(configs/tiny.yaml, an untrained model) instead.

For each image IMG it writes, under --output and at IMG's path relative to the inputs' common
folder: IMG.overlay.jpg (colours and a legend of the classes present), IMG.labels.png (the class
index of each pixel, 16-bit from 256 classes) and IMG.json (the vocabulary, each present class's
pixel share and score), and prints one line. A video is written back as VIDEO.overlay.mp4.

Vocabulary: --vocab (classes separated by ",", synonyms of one class by "|"), or --vocab-file (one
class a line, a JSON list of names, or a benchmark name: ade150, ade847, coco, pc59, pc459, voc20);
neither gives ADE20K's 150 classes (ade150).

Exit status: 0 all done, 1 some inputs were skipped (each is reported), 2 nothing could be done.
"""
import argparse
import glob
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore", category=FutureWarning)  # raised by detectron2's own imports

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lmseg.api import InputError, Segmentation, Segmenter, parse_vocabulary, read_image  # noqa: E402
from lmseg.data.vocabulary import BENCHMARK_VOCABULARIES, load_vocabulary, read_class_list  # noqa: E402
from lmseg.download import CATSEG_VITB_URL, DownloadError, fetch, place_hint  # noqa: E402
from lmseg.io import atomic_write  # noqa: E402
from lmseg.modeling.prompts import prompt_name  # noqa: E402
from lmseg.visualize import draw_overlay  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "catseg_vitb.yaml"
OFFLINE_CONFIG = REPO / "configs" / "tiny.yaml"
DEFAULT_VOCABULARY = "ade150"
DEFAULT_OUTPUT = "demo_output"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class UsageError(Exception):
    """Nothing can be done (bad vocabulary, no inputs, no model): exit status 2."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", metavar="FILE", help=f"model config (default: {DEFAULT_CONFIG.relative_to(REPO)} "
                        "with CAT-Seg's ViT-B weights, downloaded once)")
    parser.add_argument("--weights", metavar="PATH|URL", help="weights (MODEL.WEIGHTS); a URL is downloaded once into the cache")
    parser.add_argument("--input", nargs="+", default=[], metavar="PATH", help="image files, folders (searched recursively) or glob patterns")
    parser.add_argument("--video-input", metavar="FILE", help="a video file, written back with the overlay")
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument("--vocab", help='classes separated by ",", synonyms by "|": "sofa|couch,cat"')
    vocab.add_argument("--vocab-file", metavar="FILE|NAME",
                       help=f"one class a line, a JSON list, or one of {', '.join(BENCHMARK_VOCABULARIES)} "
                       f"(default when neither is given: {DEFAULT_VOCABULARY})")
    parser.add_argument("--output", metavar="DIR", help=f"folder for the results (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                        help="config overrides, e.g. --opts MODEL.DEVICE cpu TEST.SLIDING_WINDOW False")
    args = parser.parse_args(argv)
    if not args.input and not args.video_input:
        parser.error("give images with --input or a video with --video-input")
    if len(args.opts) % 2:
        parser.error(f"--opts takes KEY VALUE pairs; got an odd number of items: {' '.join(args.opts)}")
    return args


# ------------------------------------------------------------------------------------- vocabulary
def vocabulary(args) -> List[str]:
    try:
        if args.vocab is not None:
            return parse_vocabulary(args.vocab)
        source = args.vocab_file or DEFAULT_VOCABULARY
        if source in BENCHMARK_VOCABULARIES:
            return parse_vocabulary(load_vocabulary(source))
        if not os.path.isfile(source):
            raise UsageError(
                f"--vocab-file {source!r}: no such file, and not a benchmark name ({', '.join(BENCHMARK_VOCABULARIES)})"
            )
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"--vocab-file {source}: cannot read it as UTF-8 text ({err})") from None
        if source.endswith(".json") or text.lstrip().startswith("["):
            return parse_vocabulary(read_class_list(source))
        lines = [line.strip() for line in text.splitlines()]
        return parse_vocabulary([line for line in lines if line and not line.startswith("#")])
    except (InputError, ValueError, KeyError, FileNotFoundError) as err:
        where = "--vocab" if args.vocab is not None else "--vocab-file"
        raise UsageError(f"{where}: {err}") from None


# ----------------------------------------------------------------------------------------- inputs
def image_paths(inputs: Sequence[str]) -> List[str]:
    """Files named, images found in folders (recursively) and glob matches, in order, once each."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            for root, dirs, files in os.walk(item):
                dirs.sort()
                paths += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES)]
        elif glob.has_magic(item):
            paths += sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
        else:
            paths.append(item)  # reported later if missing or not an image
    return list(dict.fromkeys(os.path.normpath(p) for p in paths))


def output_names(paths: Sequence[str]) -> List[str]:
    """Each input's path relative to the inputs' common folder: a/x.jpg and b/x.jpg stay apart."""
    if not paths:
        return []
    parents = [os.path.dirname(os.path.abspath(p)) for p in paths]
    common = os.path.commonpath(parents)
    return [os.path.relpath(os.path.abspath(p), common) for p in paths]


# ------------------------------------------------------------------------------------------ model
def build_segmenter(args) -> Segmenter:
    config, weights = args.config_file, args.weights
    if config is None:
        config = str(DEFAULT_CONFIG)
        if weights is None:
            try:
                weights = str(fetch(CATSEG_VITB_URL))
            except DownloadError as err:
                print(
                    f"Cannot fetch the default weights: {err}.\nTo get real results, {place_hint(CATSEG_VITB_URL)}.\n"
                    f"Running the offline installation check instead, on {OFFLINE_CONFIG.relative_to(REPO)}.",
                    file=sys.stderr,
                )
                config = str(OFFLINE_CONFIG)
    if weights and weights.startswith(("http://", "https://")):
        try:
            weights = str(fetch(weights))
        except DownloadError as err:
            raise UsageError(f"{err}\nOr {place_hint(args.weights)}") from None
    weights = weights and os.path.expanduser(weights)
    if weights and not os.path.isfile(weights):
        raise UsageError(f"--weights {weights}: no such file")
    try:
        return Segmenter.from_config(config, weights=weights, opts=args.opts)
    except (FileNotFoundError, KeyError, ValueError, AssertionError, RuntimeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise UsageError(f"cannot build the model from {config}: {message}") from None


# ---------------------------------------------------------------------------------------- outputs
def write_outputs(image: np.ndarray, result: Segmentation, stem: Path, source: str) -> Tuple[List[int], List[int]]:
    """Write STEM.overlay.jpg, STEM.labels.png and STEM.json; return the legend's (shown, summarised)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    overlay, legend = draw_overlay(image, result.label_map, result.names, result.present, result.pixel_share)
    labels = result.label_map
    label_image = Image.fromarray(labels) if labels.dtype == np.uint8 else Image.fromarray(labels.astype(np.uint16))
    atomic_write(f"{stem}.overlay.jpg", lambda f: Image.fromarray(overlay).save(f, format="JPEG", quality=90))
    atomic_write(f"{stem}.labels.png", lambda f: label_image.save(f, format="PNG", compress_level=3))
    summary = {"input": source, **result.to_dict()}
    summary["legend"] = {
        "shown": [result.names[i] for i in legend.shown],
        "summarised": [result.names[i] for i in legend.summarised],
    }
    text = json.dumps(summary, ensure_ascii=False, indent=1)
    atomic_write(f"{stem}.json", lambda f: f.write(text.encode("utf-8")))
    return legend.shown, legend.summarised


def one_line(result: Segmentation, limit: int = 5) -> str:
    names = result.names
    found = [f"{names[i]} {result.pixel_share[i]:.0%}" for i in result.present[:limit]]
    more = len(result.present) - limit
    return ", ".join(found) + (f", +{more} more" if more > 0 else "")


def segment_images(seg: Segmenter, paths: List[str], out: Path) -> int:
    """Segment and write every image; returns how many were skipped (each reported)."""
    skipped = 0
    bar = tqdm(total=len(paths), unit="image", disable=len(paths) < 2, file=sys.stderr)
    for path, name in zip(paths, output_names(paths)):
        stem = out / name
        try:
            image = read_image(path)
            result = seg(image)
            write_outputs(image, result, stem, path)
        except InputError as err:
            reason = str(err).removeprefix(f"{path}: ")
            tqdm.write(f"{path}: skipped: {reason}", file=sys.stderr)
            skipped += 1
        except MemoryError:
            tqdm.write(f"{path}: skipped: not enough memory for this image; downscale it", file=sys.stderr)
            skipped += 1
        else:
            tqdm.write(f"{path}: {one_line(result)} -> {stem}.{{overlay.jpg,labels.png,json}}")
        bar.update(1)
    bar.close()
    return skipped


def segment_video(seg: Segmenter, path: str, out: Path) -> int:
    """Write the video back with the overlay (VIDEO.overlay.mp4); returns 1 if it was skipped."""
    import cv2

    if not os.path.isfile(path):
        print(f"{path}: skipped: no such file", file=sys.stderr)
        return 1
    capture = cv2.VideoCapture(path)
    ok, frame = capture.read()
    if not ok:
        print(f"{path}: skipped: not a video OpenCV can read", file=sys.stderr)
        return 1
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    target = out / f"{Path(path).name}.overlay.mp4"
    target.parent.mkdir(parents=True, exist_ok=True)
    height, width = frame.shape[:2]
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        print(f"{path}: skipped: OpenCV cannot write {target} (no MPEG-4 encoder in this build)", file=sys.stderr)
        return 1
    shares = np.zeros(len(seg.vocabulary))
    count = 0
    with tqdm(total=frames, unit="frame", file=sys.stderr, desc=Path(path).name) as bar:
        while ok:
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            result = seg(rgb)
            overlay, _ = draw_overlay(rgb, result.label_map, result.names, result.present, result.pixel_share)
            writer.write(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
            shares += result.pixel_share
            count += 1
            bar.update(1)
            ok, frame = capture.read()
    writer.release()
    capture.release()
    names = [prompt_name(n) for n in seg.vocabulary]
    order = np.argsort(-shares)[:5]
    found = ", ".join(f"{names[i]} {shares[i] / count:.0%}" for i in order if shares[i] > 0)
    print(f"{path}: {count} frames, {found} -> {target}")
    return 0


def _configure_logging() -> None:
    """Warnings to stderr as one plain line each (unless the caller has set logging up)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    # open_clip's own note on a randomly initialised CLIP repeats what lmseg says about the weights
    handler.addFilter(lambda record: not record.getMessage().startswith("No pretrained weights loaded"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


def main(argv=None) -> int:
    args = parse_args(argv)
    _configure_logging()
    try:
        names = vocabulary(args)
        paths = image_paths(args.input)
        if args.input and not paths:
            raise UsageError(f"no images found in {' '.join(args.input)}")
        seg = build_segmenter(args)
        try:
            seg.set_vocabulary(names)
        except InputError as err:
            raise UsageError(f"the vocabulary does not suit this model: {err}") from None
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.output or DEFAULT_OUTPUT)
    if args.output is None:
        print(f"Writing the results to {out}/ (choose another folder with --output)", file=sys.stderr)
    skipped = segment_images(seg, paths, out) if paths else 0
    if args.video_input:
        skipped += segment_video(seg, args.video_input, out)
    if skipped:
        print(f"{skipped} input(s) skipped (see above); the others were written to {out}/", file=sys.stderr)
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
