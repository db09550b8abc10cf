"""A checkpoint holding the whole model is enough: building and loading it fetches nothing.

The pretrained CLIP (an open_clip tag) and SAM (a URL) are served by a local HTTP server that
counts its requests, and every other network connection is refused during the tests.
"""
from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import open_clip
import pytest
import torch
from detectron2.modeling import build_model

from lmseg.checkpoint.catseg import convert_lmseg_to_catseg
from lmseg.checkpoint import load_weights, pretrained_parts_in

from tests.helpers.model_helpers import REPO, VOCAB, eval_batch, scores, tiny_cfg

# The tiny CLIP's architecture under a name of the test's own, with a pretrained tag open_clip
# downloads from the test's server (LMSeg's own tiny CLIP takes weights from files only).
ARCH = "OfflineTest-Tiny"


@pytest.fixture
def weights_server(tmp_path, monkeypatch):
    """A local server of a tiny CLIP (an open_clip architecture with the pretrained tag
    "lmseg_test") and a tiny SAM checkpoint."""
    config = tmp_path / f"{ARCH}.json"
    config.write_text((REPO / "lmseg" / "modeling" / "clip_configs" / "LMSeg-Tiny.json").read_text())
    open_clip.add_model_config(config)
    torch.manual_seed(3)
    source = build_model(tiny_cfg())
    files = {"/clip.pt": tmp_path / "clip.pt", "/sam.pth": tmp_path / "sam.pth"}
    # open_clip's own layout of the tiny CLIP (the encoder splits its attention weights once loaded)
    torch.save(open_clip.create_model(ARCH).state_dict(), files["/clip.pt"])
    torch.save(source.sam.encoder.state_dict(), files["/sam.pth"])
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            requests.append(self.path)
            body = files[self.path].read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"

    # open_clip and torch.hub download into caches under the home directory: use a fresh one
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    tags = {"lmseg_test": {"url": f"{url}/clip.pt"}}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, ARCH, tags)

    # the network is blocked: only the local server can be reached
    connect = socket.socket.connect

    def guarded(sock, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "localhost"):
            raise OSError(f"network blocked in this test: connection to {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield requests, ["MODEL.CLIP.NAME", ARCH, "MODEL.CLIP.PRETRAINED", "lmseg_test", "MODEL.SAM.CHECKPOINT", f"{url}/sam.pth"]
    server.shutdown()


def test_pretrained_weights_are_fetched_when_training_starts_from_them(weights_server):
    requests, pretrained = weights_server
    model = build_model(tiny_cfg(*pretrained))
    assert sorted(requests) == ["/clip.pt", "/sam.pth"]
    assert model.sam.weights_source.endswith("/sam.pth")


def test_full_lmseg_checkpoint_downloads_nothing(weights_server, tmp_path):
    requests, pretrained = weights_server
    torch.manual_seed(5)
    trained = build_model(tiny_cfg("MODEL.CLIP.NAME", ARCH)).eval()
    trained.set_vocabulary(VOCAB)
    path = tmp_path / "model_final.pth"
    torch.save({"model": trained.state_dict()}, path)
    assert pretrained_parts_in(str(path)) == {"clip", "sam"}

    cfg = tiny_cfg(*pretrained, "MODEL.WEIGHTS", str(path))
    model = build_model(cfg).eval()
    load_weights(model, cfg.MODEL.WEIGHTS)
    assert requests == []
    model.set_vocabulary(VOCAB)
    batch = eval_batch()
    torch.testing.assert_close(scores(model, batch)[0], scores(trained, batch)[0], atol=0, rtol=0)


def test_catseg_checkpoint_fetches_only_what_it_lacks(weights_server, tmp_path):
    requests, pretrained = weights_server
    torch.manual_seed(6)
    catseg_mode = ["MODEL.SAM.ENABLED", "False", "MODEL.FUSION.MODE", "clip_only"]
    state = build_model(tiny_cfg("MODEL.CLIP.NAME", ARCH, *catseg_mode)).state_dict()
    path = tmp_path / "catseg.pth"
    torch.save({"model": convert_lmseg_to_catseg(state, grid=8, window=4)}, path)
    assert pretrained_parts_in(str(path)) == {"clip"}

    # CAT-Seg's own setting: the checkpoint is the whole model
    cfg = tiny_cfg(*pretrained, *catseg_mode, "MODEL.WEIGHTS", str(path))
    load_weights(build_model(cfg), cfg.MODEL.WEIGHTS)
    assert requests == []
    # LMSeg started from CAT-Seg: SAM still comes from its pretrained checkpoint
    cfg = tiny_cfg(*pretrained, "MODEL.WEIGHTS", str(path))
    load_weights(build_model(cfg), cfg.MODEL.WEIGHTS)
    assert requests == ["/sam.pth"]


def test_unreadable_or_remote_weights_change_nothing(tmp_path):
    assert pretrained_parts_in("") == frozenset()
    assert pretrained_parts_in("https://example.com/model.pth") == frozenset()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    assert pretrained_parts_in(str(junk)) == frozenset()
    assert (REPO / "configs" / "tiny.yaml").is_file()
