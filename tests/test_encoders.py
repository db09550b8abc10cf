"""The CLIP and SAM wrappers against open_clip and segment_anything, and weight loading from files."""
import copy

import open_clip
import pytest
import torch

from lmseg.modeling.clip_encoder import ClipEncoder, SplitQKVAttention, create_open_clip
from lmseg.modeling.sam_encoder import SamEncoder

from tests.helpers.model_helpers import eval_batch, scores, segment_anything_tiny_encoder, tiny_model, tiny_sam_with_values


def _open_clip_tiny(seed=0):
    torch.manual_seed(seed)
    return create_open_clip("LMSeg-Tiny")[0].eval()


def _wrap(model):
    return ClipEncoder(copy.deepcopy(model), create_open_clip("LMSeg-Tiny")[1], image_size=32, guidance_layers=(0, 1)).eval()


def test_split_attention_matches_multihead_attention():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    split = SplitQKVAttention.from_multihead(mha)
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(split(x), mha(x, x, x, need_weights=False)[0])
    mask = torch.full((7, 7), float("-inf")).triu(1)
    torch.testing.assert_close(split(x, is_causal=True), mha(x, x, x, attn_mask=mask, need_weights=False)[0])


def test_clip_text_embeddings_match_open_clip():
    ref = _open_clip_tiny()
    enc = _wrap(ref)
    texts = ["a photo of a cat", "sofa", "a very long description of a bright red double-decker bus"]
    tokens = create_open_clip("LMSeg-Tiny")[1](texts)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(ref.encode_text(tokens), dim=-1)
        torch.testing.assert_close(enc.encode_text(texts), expected, rtol=1e-5, atol=1e-6)


def test_clip_intermediate_tokens_match_open_clip():
    ref = _open_clip_tiny()
    enc = _wrap(ref)
    images = torch.randn(2, 3, 32, 32)  # native resolution: 4 x 4 patches
    captured = []
    hooks = [ref.visual.transformer.resblocks[i].register_forward_hook(lambda m, i, o: captured.append(o)) for i in (0, 1)]
    with torch.no_grad():
        ref.visual(images)
        _, guidance = enc.encode_image(images)
    for h in hooks:
        h.remove()
    for got, tokens in zip(guidance, captured):
        # open_clip's residual stream (N, 1 + 16, width), class token first, row-major patches
        expected = tokens[:, 1:].transpose(1, 2).reshape(2, -1, 4, 4)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_clip_dense_features_are_the_value_path_of_the_last_block():
    ref = _open_clip_tiny()
    enc = _wrap(ref)
    images = torch.randn(1, 3, 32, 32)
    captured = []
    h = ref.visual.transformer.resblocks[1].register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        ref.visual(images)
        dense, _ = enc.encode_image(images)
    h.remove()
    x = captured[0]
    last = ref.visual.transformer.resblocks[2]
    w_v = last.attn.in_proj_weight[-32:]
    b_v = last.attn.in_proj_bias[-32:]
    with torch.no_grad():
        y = last.attn.out_proj(last.ln_1(x) @ w_v.T + b_v) + x[:, :1]
        y = y + last.mlp(last.ln_2(y))
        expected = (ref.visual.ln_post(y) @ ref.visual.proj)[:, 1:].transpose(1, 2).reshape(1, 32, 4, 4)
    torch.testing.assert_close(dense, expected, rtol=1e-5, atol=1e-5)


def test_sam_encoder_matches_segment_anything_at_native_size():
    torch.manual_seed(0)
    ours = tiny_sam_with_values(64)
    ref = segment_anything_tiny_encoder(64)
    ref.load_state_dict(ours.encoder.state_dict())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), ref(images), rtol=1e-5, atol=1e-5)


@pytest.fixture()
def weight_files(tmp_path):
    clip_src = _open_clip_tiny(seed=123)
    clip_file = tmp_path / "tiny_clip.pt"
    torch.save(clip_src.state_dict(), clip_file)
    torch.manual_seed(7)
    sam_src = SamEncoder("tiny")
    with torch.no_grad():
        for p in sam_src.parameters():
            p.normal_(0, 0.1)
    sam_file = tmp_path / "tiny_sam.pth"
    # the layout of SAM's published checkpoints: the whole Sam model, encoder under image_encoder.
    state = {f"image_encoder.{k}": v for k, v in sam_src.encoder.state_dict().items()}
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 32)
    torch.save(state, sam_file)
    return clip_src, clip_file, sam_src, sam_file


def test_weights_load_from_files_and_give_identical_outputs(weight_files):
    clip_src, clip_file, sam_src, sam_file = weight_files
    model = tiny_model("MODEL.CLIP.PRETRAINED", str(clip_file), "MODEL.SAM.CHECKPOINT", str(sam_file))
    # every weight comes from the files (CLIP's attention split into q/k/v)
    converted = _wrap(clip_src).model.state_dict()
    for k, v in model.clip.model.state_dict().items():
        assert torch.equal(v, converted[k]), k
    for k, v in model.sam.encoder.state_dict().items():
        assert torch.equal(v, sam_src.encoder.state_dict()[k]), k
    # a randomly initialised model given the same weights in memory computes the same scores
    other = tiny_model(seed=5)
    batch = eval_batch()
    assert not torch.allclose(scores(other, batch)[0], scores(model, batch)[0])
    other.clip.model.load_state_dict(converted)
    other.sam.encoder.load_state_dict(sam_src.encoder.state_dict())
    for name in ("fusion", "cost_embed", "aggregator", "decoder"):
        getattr(other, name).load_state_dict(getattr(model, name).state_dict())
    assert torch.equal(scores(other, batch)[0], scores(model, batch)[0])


def test_sam_checkpoint_of_another_size_is_reported(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 4, 4, 32), "image_encoder.extra": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"does not fit .*missing: .*patch_embed.proj.weight.*unexpected: extra"):
        tiny_model("MODEL.SAM.CHECKPOINT", str(path))


def test_sam_url_that_cannot_be_downloaded_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    with pytest.raises(RuntimeError, match="could not download MODEL.SAM.CHECKPOINT='https://example.invalid/sam.pth'"):
        tiny_model("MODEL.SAM.CHECKPOINT", "https://example.invalid/sam.pth")


def test_sam_fused_attention_blocks_match_segment_anything_at_any_size():
    from lmseg.modeling.sam_encoder import _block_forward

    torch.manual_seed(0)
    sam = tiny_sam_with_values(64)
    with torch.no_grad():
        for size in (4, 6, 9):  # window 4: exact, padded windows; global: resized position tables
            x = torch.randn(2, size, size, 32)
            for block in sam.encoder.blocks:
                torch.testing.assert_close(_block_forward(block, x), block(x), rtol=1e-5, atol=1e-5)


def test_tiny_clip_is_built_without_registering_it_in_open_clip():
    model = tiny_model()
    assert "LMSeg-Tiny" not in open_clip.list_models()
    tokens = model.clip.tokenize(["a cat"])
    assert tokens.shape == (1, 77) and torch.equal(tokens, open_clip.SimpleTokenizer()(["a cat"]))
