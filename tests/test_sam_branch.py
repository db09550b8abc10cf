"""SAM's branch checked by values: what SAM receives, which part of its features each view takes,
and that a non-zero SAM projection reaches the outputs the same way on every inference path."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers.model_helpers import (
    VOCAB, eval_batch, scores, segment_anything_tiny_encoder, tiny_model, tiny_sam_with_values, train_batch,
)

# SAM's published normalisation (0-255 RGB)
SAM_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
SAM_STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
SAM_INPUT = 128  # MODEL.SAM.INPUT_SIZE of configs/tiny.yaml


def _sam_input(image: torch.Tensor) -> torch.Tensor:
    """What SAM must receive for a 0-255 image (3, H, W): resized to its input size, normalised."""
    x = F.interpolate(image[None].float(), size=(SAM_INPUT, SAM_INPUT), mode="bilinear", align_corners=False)[0]
    return (x - SAM_MEAN) / SAM_STD


class PositionSam(nn.Module):
    """Stands in for SAM: channels 0 and 1 of its (N, 32, 8, 8) map hold the x and y of each cell's
    centre, relative to SAM's input; channel 2 the mean of the input, which tells images apart."""

    def __init__(self):
        super().__init__()
        self.input_size = SAM_INPUT
        self.grid = SAM_INPUT // 16
        self.inputs = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x)
        g = self.grid
        centres = (torch.arange(g, dtype=x.dtype) + 0.5) / g
        out = x.new_zeros(x.shape[0], 32, g, g)
        out[:, 0] = centres.view(1, 1, g)
        out[:, 1] = centres.view(1, g, 1)
        out[:, 2] = x.mean(dim=(1, 2, 3)).view(-1, 1, 1)
        return out


def _sam_maps_seen_by_fusion(model, batch):
    """The SAM features (views, C_sam, g, g) the fusion receives in one inference call."""
    seen = []
    hook = model.fusion.register_forward_hook(lambda m, args, out: seen.append(args[1]))
    try:
        scores(model, batch)
    finally:
        hook.remove()
    assert len(seen) == 1
    return seen[0]


def _expected_positions(area, n: int, sam_grid: int) -> torch.Tensor:
    """x (or y) that n CLIP cells across a view covering [a0, a1] of SAM's map receive from a map
    holding each SAM cell's centre: the mean of the centres under each cell's part of the view
    (widened to one SAM cell around its centre when narrower, and cut at the map's border), each
    weighted by the length it covers, computed here by averaging 40,000 points per part."""
    a0, a1 = area
    out = []
    for i in range(n):
        lo, hi = a0 + (a1 - a0) * i / n, a0 + (a1 - a0) * (i + 1) / n
        centre, half = (lo + hi) / 2, max((hi - lo) / 2, 0.5 / sam_grid)
        lo, hi = max(centre - half, 0.0), min(centre + half, 1.0)
        points = torch.linspace(lo, hi, 40_001, dtype=torch.float64)[:-1] + (hi - lo) / 80_000
        out.append(((points * sam_grid).floor() + 0.5).mean() / sam_grid)
    return torch.stack(out).float()


def test_sam_receives_the_image_resized_and_normalised_on_every_path():
    model = tiny_model()
    captured = []
    model.sam.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    batch = eval_batch(num_images=2, hw=(72, 96))
    scores(model, batch)  # whole image
    model.sliding_window, model.sam_per_window = True, False
    scores(model, batch)  # sliding windows, SAM once per image
    model.train()
    train = train_batch(num_images=2, size=64)
    model(train)
    expected = torch.stack([_sam_input(x["image"]) for x in batch])
    torch.testing.assert_close(captured[0], expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(captured[1], expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(captured[2], torch.stack([_sam_input(x["image"]) for x in train]), rtol=0, atol=1e-4)


def test_sam_per_window_sees_each_window_at_its_input_size():
    model = tiny_model("TEST.SLIDING_WINDOW", "True")  # TEST.SAM_PER_WINDOW is True by default
    captured = []
    model.sam.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    image = eval_batch(hw=(72, 96))[0]["image"]
    scores(model, [{"image": image}])
    windows = model.windows
    grid = F.interpolate(image[None].float(), size=(windows.grid, windows.grid), mode="bilinear", align_corners=False)[0]
    s = windows.window
    expected = [_sam_input(grid[:, y : y + s, x : x + s]) for y, x in windows.offsets] + [_sam_input(image)]
    assert len(windows.offsets) == 4
    torch.testing.assert_close(captured[0], torch.stack(expected), rtol=0, atol=1e-4)


@pytest.mark.parametrize("sliding", [False, True])
def test_each_view_takes_the_sam_features_of_its_own_area(sliding):
    """SAM once per image (TEST.SAM_PER_WINDOW False in the sliding case): each view's CLIP cells
    receive the area means of SAM's cells under them."""
    model = tiny_model("TEST.SLIDING_WINDOW", str(sliding), "TEST.SAM_PER_WINDOW", "False")
    model.sam = PositionSam()
    batch = eval_batch(num_images=2, hw=(72, 96))
    maps = _sam_maps_seen_by_fusion(model, batch)
    n, sam_grid = model.clip.grid_size, model.sam.grid
    areas = [(0.0, 0.0, 1.0, 1.0)]
    if sliding:
        # tiny.yaml: windows of 64 on a 96 grid at offsets 0 and 32, row by row (x0, y0, x1, y1), then the whole
        assert model.windows.offsets == [(0, 0), (0, 32), (32, 0), (32, 32)]
        third = 1 / 3
        areas = [(x, y, x + 2 * third, y + 2 * third) for y in (0.0, third) for x in (0.0, third)] + areas
    assert maps.shape == (2 * len(areas), 32, n, n)
    for i, item in enumerate(batch):
        image_mean = _sam_input(item["image"]).mean()
        for k, (x0, y0, x1, y1) in enumerate(areas):
            view = maps[i * len(areas) + k]
            xs, ys = _expected_positions((x0, x1), n, sam_grid), _expected_positions((y0, y1), n, sam_grid)
            torch.testing.assert_close(view[0], xs.view(1, n).expand(n, n), rtol=0, atol=1e-4)
            torch.testing.assert_close(view[1], ys.view(n, 1).expand(n, n), rtol=0, atol=1e-4)
            torch.testing.assert_close(view[2], image_mean.expand(n, n), rtol=0, atol=1e-5)


@pytest.mark.parametrize("per_window", [True, False])
def test_whole_image_and_sliding_paths_agree_on_the_whole_view(per_window):
    model = tiny_model()
    model.sam = PositionSam()
    batch = eval_batch(num_images=2, hw=(72, 96))
    whole = _sam_maps_seen_by_fusion(model, batch)
    model.sliding_window, model.sam_per_window = True, per_window
    sliding = _sam_maps_seen_by_fusion(model, batch)
    per_image = model.windows.num_views
    # the last view of each image in the sliding path is the whole image, as in the whole-image path
    torch.testing.assert_close(sliding[per_image - 1 :: per_image], whole, rtol=0, atol=0)
    if per_window:
        # every window is a SAM input of its own, seen whole
        torch.testing.assert_close(sliding[0, :2], whole[0, :2], rtol=0, atol=0)
        return
    # windows side by side cover the image: the left windows start at its left edge, the right ones end at its right
    left, right = sliding[0, 0], sliding[1, 0]
    assert left[:, 0].max() < right[:, 0].min() and right[:, -1].max() == whole[0, 0, :, -1].max()


def _with_sam_projection(*opts):
    model = tiny_model(*opts)
    torch.manual_seed(1)
    nn.init.normal_(model.fusion.sam_proj.weight, std=0.5)
    nn.init.normal_(model.fusion.sam_proj.bias, std=0.5)
    return model


@pytest.mark.parametrize("opts", [(), ("TEST.SLIDING_WINDOW", "True"), ("TEST.SLIDING_WINDOW", "True", "TEST.SAM_PER_WINDOW", "False")])
def test_a_non_zero_sam_projection_reaches_the_outputs_image_by_image(opts):
    model = _with_sam_projection(*opts)
    batch = eval_batch(num_images=3)
    together = scores(model, batch)
    for item, expected in zip(batch, together):
        torch.testing.assert_close(scores(model, [item])[0], expected, rtol=1e-5, atol=1e-6)
    without_sam = tiny_model(*opts)
    assert not torch.allclose(scores(without_sam, batch)[0], together[0], atol=1e-3)
    assert together[0].shape == (len(VOCAB), 90, 120)


def test_sam_per_window_changes_only_the_sliding_path():
    fast = _with_sam_projection("TEST.SLIDING_WINDOW", "True", "TEST.SAM_PER_WINDOW", "False")
    per_window = _with_sam_projection("TEST.SLIDING_WINDOW", "True")
    batch = eval_batch()
    assert not torch.allclose(scores(fast, batch)[0], scores(per_window, batch)[0], atol=1e-4)
    fast.sliding_window = per_window.sliding_window = False
    torch.testing.assert_close(scores(fast, batch)[0], scores(per_window, batch)[0], rtol=0, atol=0)


def test_sam_position_embedding_and_tables_are_resized_for_another_input_size():
    # At 128 px the tiny SAM (built at 64) must compute what segment_anything's own encoder built at
    # 128 computes with the bicubically resized position embedding and the linearly resized
    # relative position tables of its global block.
    torch.manual_seed(0)
    ours = tiny_sam_with_values(128)
    ref = segment_anything_tiny_encoder(128)
    state = dict(ours.encoder.state_dict())
    pos = state["pos_embed"].permute(0, 3, 1, 2)  # (1, C, 4, 4)
    state["pos_embed"] = F.interpolate(pos, size=(8, 8), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    for axis in ("h", "w"):
        table = state[f"blocks.1.attn.rel_pos_{axis}"]  # (2 * 4 - 1, head width)
        table = F.interpolate(table.T[None], size=2 * 8 - 1, mode="linear")[0].T
        state[f"blocks.1.attn.rel_pos_{axis}"] = table
    ref.load_state_dict(state)
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), ref(images), rtol=1e-5, atol=1e-5)


def _position_image(h: int, w: int) -> torch.Tensor:
    """A 0-255 image whose red channel holds each pixel's column and green its row."""
    image = torch.zeros(3, h, w)
    image[0] = torch.arange(w, dtype=torch.float32).view(1, w)
    image[1] = torch.arange(h, dtype=torch.float32).view(h, 1)
    return image


def _pixels_per_image_pixel(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(N, 2): an encoder's input pixels per image pixel along x and y, read from normalised views of
    a position image (the median step of the column and row codes, away from held borders)."""
    raw = x * std + mean
    dx = (raw[:, 0, :, 1:] - raw[:, 0, :, :-1]).flatten(1).median(dim=1).values
    dy = (raw[:, 1, 1:, :] - raw[:, 1, :-1, :]).flatten(1).median(dim=1).values
    return torch.stack([1 / dx, 1 / dy], dim=1)


class ScaleSam(PositionSam):
    """Stands in for SAM: channels 0 and 1 of its map hold the SAM pixels per image pixel at which
    it sees its input (along x and y), read from a position image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(x.shape[0], 32, self.grid, self.grid)
        out[:, :2] = _pixels_per_image_pixel(x, SAM_MEAN, SAM_STD)[:, :, None, None]
        return out


def _scales_seen(model, batch):
    """(views, 2) SAM pixels per CLIP pixel that each view's CLIP cells receive, along x and y."""
    sam_maps, clip_inputs = [], []
    hook = model.fusion.register_forward_hook(lambda m, args, out: sam_maps.append(args[1]))
    encode = model.clip.encode_image
    model.clip.encode_image = lambda x: (clip_inputs.append(x), encode(x))[1]
    try:
        if model.training:
            model(batch)
        else:
            scores(model, batch)
    finally:
        hook.remove()
        model.clip.encode_image = encode
    sam = sam_maps[0][:, :2]  # (views, 2, g, g): constant over each view
    torch.testing.assert_close(sam, sam[:, :, :1, :1].expand_as(sam))
    clip = _pixels_per_image_pixel(clip_inputs[0], model.clip_pixel_mean, model.clip_pixel_std)
    return sam[:, :, 0, 0] / clip


@pytest.mark.parametrize("path", ["train", "whole", "sliding"])
def test_every_view_gets_sams_training_scale_relative_to_clips(path):
    """SAM pixels per CLIP pixel, measured through a stand-in SAM and CLIP's inputs, are SAM's input
    size over CLIP's (128 / 64 in configs/tiny.yaml) on every path, along both axes of a non-square
    image; TEST.SAM_PER_WINDOW False, the cheaper opt-in, gives the windows a coarser scale."""
    model = tiny_model("TEST.SLIDING_WINDOW", str(path == "sliding"), eval=path != "train")
    model.sam = ScaleSam()
    if path == "train":
        batch = [{"image": _position_image(64, 64), "sem_seg": torch.zeros(64, 64, dtype=torch.long)}] * 2
    else:
        batch = [{"image": _position_image(72, 96), "height": 72, "width": 96}]
    ratios = _scales_seen(model, batch)
    assert len(ratios) == (model.windows.num_views if path == "sliding" else len(batch))
    torch.testing.assert_close(ratios, torch.full_like(ratios, SAM_INPUT / 64), rtol=0.02, atol=0)
    if path == "sliding":
        model.sam_per_window = False
        shared = _scales_seen(model, batch)
        # the windows (64 of a 96 grid) get 128 / 96 SAM pixels per window pixel, the whole view 2
        torch.testing.assert_close(shared[:-1], torch.full_like(shared[:-1], SAM_INPUT / 96), rtol=0.02, atol=0)
        torch.testing.assert_close(shared[-1], ratios[-1])


class NoiseSam(PositionSam):
    """Stands in for SAM: the same white-noise map (a parameter, 32 x 24 x 24, three SAM cells per
    CLIP cell along each axis) for every input."""

    def __init__(self):
        super().__init__()
        self.grid = 24
        self.noise = nn.Parameter(torch.randn(32, self.grid, self.grid, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.noise.expand(x.shape[0], -1, -1, -1)


@pytest.mark.parametrize("path", ["train", "whole", "sliding", "sliding, SAM once per image"])
def test_every_sam_cell_of_a_views_area_reaches_its_clip_cells(path):
    """Through the model's own paths, the SAM features each view receives depend on every SAM cell
    of the view's area (all of SAM's map, where SAM sees the view whole), and on no other."""
    sliding = path.startswith("sliding")
    model = tiny_model("TEST.SLIDING_WINDOW", str(sliding), "TEST.SAM_PER_WINDOW", str(path == "sliding"), eval=path != "train")
    model.sam = NoiseSam()
    seen = []
    hook = model.fusion.register_forward_hook(lambda m, args, out: seen.append(args[1]))
    if path == "train":
        model(train_batch(num_images=2))
    else:
        model(eval_batch(hw=(72, 96)))
    hook.remove()
    maps = seen[0]  # (views, 32, g, g)
    g = model.sam.grid
    for v in range(maps.shape[0]):
        (grad,) = torch.autograd.grad(maps[v].sum(), model.sam.noise, retain_graph=True)
        reached = grad.abs().sum(dim=0) > 0  # (g, g) SAM cells that reach view v
        expected = torch.ones(g, g, dtype=torch.bool)
        if path == "sliding, SAM once per image" and v < len(model.windows.offsets):
            # a 64 window of the 96 grid covers 2/3 of SAM's map: cells 0-15 or 8-23 along each axis
            y, x = (offset * g // model.windows.grid for offset in model.windows.offsets[v])
            expected = torch.zeros(g, g, dtype=torch.bool)
            expected[y : y + 16, x : x + 16] = True
        assert torch.equal(reached, expected), f"view {v}"
