"""A real HTTP server on 127.0.0.1 (random port, own thread) speaking the OpenAI chat-completions API,
scriptable per request: well-formed, malformed, empty, slow, undecodable, header-echoing and erroring
(500, 429, 401) replies. It can also act as a server with a key and a model list: a request without
the right bearer token gets 401, one for a model it does not serve gets 404 (as OpenAI and vLLM answer).

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
    echo_headers: bool = False  # put the request's headers into the body (content, or the raw error body)


def reply(text: str | None, delay: float = 0.0) -> Response:
    return Response(content=text, delay=delay)


def error(status: int, retry_after: float | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return Response(status=status, raw=json.dumps({"error": {"code": status, "message": "test error"}}).encode(), headers=headers)


def malformed() -> Response:
    return Response(raw=b"<html>bad gateway page</html>")


def empty_body() -> Response:
    """HTTP 200 with nothing in the body."""
    return Response(raw=b"")


def undecodable() -> Response:
    """HTTP 200 whose body is not UTF-8 (so not JSON either)."""
    return Response(raw=b'{"choices": [{"message": {"content": "\xff\xfe\xfa score 5"}}]}')


def binary() -> Response:
    """HTTP 200 with a binary body (e.g. a proxy answering with an image)."""
    return Response(raw=bytes(range(256)) * 4)


def echo(status: int = 200) -> Response:
    """The request's headers sent back: as the assistant's message (200) or as the error body."""
    return Response(status=status, echo_headers=True)


def slow(seconds: float, text: str = "{}") -> Response:
    return Response(content=text, delay=seconds)


@dataclass
class Recorded:
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def system(self) -> str:
        """The system message ('' when the request has none)."""
        return next((m["content"] for m in self.body["messages"] if m.get("role") == "system"), "")

    @property
    def parts(self) -> list[dict[str, Any]]:
        content = [m for m in self.body["messages"] if m.get("role") != "system"][-1]["content"]
        return [{"type": "text", "text": content}] if isinstance(content, str) else content

    @property
    def text(self) -> str:
        return "".join(p["text"] for p in self.parts if p["type"] == "text")

    @property
    def image_urls(self) -> list[str]:
        return [p["image_url"]["url"] for p in self.parts if p["type"] == "image_url"]

    @property
    def images(self) -> list[Image.Image]:
        return [decode_data_url(u) for u in self.image_urls]

    @property
    def is_preflight(self) -> bool:
        """The judge's preflight: one text-only message asking for at most one token."""
        return self.body.get("max_tokens") == 1 and not self.image_urls


def decode_data_url(url: str) -> Image.Image:
    _, b64 = url.split(",", 1)
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        return im.convert("RGB")


class ChatServer:
    """`key`: answer 401 unless the request carries `Authorization: Bearer <key>`; `models`: answer 404
    for a model not in it. Preflight requests (text only, max_tokens 1) are answered "OK" without
    reaching the script or the responder, unless `script_preflight` is set."""

    def __init__(self, responder: Callable[[Recorded], Response] | None = None, *, key: str | None = None,
                 models: set[str] | None = None, script_preflight: bool = False):
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
                    scripted = None
                    if server._script and (script_preflight or not rec.is_preflight):
                        scripted = server._script.popleft()
                if self.path.rstrip("/") != "/v1/chat/completions":
                    resp = Response(status=404, raw=b'{"error": "no such route"}')
                elif key is not None and rec.headers.get("authorization") != f"Bearer {key}":
                    resp = Response(status=401, raw=json.dumps({"error": {"message": "Incorrect API key provided: "
                                                                          + rec.headers.get("authorization", "")}}).encode())
                elif models is not None and body.get("model") not in models:
                    resp = Response(status=404, raw=json.dumps({"error": {
                        "message": f"The model `{body.get('model')}` does not exist.", "code": "model_not_found"}}).encode())
                elif scripted is not None:
                    resp = scripted
                elif rec.is_preflight:
                    resp = reply("OK")
                else:
                    resp = server.responder(rec)
                time.sleep(resp.delay)
                if resp.echo_headers:
                    text = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
                    resp = Response(status=resp.status, content=text, raw=None if resp.status == 200 else text.encode())
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

    @property
    def judged(self) -> list[Recorded]:
        """The requests that were not preflights."""
        return [r for r in self.requests if not r.is_preflight]

    @property
    def preflights(self) -> int:
        return sum(r.is_preflight for r in self.requests)

    def script(self, *responses: Response) -> None:
        with self._lock:
            self._script.extend(responses)

    def __enter__(self) -> "ChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def free_port_url() -> str:
    """A loopback URL where nothing listens (for 'unreachable endpoint' tests)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
