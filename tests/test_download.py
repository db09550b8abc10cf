"""lmseg.download against a local HTTP server: success, interruption then resumption or restart, a
body of the wrong size refused, errors that say what to do."""
import http.server
import threading

import pytest

from lmseg import download
from lmseg.download import DownloadError, cached_path, fetch

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /weights.pth. ``server.cut`` bytes: the next answer stops after that many
    (then resets to None); ``server.ranges``: whether Range requests are honoured."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server
        server.requests.append(self.headers.get("Range"))
        if self.path != "/weights.pth":
            self.send_error(404, "Not Found")
            return
        start = 0
        header = self.headers.get("Range")
        if header and server.ranges:
            start = int(header.split("=")[1].split("-")[0])
            if start >= len(PAYLOAD):
                self.send_error(416, "Range Not Satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut is not None:
            body, server.cut = body[: server.cut], None
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSEG_CACHE", str(tmp_path / "cache"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.cut, httpd.ranges, httpd.requests = None, True, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/weights.pth"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_downloads_once_into_the_cache(server, tmp_path, capsys):
    path = fetch(server.url)
    assert path == tmp_path / "cache" / "weights.pth" == cached_path(server.url)
    assert path.read_bytes() == PAYLOAD
    assert "weights.pth" in capsys.readouterr().err  # the progress bar
    assert fetch(server.url) == path and len(server.requests) == 1  # cached: no second request


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "restarted"])
def test_an_interrupted_download_is_kept_aside_then_resumed_or_restarted(server, ranges):
    server.cut, server.ranges = 4000, ranges
    with pytest.raises(DownloadError, match="received 4,000 bytes, the server announced 10,240.*resume the download"):
        fetch(server.url, progress=False)
    target = cached_path(server.url)
    assert not target.exists() and target.with_name("weights.pth.part").stat().st_size == 4000
    assert fetch(server.url, progress=False).read_bytes() == PAYLOAD
    assert server.requests == [None, "bytes=4000-"]  # asked for the rest; served whole without ranges
    assert not target.with_name("weights.pth.part").exists()


def test_a_partial_file_longer_than_the_file_is_dropped_and_downloaded_afresh(server):
    part = cached_path(server.url).with_name("weights.pth.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * (len(PAYLOAD) + 5))  # longer than the file: the server answers 416
    assert fetch(server.url, progress=False).read_bytes() == PAYLOAD
    assert server.requests == [f"bytes={len(PAYLOAD) + 5}-", None]


def test_errors_say_what_failed(server, monkeypatch):
    with pytest.raises(DownloadError, match="answered 404"):
        fetch(server.url.replace("weights.pth", "other.pth"), progress=False)
    closed = server.url.replace(str(server.server_address[1]), "1")
    with pytest.raises(DownloadError, match="cannot reach 127.0.0.1:1 to download weights.pth"):
        fetch(closed, progress=False)
    assert "put it at" in download.place_hint(server.url) and str(cached_path(server.url)) in download.place_hint(server.url)
