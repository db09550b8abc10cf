"""Drawing segmentations: a colour overlay at the image's size with a legend of the classes present.

The legend is drawn with a Unicode TrueType font (DejaVu Sans, which matplotlib ships, or a system
font that has the glyphs a name needs), white text with a dark outline on a translucent dark panel,
so any name reads on any background. Its size follows the image's, so that it stays readable when
a large photo is shown fitted to a screen, and it lists the classes largest first, summarising the
tail in one line when they do not all fit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Elements per step of the band-by-band blending (bounds memory for very large images).
_STEP = 2**22
# Longest name shown in the legend, in characters.
_MAX_NAME = 40


def palette(n: int) -> np.ndarray:
    """n distinct RGB colours (n, 3) uint8, the same for the same n every time."""
    hues = (np.arange(n) * 0.618033988749895) % 1.0  # golden-ratio steps spread the hues
    hsv = np.stack([hues * 180, np.full(n, 200), np.where(np.arange(n) % 2, 230, 170)], axis=1)
    return cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0]


def blend(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The RGB image (H, W, 3) uint8 blended with its label map's colours, class borders in white.

    Border width grows with the image (1 pixel per 500 of its longer side). Works band by band, so
    memory stays a few times the image's own.
    """
    height, width = labels.shape
    out = np.empty_like(image)
    rows = max(1, _STEP // max(width, 1))
    for y0 in range(0, height, rows):
        band = slice(y0, y0 + rows)
        out[band] = cv2.addWeighted(image[band], 1 - alpha, colours[labels[band]], alpha, 0)
    edges = np.zeros(labels.shape, np.uint8)  # a pixel whose label differs from its left or upper neighbour
    edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edges[1:, :] |= labels[1:, :] != labels[:-1, :]
    thickness = max(height, width) // 500
    if thickness > 1:
        edges = cv2.dilate(edges, np.ones((thickness, thickness), np.uint8))
    out[edges.astype(bool)] = 255
    return out


@dataclass
class Legend:
    """What a legend shows: the classes listed (indices, largest first) and how many more classes
    its last line summarises (with their total share of the image)."""

    shown: List[int]
    summarised: List[int]


def draw_legend(
    canvas: np.ndarray,
    present: Sequence[int],
    names: Sequence[str],
    shares: Sequence[float],
    colours: np.ndarray,
) -> Legend:
    """Draw the legend of the ``present`` classes (largest first) on the canvas, in place, in its
    top-left corner, and return what it shows.

    As many classes are listed as fit in the canvas's height (the last line then summarises the
    rest); a canvas too small for one line gets no legend (everything summarised, nothing drawn).
    """
    height, width = canvas.shape[:2]
    size = max(11, round(max(height, width) / 45))
    row = round(size * 1.4)
    pad = max(2, size // 3)
    fit = (height - 2 * pad) // row
    present = list(present)
    if fit < 1 or width < 4 * size:
        return Legend([], present)
    shown = present if len(present) <= fit else present[: fit - 1]
    rest = present[len(shown) :]
    lines = [(i, f"{_short(names[i])}  {_percent(shares[i])}") for i in shown]
    if rest:
        total = float(sum(shares[i] for i in rest))
        lines.append((None, f"+ {len(rest)} more classes ({_percent(total)})"))
    runs = [_runs(text, size) for _, text in lines]
    stroke = max(1, size // 12)
    swatch = size
    text_x = pad + swatch + pad
    text_w = max(sum(font.getlength(t) for t, font in r) for r in runs)
    panel_w = int(min(width, text_x + text_w + pad + stroke))
    panel_h = min(height, 2 * pad + row * len(lines))

    image = Image.fromarray(canvas[:panel_h, :panel_w])
    shade = Image.new("RGB", image.size, (20, 20, 20))
    image = Image.blend(image, shade, 0.6)
    draw = ImageDraw.Draw(image)
    for k, ((i, _), parts) in enumerate(zip(lines, runs)):
        y = pad + k * row
        if i is not None:
            top = y + (row - swatch) // 2
            draw.rectangle([pad, top, pad + swatch, top + swatch], fill=tuple(int(c) for c in colours[i]), outline=(255, 255, 255))
        x = text_x
        for text, font in parts:
            draw.text((x, y + row // 2), text, font=font, fill=(255, 255, 255), anchor="lm",
                      stroke_width=stroke, stroke_fill=(0, 0, 0))
            x += font.getlength(text)
    canvas[:panel_h, :panel_w] = np.asarray(image)
    return Legend(shown, rest)


def draw_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    present: Optional[Sequence[int]] = None,
    shares: Optional[Sequence[float]] = None,
    alpha: float = 0.5,
) -> Tuple[np.ndarray, Legend]:
    """The image blended with one colour per class and a legend of the classes present, at the
    image's size, and what the legend shows.

    ``present`` (largest first) and ``shares`` (per class) are computed from ``labels`` when not
    given (a :class:`lmseg.Segmentation` has them).
    """
    if shares is None:
        shares = np.bincount(labels.ravel(), minlength=len(names)) / labels.size
    if present is None:
        found = np.flatnonzero(np.asarray(shares) > 0)
        present = [int(i) for i in found[np.argsort(-np.asarray(shares)[found], kind="stable")]]
    colours = palette(len(names))
    canvas = blend(image, labels, colours, alpha)
    legend = draw_legend(canvas, present, names, shares, colours)
    return canvas, legend


def _percent(share: float) -> str:
    return f"{share:.0%}" if share >= 0.01 else "<1%" if share > 0 else "0%"


def _short(name: str) -> str:
    return name if len(name) <= _MAX_NAME else name[: _MAX_NAME - 1] + "…"


def _runs(text: str, size: int) -> List[Tuple[str, ImageFont.FreeTypeFont]]:
    """``text`` cut into runs of characters drawn with one font each: DejaVu Sans where it has the
    glyph, else the first font that has it."""
    runs: List[Tuple[str, str]] = []
    for char in text:
        path = _font_path_for(char)
        if runs and runs[-1][1] == path:
            runs[-1] = (runs[-1][0] + char, path)
        else:
            runs.append((char, path))
    return [(part, _font(path, size)) for part, path in runs]


@lru_cache(maxsize=65536)
def _font_path_for(char: str) -> str:
    paths = _font_paths()
    if char.isspace():
        return paths[0]
    return next((p for p in paths if ord(char) in _cmap(p)), paths[0])


@lru_cache(maxsize=None)
def _font_paths() -> Tuple[str, ...]:
    """TrueType fonts to try: DejaVu Sans (matplotlib's own) first, then the system's, then
    matplotlib's Last Resort font (a box naming the Unicode block, for glyphs no font has)."""
    from matplotlib import font_manager

    first = str(font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"), fallback_to_default=True))
    fonts = sorted(str(f.fname) for f in font_manager.fontManager.ttflist if str(f.fname).lower().endswith((".ttf", ".otf")))
    last = [f for f in fonts if "lastresort" in os.path.basename(f).lower()]
    others = [f for f in fonts if f not in last]
    return tuple(dict.fromkeys([first, *others, *last]))


@lru_cache(maxsize=None)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


@lru_cache(maxsize=None)
def _cmap(path: str) -> frozenset:
    from fontTools.ttLib import TTFont

    try:
        with TTFont(path, fontNumber=0, lazy=True) as font:
            return frozenset(font.getBestCmap() or ())
    except Exception:  # an unreadable system font is skipped, whatever fontTools raises
        return frozenset()
