"""Segment your own images (or a video) with any vocabulary.

    python -m lmseg.demo --input photo.jpg --vocab "cat,sofa|couch,floor"
    lmseg-demo --input photo.jpg --vocab "cat,sofa|couch,floor"     (the same, as a console script)
    python demo/demo.py --input photo.jpg ...                        (the same, from a checkout)

Without --config-file it runs the best model you can download today, CAT-Seg's ViT-B
(catseg_vitb.yaml with model_base.pth, fetched once into ~/.cache/lmseg or $LMSEG_CACHE).
Where it cannot be fetched, it says which file to put where and runs the offline installation check
(tiny.yaml, an untrained model) instead.

For each image IMG it writes, under --output and at IMG's path relative to the inputs' common
folder: IMG.overlay.jpg (colours and a legend of the classes present), IMG.labels.png (the class
index of each pixel, 16-bit from 256 classes) and IMG.json (the vocabulary, each present class's
pixel share and score), and prints one line. A video is written back as VIDEO.overlay.mp4.

Vocabulary: --vocab (classes separated by ",", synonyms of one class by "|"), or --vocab-file (one
class a line, a JSON list of names, or a benchmark name: ade150, ade847, coco, pc59, pc459, voc20);
neither gives ADE20K's 150 classes (ade150).

The exit statuses are listed at the end of --help.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from ..api import Segmenter, parse_vocabulary
from ..data.vocabularies import BENCHMARK_VOCABULARIES, load_vocabulary, read_class_list
from ..images import InputError, read_image
from ..modeling.prompts import prompt_name
from ..visualize import draw_overlay
from .common import DEFAULT_CONFIG, UsageError, build_segmenter, configure_logging, write_outputs

DEFAULT_VOCABULARY = "ade150"
DEFAULT_OUTPUT = "demo_output"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

# Exit statuses besides 0 (all done), 1 (some inputs skipped) and 2 (UsageError: nothing can be done).
EXIT_OUTPUT = 3
EXIT_INTERRUPTED = 130  # what shells report for a program ended by Ctrl-C (128 + SIGINT)
EPILOG = f"""\
exit status:
  0  every input was segmented and written
  1  some inputs were skipped (each is reported), the others written
  2  nothing could be done: no inputs, a bad vocabulary, config or weights
  {EXIT_OUTPUT}  --output is a file, or a folder that cannot be created or written (checked before the
     model is built)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C): the results written until then are kept, and it says how many
"""


class OutputFolderError(Exception):
    """--output names a place where the results cannot be written: exit status EXIT_OUTPUT."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lmseg-demo", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", metavar="FILE", help=f"model config (default: {Path(DEFAULT_CONFIG).name} "
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
# The demo's results for an image IMG that are images themselves.
RESULT_SUFFIXES = (".overlay.jpg", ".labels.png")


def image_paths(inputs: Sequence[str], output: Optional[Path] = None) -> List[str]:
    """Files named, images found in folders (recursively) and glob matches, in order, once each.

    Where the output folder lies inside a folder searched (``--input photos --output photos/out``),
    it and everything under it are left out, so that a second run does not segment the first one's
    results; an input named inside the output folder is searched as it is, except for the demo's
    own results in it (``IMG.overlay.jpg``, ``IMG.labels.png``), which folder and glob searches
    never return (``--input photos --output photos``). Files named one by one are always kept.
    """
    def inside_output(path: str) -> bool:
        if output is None:
            return False
        real, out = os.path.realpath(path), os.path.realpath(output)
        return real == out or real.startswith(out.rstrip(os.sep) + os.sep)

    def searched(path: str) -> bool:
        return not (path.endswith(RESULT_SUFFIXES) and inside_output(path))

    paths = []
    for item in inputs:
        if os.path.isdir(item):
            keep_output = inside_output(item)
            for root, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if keep_output or not inside_output(os.path.join(root, d)))
                found = [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES)]
                paths += [p for p in found if searched(p)]
        elif glob.has_magic(item):
            keep_output = inside_output(_literal_prefix(item))
            matches = [p for p in glob.glob(item, recursive=True) if os.path.isfile(p)]
            paths += sorted(p for p in matches if (keep_output or not inside_output(p)) and searched(p))
        else:
            paths.append(item)  # reported later if missing or not an image
    return list(dict.fromkeys(os.path.normpath(p) for p in paths))


def _literal_prefix(pattern: str) -> str:
    """The folder a glob pattern searches: its components before the first with a wildcard."""
    parts = Path(pattern).parts
    literal = parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]
    return os.path.join(*literal) if literal else "."


def output_names(paths: Sequence[str]) -> List[str]:
    """Each input's path relative to the inputs' common folder: a/x.jpg and b/x.jpg stay apart."""
    if not paths:
        return []
    parents = [os.path.dirname(os.path.abspath(p)) for p in paths]
    common = os.path.commonpath(parents)
    return [os.path.relpath(os.path.abspath(p), common) for p in paths]


# ---------------------------------------------------------------------------------------- outputs
def check_output_folder(out: Path) -> None:
    """Raise :class:`OutputFolderError` unless results can be written under ``out``: an existing
    folder that is writable, or a path whose nearest existing folder is writable (``out`` is
    created there when the first result is written)."""
    try:
        if os.path.lexists(out) and not out.is_dir():
            raise OutputFolderError(
                f"--output {out} is a file, not a folder: name a folder for the results (it is created if missing)"
            )
        existing = Path(os.path.abspath(out))
        while not os.path.lexists(existing):
            existing = existing.parent
        if not existing.is_dir():
            raise OutputFolderError(
                f"--output {out} cannot be created: {existing} is a file, not a folder; name another folder"
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputFolderError(
                f"--output {out} cannot be written: {existing} is not writable (no permission, or a "
                "read-only file system); name a folder you can write to"
            )
    except OSError as err:  # a folder on the way that cannot even be looked into
        raise OutputFolderError(f"--output {out} cannot be used: {err}") from None


def one_line(result: Segmentation, limit: int = 5) -> str:
    names = result.names
    found = [f"{names[i]} {result.pixel_share[i]:.0%}" for i in result.present[:limit]]
    more = len(result.present) - limit
    return ", ".join(found) + (f", +{more} more" if more > 0 else "")


def segment_images(seg: Segmenter, paths: List[str], out: Path) -> int:
    """Segment and write every image; returns how many were skipped (each reported).

    Interrupted (KeyboardInterrupt), it says how many images were written, and where, and raises
    the KeyboardInterrupt again.
    """
    skipped = written = 0
    bar = tqdm(total=len(paths), unit="image", disable=len(paths) < 2, file=sys.stderr)
    try:
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
                written += 1
                tqdm.write(f"{path}: {one_line(result)} -> {stem}.{{overlay.jpg,labels.png,json}}")
            bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        also = f" ({skipped} skipped)" if skipped else ""
        print(f"Interrupted: {written} of {len(paths)} images written to {out}/{also}; "
              f"the other {len(paths) - written - skipped} were not segmented", file=sys.stderr)
        raise
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
    try:
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
    except KeyboardInterrupt:
        print(f"Interrupted: {target} holds the first {count} frames of {path}", file=sys.stderr)
        raise
    finally:  # a video writer that is released is a playable file, also when interrupted
        writer.release()
        capture.release()
    names = [prompt_name(n) for n in seg.vocabulary]
    order = np.argsort(-shares)[:5]
    found = ", ".join(f"{names[i]} {shares[i] / count:.0%}" for i in order if shares[i] > 0)
    print(f"{path}: {count} frames, {found} -> {target}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    configure_logging()
    out = Path(args.output or DEFAULT_OUTPUT)
    try:
        names = vocabulary(args)
        paths = image_paths(args.input, out)
        if args.input and not paths:
            raise UsageError(f"no images found in {' '.join(args.input)}")
        check_output_folder(out)
        seg = build_segmenter(args.config_file, args.weights, args.opts)
        try:
            seg.set_vocabulary(names)
        except InputError as err:
            raise UsageError(f"the vocabulary does not suit this model: {err}") from None
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OutputFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_OUTPUT
    except KeyboardInterrupt:
        print("Interrupted before anything was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.output is None:
        print(f"Writing the results to {out}/ (choose another folder with --output)", file=sys.stderr)
    try:
        skipped = segment_images(seg, paths, out) if paths else 0
        if args.video_input:
            skipped += segment_video(seg, args.video_input, out)
    except KeyboardInterrupt:  # segment_images and segment_video have said what was written
        return EXIT_INTERRUPTED
    if skipped:
        print(f"{skipped} input(s) skipped (see above); the others were written to {out}/", file=sys.stderr)
    return 1 if skipped else 0

