"""A real chat-completions HTTP server on 127.0.0.1 for the generator's tests.

It answers ``POST /v1/chat/completions`` the way an OpenAI-compatible server does; a test scripts
each answer with ``behave(n, class_name, request) -> (status, headers, body or None)``, where n counts
requests from 1 and a body of None drops the connection without an answer.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Optional, Tuple

Answer = Tuple[int, Dict[str, str], Optional[dict]]


def fake_entry(class_name: str) -> Dict[str, str]:
    """Three distinct, valid descriptions for any class (the name never appears in them)."""
    tag = hashlib.sha1(class_name.encode()).hexdigest()[:8]
    return {
        "color": f"painted in the catalogue colour {tag}",
        "shape": f"shaped like the catalogue outline {tag}",
        "texture": f"finished with the catalogue surface {tag}",
    }


def completion(content: str, model: str = "test-model") -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def good_answer(n: int, class_name: str, request: dict) -> Answer:
    return 200, {}, completion(json.dumps(fake_entry(class_name)))


class ChatServer:
    """``with ChatServer(behave) as server:`` serves on ``server.base_url`` until the block ends
    (or :meth:`stop`). ``server.requests`` lists (class name, request JSON, lower-cased headers) per request."""

    def __init__(self, behave: Callable[[int, str, dict], Answer] = good_answer):
        self.behave = behave
        self.requests: List[Tuple[str, dict, Dict[str, str]]] = []
        self.times: List[float] = []  # time.monotonic() of each request
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = json.loads(body)
                prompt = request["messages"][1]["content"]
                match = re.search(r'Describe the class "(.*?)"', prompt)
                name = match.group(1) if match else ""
                with outer._lock:
                    outer.requests.append((name, request, {k.lower(): v for k, v in self.headers.items()}))
                    outer.times.append(time.monotonic())
                    n = len(outer.requests)
                if self.path != "/v1/chat/completions":
                    status, headers, answer = 404, {}, {"error": {"message": f"no route {self.path}"}}
                else:
                    status, headers, answer = outer.behave(n, name, request)
                if answer is None:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._stopped = False

    def asked(self) -> List[str]:
        """Class names in the order they were asked."""
        with self._lock:
            return [name for name, _, _ in self.requests]

    def stop(self) -> None:
        """Stop serving and close the port: later requests find nothing listening."""
        if not self._stopped:
            self._stopped = True
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> "ChatServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
