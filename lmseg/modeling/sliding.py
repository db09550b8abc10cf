"""Sliding-window inference geometry: the views of an image, the area each covers, and folding back.

The image is resized to a square ``grid`` x ``grid`` image, cut into overlapping ``window`` x
``window`` crops, and also seen whole at ``window`` x ``window``. The scores of the windows are
averaged where they overlap and blended with the whole view's (CAT-Seg's inference).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F


def whole_image_boxes(n: int, device: torch.device) -> torch.Tensor:
    """Boxes (n, 5) that cover each of n images whole: rows (image index, 0, 0, 1, 1)."""
    boxes = torch.zeros(n, 5, device=device)
    boxes[:, 0] = torch.arange(n)
    boxes[:, 3:] = 1.0
    return boxes


class SlidingWindows:
    """The windows of sliding-window inference.

    Args:
        grid: side of the square image the windows are cut from (TEST.SLIDING_GRID).
        window: side of each window (TEST.SLIDING_WINDOW_SIZE).
        overlap: fraction of a window shared with the next one (TEST.SLIDING_OVERLAP).
        global_weight: weight of the whole-image view in the blend (TEST.SLIDING_GLOBAL_WEIGHT).
    """

    def __init__(self, grid: int, window: int, overlap: float, global_weight: float):
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"TEST.SLIDING_OVERLAP={overlap} must lie in [0, 1)")
        if window > grid:
            raise ValueError(f"TEST.SLIDING_WINDOW_SIZE={window} is larger than TEST.SLIDING_GRID={grid}")
        self.grid = grid
        self.window = window
        self.overlap = overlap
        self.global_weight = global_weight
        stride = max(int(window * (1 - overlap)), 1)
        starts = list(range(0, grid - window + 1, stride))
        if starts[-1] + window < grid:
            starts.append(grid - window)
        # (y, x) of each window's top-left corner on the grid image, row by row
        self.offsets: List[Tuple[int, int]] = [(y, x) for y in starts for x in starts]
        self._tables: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    @property
    def num_views(self) -> int:
        """Views per image: the windows, then the whole image."""
        return len(self.offsets) + 1

    def views(self, image: torch.Tensor) -> torch.Tensor:
        """The views (num_views, 3, window, window) of one image (3, H, W): windows, then whole."""
        grid, size = self.grid, self.window
        g = F.interpolate(image[None], size=(grid, grid), mode="bilinear", align_corners=False)
        crops = [g[:, :, y : y + size, x : x + size] for y, x in self.offsets]
        whole = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)
        return torch.cat([*crops, whole])

    def areas(self) -> List[Tuple[float, float, float, float]]:
        """The part (x0, y0, x1, y1), relative to the image, that each view covers."""
        g, s = self.grid, self.window
        # The grid is the whole image resized, so relative positions on it are those on the image.
        return [(x / g, y / g, (x + s) / g, (y + s) / g) for y, x in self.offsets] + [(0.0, 0.0, 1.0, 1.0)]

    def boxes(self, num_images: int, device: torch.device) -> torch.Tensor:
        """Rows (image index, x0, y0, x1, y1) of every view of ``num_images`` images, image by image,
        for cropping each view's area out of a feature map of the whole image."""
        areas = self.areas()
        return torch.tensor([[i, *a] for i in range(num_images) for a in areas], device=device)

    def fold(self, logits: torch.Tensor) -> torch.Tensor:
        """Scores (T, grid, grid) from the logits (num_views, T, h, w) of one image's views.

        The windows' scores are summed onto the grid by one ``index_add_`` over all windows, and
        divided by the number of windows covering each cell.
        """
        grid, size = self.grid, self.window
        # resized class-major, (T, views, size, size), so that the windows of a class are adjacent
        probs = F.interpolate(logits.transpose(0, 1), size=(size, size), mode="bilinear", align_corners=False).sigmoid()
        t, wins = probs.shape[0], len(self.offsets)
        index, inverse_count = self._fold_tables(probs.device)
        acc = probs.new_zeros(t, grid * grid).index_add_(1, index, probs[:, :wins].reshape(t, wins * size * size))
        whole = F.interpolate(probs[None, :, -1], size=(grid, grid), mode="bilinear", align_corners=False)[0]
        w = self.global_weight
        return (1 - w) * (acc.view(t, grid, grid) * inverse_count.to(acc.dtype)) + w * whole

    def _fold_tables(self, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """The grid cell (flat index) of every cell of every window, in window order, and 1 / the
        number of windows covering each grid cell (grid, grid); computed once per device."""
        if self._tables is None or self._tables[0].device != device:
            grid, size = self.grid, self.window
            cells = torch.arange(size, device=device)
            index = torch.cat(
                [((y + cells)[:, None] * grid + (x + cells)[None, :]).flatten() for y, x in self.offsets]
            )
            count = torch.zeros(grid * grid, device=device).index_add_(0, index, torch.ones_like(index, dtype=torch.float))
            self._tables = (index, count.reciprocal().view(grid, grid))
        return self._tables
