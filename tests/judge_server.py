"""A real HTTP server on 127.0.0.1 (random port, own thread) speaking the OpenAI chat-completions API,
scriptable per request: well-formed, malformed, empty, slow and erroring (500, 429) replies.

    with ChatServer(responder) as server:      # responder(request) -> Response, for unscripted requests
        server.script(error(500), reply("..."))  # the next requests get these, in order
        ... server.base_url ... server.requests  # every request received (body, headers), in order
"""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image


@dataclass
class Response:
    status: int = 200
    content: str | None = ""  # the assistant message (status 200)
    raw: bytes | None = None  # a raw body instead (malformed answers, error bodies)
    delay: float = 0.0  # seconds to wait before answering
    headers: dict[str, str] = field(default_factory=dict)
    model: str = "judge-test-2025-01-01"


def reply(text: str | None, delay: float = 0.0) -> Response:
    return Response(content=text, delay=delay)


def error(status: int, retry_after: float | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return Response(status=status, raw=json.dumps({"error": {"code": status, "message": "test error"}}).encode(), headers=headers)


def malformed() -> Response:
    return Response(raw=b"<html>bad gateway page</html>")


def slow(seconds: float, text: str = "{}") -> Response:
    return Response(content=text, delay=seconds)


@dataclass
class Recorded:
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def text(self) -> str:
        return "".join(p["text"] for p in self.body["messages"][0]["content"] if p["type"] == "text")

    @property
    def image_urls(self) -> list[str]:
        return [p["image_url"]["url"] for p in self.body["messages"][0]["content"] if p["type"] == "image_url"]

    @property
    def images(self) -> list[Image.Image]:
        return [decode_data_url(u) for u in self.image_urls]


def decode_data_url(url: str) -> Image.Image:
    _, b64 = url.split(",", 1)
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        return im.convert("RGB")


class ChatServer:
    def __init__(self, responder: Callable[[Recorded], Response] | None = None):
        self.responder = responder or (lambda req: reply('{"score": [5, 5], "reasoning": "ok"}'))
        self.requests: list[Recorded] = []
        self._script: deque[Response] = deque()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n))
                rec = Recorded(body, {k.lower(): v for k, v in self.headers.items()})
                with server._lock:
                    server.requests.append(rec)
                    scripted = server._script.popleft() if server._script else None
                resp = scripted or server.responder(rec)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    resp = Response(status=404, raw=b'{"error": "no such route"}')
                time.sleep(resp.delay)
                if resp.raw is not None:
                    data = resp.raw
                else:
                    data = json.dumps({"id": "x", "object": "chat.completion", "model": resp.model, "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": resp.content}, "finish_reason": "stop"}]}).encode()
                try:
                    self.send_response(resp.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in resp.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): fine

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def script(self, *responses: Response) -> None:
        with self._lock:
            self._script.extend(responses)

    def __enter__(self) -> "ChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
