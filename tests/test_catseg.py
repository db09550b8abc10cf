"""CAT-Seg's checkpoints in LMSeg: the conversion both ways, loading through MODEL.WEIGHTS, LMSeg's
CAT-Seg mode against the independent reference forward pass (tests/helpers/catseg_reference.py), and LMSeg
started from a CAT-Seg checkpoint.

The models are CAT-Seg's format at reduced CLIP sizes (the head and the 24 x 24 grid as published),
built from configs/catseg_vitb.yaml and configs/catseg_vitl.yaml with a small open_clip
architecture registered here.
"""
import copy
import json
import logging
import subprocess
import sys

import open_clip
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from tests.helpers import catseg_reference as ref
from lmseg.config import get_lmseg_cfg
from lmseg.checkpoint.catseg import CatSegFormatError, convert_catseg_to_lmseg, convert_lmseg_to_catseg
from lmseg.checkpoint import LMSegCheckpointer, load_weights
from lmseg.modeling.sam_encoder import SamEncoder

from tests.helpers import load_tool
from tests.helpers.model_helpers import REPO

NAMES = ["wall", "cat, kitty", "sky", "chest of drawers"]
MANY = ["wall", "sky", "tree", "road", "person", "car"]
# Reduced CLIP sizes of each geometry: ViT-B/16 (patch 16, 14 x 14 stored grid resized to 24 x 24 at
# 384) and ViT-L/14@336 (patch 14, 24 x 24 stored grid, windows resized from 384 to 336).
GEOMETRIES = {
    "B": dict(
        config="catseg_vitb.yaml", resolution=384, guidance=(1, 2),
        sizes=dict(visual_width=64, visual_layers=4, text_width=64, text_layers=2, embed_dim=64),
        arch=dict(image_size=224, layers=4, width=64, patch_size=16, head_width=64),
    ),
    "L": dict(
        config="catseg_vitl.yaml", resolution=336, guidance=(0, 1),
        sizes=dict(
            visual_width=64, visual_layers=3, patch_size=14, pos_grid=24, text_width=64, text_layers=1, embed_dim=64
        ),
        arch=dict(image_size=336, layers=3, width=64, patch_size=14, head_width=64),
    ),
}
TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Per geometry: the open_clip architecture's name, a random CAT-Seg state dict, and its file."""
    root = tmp_path_factory.mktemp("catseg")
    out = {}
    for key, geo in GEOMETRIES.items():
        name = f"CATSeg-Test-{key}"
        text = dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=geo["sizes"]["text_layers"])
        (root / f"{name}.json").write_text(
            json.dumps(dict(embed_dim=64, quick_gelu=True, vision_cfg=geo["arch"], text_cfg=text))
        )
        open_clip.add_model_config(root / f"{name}.json")
        state = ref.random_catseg_state_dict(**geo["sizes"], seed=1)
        path = root / f"catseg_{key}.pth"
        torch.save({"model": state}, path)
        out[key] = dict(arch=name, state=state, path=str(path))
    return out


def _cfg(geometry: str, arch: str, *opts):
    geo = GEOMETRIES[geometry]
    cfg = get_lmseg_cfg(REPO / "configs" / geo["config"])
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    guidance = str(list(geo["guidance"]))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.CLIP.NAME", arch, "MODEL.CLIP.GUIDANCE_LAYERS", guidance, *opts])
    return cfg


@pytest.fixture(scope="module")
def catseg_model(checkpoints):
    """LMSeg in CAT-Seg mode from the geometry's config, loaded from the CAT-Seg file through
    MODEL.WEIGHTS; models are kept per (geometry, options)."""
    cache = {}

    def get(geometry: str = "B", *opts):
        key = (geometry, opts)
        if key not in cache:
            ck = checkpoints[geometry]
            cfg = _cfg(geometry, ck["arch"], "MODEL.WEIGHTS", ck["path"], *opts)
            model = build_model(cfg)
            load_weights(model, cfg.MODEL.WEIGHTS)
            cache[key] = model.eval()
        return cache[key]

    return get


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth uint8 RGB image (3 x h x w)."""
    g = torch.Generator().manual_seed(seed)
    img = F.interpolate(torch.rand(1, 3, 6, 8, generator=g), size=(h, w), mode="bilinear", align_corners=False)[0]
    return (img * 255).round().clamp(0, 255).to(torch.uint8)


def _compare(model, state, geometry, names, image, out_hw, sliding, cap):
    model.sliding_window = sliding
    model.set_vocabulary(names)
    with torch.no_grad():
        ours = model([{"image": image, "height": out_hw[0], "width": out_hw[1]}])[0]["sem_seg"]
    geo = GEOMETRIES[geometry]
    expected = ref.catseg_reference_forward(
        state, image, names, height=out_hw[0], width=out_hw[1], sliding=sliding, clip_resolution=geo["resolution"],
        guidance_layers=geo["guidance"], class_attention_pad=cap, compact_padding=True,
    )
    assert ours.shape == expected.shape == (len(names), *out_hw)
    assert expected.std() > 0.02  # a meaningful comparison: not saturated, not constant
    torch.testing.assert_close(ours, expected, atol=TOL, rtol=0)
    return ours


# ------------------------------------------------------------------------------------------
# LMSeg's CAT-Seg mode against the reference
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cap,names,hw,out_hw",
    [
        (256, NAMES, (200, 300), (250, 375)),  # CAT-Seg's class padding; padded to 224 x 320
        (8, NAMES[:3], (80, 120), (80, 120)),  # smaller than the 96 x 96 map: the map is cut to 80 x 96
        (3, MANY, (330, 250), (330, 250)),  # more classes than the cap
    ],
)
def test_whole_image_matches_reference(catseg_model, checkpoints, cap, names, hw, out_hw):
    model = catseg_model("B", "MODEL.LMSEG.CLASS_CAP", str(cap))
    out = _compare(model, checkpoints["B"]["state"], "B", names, _image(*hw), out_hw, sliding=False, cap=cap)
    # the classes left out by the cap score sigmoid(-100) everywhere, the others clearly more
    assert (out.amax(dim=(1, 2)) < 1e-30).sum() == max(len(names) - cap, 0)


@pytest.mark.parametrize("cap,names", [(8, NAMES), (3, MANY)])
def test_sliding_window_matches_reference(catseg_model, checkpoints, cap, names):
    model = catseg_model("B", "MODEL.LMSEG.CLASS_CAP", str(cap))
    _compare(model, checkpoints["B"]["state"], "B", names, _image(640, 856, seed=2), (427, 571), sliding=True, cap=cap)


@pytest.mark.parametrize("sliding", [False, True])
def test_vitl_geometry_matches_reference(catseg_model, checkpoints, sliding):
    model = catseg_model("L", "MODEL.LMSEG.CLASS_CAP", "8")
    _compare(model, checkpoints["L"]["state"], "L", NAMES[:2], _image(500, 700, seed=3), (500, 700), sliding, cap=8)


def test_catseg_config_is_catseg_setting():
    cfg = get_lmseg_cfg(REPO / "configs" / "catseg_vitl.yaml")
    assert not cfg.MODEL.SAM.ENABLED and cfg.MODEL.FUSION.MODE == "clip_only"
    assert list(cfg.MODEL.PROMPTS.TEMPLATES) == ["A photo of a {} in the scene"] and not cfg.MODEL.PROMPTS.DESCRIPTIONS
    assert cfg.MODEL.CLIP.PRETRAINED == "" and cfg.MODEL.CLIP.QUICK_GELU
    clip = cfg.MODEL.CLIP
    assert (clip.NAME, clip.IMAGE_SIZE, list(clip.GUIDANCE_LAYERS)) == ("ViT-L-14-336", 336, [7, 15])
    assert cfg.TEST.SLIDING_WINDOW and cfg.TEST.KEEP_PADDING and cfg.MODEL.LMSEG.SIZE_DIVISIBILITY == 32
    assert list(cfg.MODEL.AGGREGATOR.TEST_POOLING) == [1, 1] and cfg.MODEL.LMSEG.CLASS_CAP == 256
    assert len(cfg.DATASETS.TEST) == 6 and cfg.DATASETS.TRAIN == ("coco_2017_train_stuff_all_sem_seg",)


# ------------------------------------------------------------------------------------------
# The conversion
# ------------------------------------------------------------------------------------------
def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def test_conversion_round_trip_is_bitwise(catseg_model, checkpoints):
    state = checkpoints["B"]["state"]
    ours = convert_catseg_to_lmseg(state, grid=24, window=12)
    model = catseg_model("B")
    assert list(ours) and set(ours) == set(model.state_dict())
    assert all(tuple(v.shape) == tuple(model.state_dict()[k].shape) for k, v in ours.items())
    # the ViT-B position embedding keeps its stored 14 x 14 grid
    assert ours["clip.model.visual.positional_embedding"].shape == (197, 64)
    back = convert_lmseg_to_catseg(ours)
    assert list(back) == list(state)  # every name, in CAT-Seg's order
    for name, value in state.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape, name
        assert torch.equal(_bits(back[name]), _bits(value)), name
    # and from the loaded model's own state dict
    from_model = convert_lmseg_to_catseg(model.state_dict())
    assert all(torch.equal(_bits(from_model[k]), _bits(v)) for k, v in state.items())


def test_full_size_vitb_names_and_shapes():
    """CAT-Seg's full ViT-B format (shapes only) maps onto configs/catseg_vitb.yaml's model exactly."""
    shapes = ref.catseg_tensor_shapes()
    state = {
        k: ref.swin_shift_attn_mask(24, 12, 6) if k.endswith("attn_mask") else torch.empty(s, device="meta")
        for k, s in shapes.items()
    }
    cfg = get_lmseg_cfg(REPO / "configs" / "catseg_vitb.yaml")
    cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = ()
    cfg.MODEL.DEVICE = "cpu"
    target = build_model(cfg).state_dict()
    ours = convert_catseg_to_lmseg(state, grid=24, window=12)
    assert set(ours) == set(target) and len(ours) == 484 - 2
    assert [k for k, v in ours.items() if v.shape != target[k].shape] == []
    assert list(convert_lmseg_to_catseg(ours)) == list(shapes)


def test_missing_unknown_and_wrong_tensors_are_named(checkpoints):
    state = checkpoints["B"]["state"]
    broken = dict(state)
    gone = ref.AGG_PREFIX + "layers.1.attention.norm2.bias"
    del broken[gone]
    broken[ref.AGG_PREFIX + "layers.1.attention.extra.weight"] = torch.zeros(3)
    with pytest.raises(CatSegFormatError) as err:
        convert_catseg_to_lmseg(broken)
    assert gone in str(err.value) and "layers.1.attention.extra.weight" in str(err.value)
    # a whole CLIP block missing in the middle
    hole = {k: v for k, v in state.items() if ".visual.transformer.resblocks.1." not in k}
    with pytest.raises(CatSegFormatError, match=r"resblocks\.1\.attn\.q_proj_weight"):
        convert_catseg_to_lmseg(hole)
    # a mask LMSeg would not compute, or one for another grid than the model's
    mask = ref.AGG_PREFIX + "layers.0.swin_block.block_2.attn_mask"
    wrong = dict(state, **{mask: torch.zeros_like(state[mask])})
    with pytest.raises(CatSegFormatError, match=mask):
        convert_catseg_to_lmseg(wrong)
    with pytest.raises(CatSegFormatError, match="36x36 grid"):
        convert_catseg_to_lmseg(state, grid=36, window=12)
    # the reverse: SAM and fusion tensors, or several prompts per class, have no CAT-Seg name
    ours = convert_catseg_to_lmseg(state)
    with pytest.raises(CatSegFormatError, match="fusion.weight_logit"):
        convert_lmseg_to_catseg(dict(ours, **{"fusion.weight_logit": torch.zeros(1)}))
    with pytest.raises(CatSegFormatError, match="3 prompts"):
        convert_lmseg_to_catseg(dict(ours, **{"cost_embed.conv.weight": torch.zeros(128, 3, 7, 7)}))
    with pytest.raises(CatSegFormatError, match="not a CAT-Seg"):
        convert_catseg_to_lmseg(ours)


def test_loading_is_strict(checkpoints, tmp_path):
    """Through MODEL.WEIGHTS a CAT-Seg checkpoint loads completely or not at all."""
    ck = checkpoints["B"]
    state = dict(ck["state"])
    gone = ref.AGG_PREFIX + "decoder2.conv.double_conv.4.bias"
    del state[gone]
    path = tmp_path / "partial.pth"
    torch.save({"model": state}, path)
    model = build_model(_cfg("B", ck["arch"]))
    with pytest.raises(CatSegFormatError, match=gone):
        load_weights(model, str(path))
    # a model of another shape: the tensor is named with both shapes
    other = build_model(_cfg("B", ck["arch"], "MODEL.COST.KERNEL_SIZE", "5"))
    named = r"cost_embed\.conv\.weight \(checkpoint \[128, 1, 7, 7\], model \[128, 1, 5, 5\]\)"
    with pytest.raises(CatSegFormatError, match=named):
        load_weights(other, ck["path"])
    # a model of another depth
    deeper = build_model(_cfg("B", ck["arch"], "MODEL.AGGREGATOR.NUM_LAYERS", "3"))
    with pytest.raises(CatSegFormatError, match=r"aggregator\.layers\.2\.classwise\.q\.weight"):
        load_weights(deeper, ck["path"])


def _tool():
    """tools/convert_catseg.py as a module."""
    return load_tool("convert_catseg")


@pytest.mark.slow
def test_convert_tool_end_to_end(checkpoints, tmp_path):
    ck = checkpoints["B"]
    tool = str(REPO / "tools" / "convert_catseg.py")
    ours, back = tmp_path / "lmseg.pth", tmp_path / "catseg.pth"
    done = subprocess.run([sys.executable, tool, ck["path"], str(ours)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    converted = torch.load(ours, weights_only=True)["model"]
    assert set(converted) == set(convert_catseg_to_lmseg(ck["state"]))

    _tool().main(["--to-catseg", str(ours), str(back)])
    restored = torch.load(back, weights_only=True)["model"]
    assert list(restored) == list(ck["state"])
    assert all(torch.equal(_bits(restored[k]), _bits(v)) for k, v in ck["state"].items())


def test_convert_tool_messages(checkpoints, tmp_path, capsys):
    convert_catseg = _tool()
    ck = checkpoints["B"]
    lmseg_file = tmp_path / "lmseg.pth"
    torch.save({"model": convert_catseg_to_lmseg(ck["state"])}, lmseg_file)
    (tmp_path / "text.pth").write_text("not a checkpoint")
    cases = [
        ([str(tmp_path / "nope.pth"), str(tmp_path / "x.pth")], "no such file"),
        ([str(tmp_path / "text.pth"), str(tmp_path / "x.pth")], "not a readable PyTorch checkpoint"),
        ([str(lmseg_file), str(tmp_path / "x.pth")], "--to-catseg converts those"),
        ([ck["path"], str(lmseg_file)], "exists"),
        (["--to-catseg", ck["path"], str(tmp_path / "x.pth")], "already uses CAT-Seg's names"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_:
            convert_catseg.main(argv)
        assert exit_.value.code != 0
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "x.pth").exists()


# ------------------------------------------------------------------------------------------
# LMSeg started from a CAT-Seg checkpoint
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weight_init,per_channel,num_prompts", [("0.5", "False", 3), ("0.3", "True", 3), ("0.5", "False", 1)])
def test_lmseg_with_sam_and_three_prompts_starts_from_catseg(catseg_model, checkpoints, tmp_path, caplog, weight_init, per_channel, num_prompts):
    ck = checkpoints["B"]
    torch.manual_seed(0)
    sam_file = tmp_path / "sam_tiny.pth"
    torch.save(SamEncoder("tiny", input_size=128).encoder.state_dict(), sam_file)
    template = "A photo of a {} in the scene"
    cfg = _cfg(
        "B", ck["arch"],
        "MODEL.SAM.ENABLED", "True", "MODEL.SAM.TYPE", "tiny", "MODEL.SAM.INPUT_SIZE", "128",
        "MODEL.SAM.CHECKPOINT", str(sam_file), "MODEL.FUSION.MODE", "weighted",
        "MODEL.FUSION.WEIGHT_INIT", weight_init, "MODEL.FUSION.PER_CHANNEL", per_channel,
        "MODEL.PROMPTS.TEMPLATES", str([template] * num_prompts),
    )
    model = build_model(cfg)
    fusion_before = copy.deepcopy(model.fusion.state_dict())
    with caplog.at_level(logging.INFO, logger="lmseg.checkpoint"):
        # the trainer's path: Trainer.resume_or_load -> LMSegCheckpointer.resume_or_load
        LMSegCheckpointer(model, str(tmp_path / "run")).resume_or_load(ck["path"], resume=True)
    model.eval()

    log = caplog.text
    assert "CAT-Seg checkpoint" in log and "CLIP image and text towers" in log and "aggregator" in log
    assert f"SAM image encoder: kept as built, from {sam_file}" in log
    assert "fusion (weighted): kept as built" in log and ("divided by 3" in log) == (num_prompts == 3)
    if num_prompts == 1:
        assert "with one prompt per class, as CAT-Seg, the model starts exactly from CAT-Seg's outputs" in log
    else:
        # the log does not promise CAT-Seg's outputs where distinct prompts would change them
        assert "exactly only if they are one text repeated" in log and "differ from CAT-Seg's" in log
        assert "starts exactly from" not in log
    assert f"divided by the fusion weight w = {float(weight_init):.4g}" in log
    sam_saved = torch.load(sam_file, weights_only=True)
    assert all(torch.equal(model.sam.encoder.state_dict()[k], v) for k, v in sam_saved.items())
    assert all(torch.equal(model.fusion.state_dict()[k], v) for k, v in fusion_before.items())
    assert model.fusion.weight.shape == ((64,) if per_channel == "True" else (1,))

    # Step 0 computes CAT-Seg: the same outputs as the CAT-Seg mode on the same weights, on both
    # inference paths, although SAM runs and the features fed to the aggregator are w * F_clip.
    single = catseg_model("B")
    for m in (model, single):
        m.set_vocabulary(NAMES)
    batch = [{"image": _image(384, 512, seed=4), "height": 300, "width": 400}]
    for sliding in (False, True):
        model.sliding_window = single.sliding_window = sliding
        with torch.no_grad():
            got, expected = model(batch)[0]["sem_seg"], single(batch)[0]["sem_seg"]
        assert expected.std() > 0.02
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    single.sliding_window = True
