"""A judge behind an OpenAI-compatible chat-completions API: GPT-4o / GPT-4.1, or a vLLM server
serving e.g. Qwen2.5-VL-72B-Instruct.

Requests are sent as the official GEdit-Bench script sends them: one user message whose content is
the text followed by the images as base64 data URLs (JPEG by default; PNG as ImgEdit's script does). The API key is read from the environment
variable *named* in the config; it is sent as the bearer token and nowhere else (never in configs,
caches, logs or results; error texts are scrubbed of it). Transport failures (timeouts, connection
errors, HTTP 429 and 5xx) are retried with exponential backoff (honouring Retry-After); other 4xx
answers fail the request, and 401/403/404 stop the run (every request would fail the same way). A
reply body that is not JSON (binary, not UTF-8, empty) is retried like a transport failure, then
counted as failed. Every text kept from the server (replies, error bodies) is scrubbed of the key
and of Authorization headers, since a server may echo the request's headers. `preflight()` sends
one tiny request before any work, so a bad key, model or endpoint is one clear error.
Standard library only.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import random
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from benchmarks.judges.base import JudgeError, JudgeFatalError, JudgeReply, JudgeRequest, scrub
from harness.config import nohash
from harness.registry import JUDGES, Spec

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}
FATAL_STATUS = {401, 403, 404}
PREFLIGHT_TRIES = 3


@dataclass
class OpenAIJudgeConfig:
    name: str = "openai_api"
    # Model id sent to the API (GEdit-Bench: gpt-4.1; ImgEdit: gpt-4o; a vLLM server: its served name).
    model: str = "gpt-4.1"
    base_url: str = nohash("https://api.openai.com/v1", help="the API root; /chat/completions is appended")
    api_key_env: str = nohash("OPENAI_API_KEY", help="NAME of the env variable holding the key; '' = no auth")
    temperature: float = 0.0  # 0 = the most reproducible replies
    seed: int | None = 42  # sent as the request's `seed` (pass p sends seed + p; null = not sent)
    # Independent replies per question, averaged (each its own request and cache entry).
    passes: int = field(default=1, metadata={"hash": "unless_default"})
    max_tokens: int = 1400  # 0 = not sent
    # How images travel: GEdit's official script sends JPEG (PIL's default quality 75); ImgEdit's sends PNG files.
    image_format: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = 75
    images_first: bool = False  # official GEdit/ImgEdit API scripts put the text first
    timeout_s: float = nohash(120.0, help="per socket operation")
    max_retries: int = nohash(6, help="transport retries per request (429, 5xx, timeouts)")
    backoff_s: float = nohash(2.0)
    max_backoff_s: float = nohash(60.0)
    concurrency: int = nohash(8, help="requests in flight at once")
    parse_retries: int = nohash(2, help="asks again after an unparsable reply, then records a failure")
    retry_failed: bool = nohash(False, help="ask again for requests cached as failed")
    cache_dir: str = nohash("", help="reply cache folder; '' = <outputs>/.judge_cache")

    def validate(self) -> None:
        if not self.model:
            raise ValueError("judge.model must be set")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge.base_url must start with http:// or https://, got {self.base_url!r}")
        if self.concurrency < 1 or self.max_retries < 0 or self.parse_retries < 0:
            raise ValueError("judge.concurrency must be >= 1; max_retries and parse_retries >= 0")
        if self.passes < 1:
            raise ValueError(f"judge.passes must be >= 1, got {self.passes}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"judge.jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


def encode_image(image: Image.Image, fmt: str, quality: int) -> str:
    """A data URL of the image in `fmt` (jpeg | png)."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format="PNG")
    return f"data:image/{fmt};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


class OpenAIJudge:
    backend = "openai_api"

    def __init__(self, cfg: OpenAIJudgeConfig):
        self.cfg = cfg
        self.model = cfg.model
        self.concurrency = cfg.concurrency
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        # The key is needed only for a request: an evaluation answered from the cache runs without it.
        self._key: str | None = (os.environ.get(cfg.api_key_env) or None) if cfg.api_key_env else None

    def _require_key(self) -> None:
        if self.cfg.api_key_env and not self._key:
            raise JudgeFatalError(
                f"judge.api_key_env: environment variable {self.cfg.api_key_env} is not set "
                f"(it must hold the API key for {self.cfg.base_url}; set api_key_env: '' for a server without auth)")

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIJudge(model={self.model!r}, url={self.url!r})"

    def secrets(self) -> list[str]:
        return [self._key] if self._key else []

    def identity(self) -> dict[str, Any]:
        c = self.cfg
        return {"backend": self.backend, "model": c.model, "temperature": c.temperature, "seed": c.seed,
                "max_tokens": c.max_tokens, "image_format": c.image_format,
                "jpeg_quality": c.jpeg_quality if c.image_format == "jpeg" else None,
                "images_first": c.images_first}

    def payload(self, request: JudgeRequest, pass_index: int = 0) -> dict[str, Any]:
        text = [{"type": "text", "text": request.prompt}]
        images = [{"type": "image_url", "image_url": {"url": encode_image(im, self.cfg.image_format, self.cfg.jpeg_quality)}}
                  for im in request.images]
        messages = [{"role": "system", "content": request.system}] if request.system else []
        messages.append({"role": "user", "content": images + text if self.cfg.images_first else text + images})
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
        }
        if self.cfg.seed is not None:
            body["seed"] = self.cfg.seed + pass_index  # pass p of a question: its own reproducible draw
        if self.cfg.max_tokens > 0:
            body["max_tokens"] = self.cfg.max_tokens
        return body

    def _scrub(self, text: str) -> str:
        return scrub(text, self.secrets()) or ""

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        return headers

    def _post(self, data: bytes, timeout: float) -> bytes:
        req = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()

    def complete(self, request: JudgeRequest, pass_index: int = 0) -> JudgeReply:
        self._require_key()
        data = json.dumps(self.payload(request, pass_index)).encode("utf-8")
        last = "no attempt"
        for attempt in range(self.cfg.max_retries + 1):
            retry_after: float | None = None
            try:
                reply = self._reply(self._post(data, self.cfg.timeout_s))
                return JudgeReply(self._scrub(reply.text), reply.model_version and self._scrub(reply.model_version),
                                  requests=attempt + 1)
            except _MalformedResponse as e:
                last = self._scrub(str(e))
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {self._error_detail(e)}"
                if e.code in FATAL_STATUS:
                    raise JudgeFatalError(f"judge {self.url} answered {last} (check judge.model, judge.base_url and "
                                          f"the key in {self.cfg.api_key_env or '(no judge.api_key_env)'})") from None
                if e.code not in RETRY_STATUS:
                    raise JudgeError(last, requests=attempt + 1) from None
                retry_after = _retry_after(e.headers.get("Retry-After") if e.headers else None)
            except (TimeoutError, socket.timeout) as e:
                last = f"timed out after {self.cfg.timeout_s:g}s ({e})"
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, OSError) as e:
                last = f"connection error: {self._scrub(str(getattr(e, 'reason', e)))}"
            if attempt < self.cfg.max_retries:
                delay = min(self.cfg.max_backoff_s, self.cfg.backoff_s * 2 ** attempt) * (0.5 + random.random() / 2)
                if retry_after is not None:
                    delay = min(self.cfg.max_backoff_s, max(delay, retry_after))
                time.sleep(delay)
        raise JudgeError(f"{last} (gave up after {self.cfg.max_retries + 1} attempts)", requests=self.cfg.max_retries + 1)

    def preflight(self) -> int:
        """One tiny text-only request (max_tokens 1) to the configured endpoint and model: checks that the
        endpoint answers, that it takes the key and that it serves the model. Transient failures (429,
        5xx, a dropped connection, a malformed body) are tried PREFLIGHT_TRIES times. Returns the number
        of HTTP requests; raises JudgeFatalError with one line naming the key to fix."""
        self._require_key()
        body = {"model": self.cfg.model, "temperature": 0.0, "max_tokens": 1,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "Reply with the word OK."}]}]}
        data = json.dumps(body).encode("utf-8")
        timeout = min(self.cfg.timeout_s, 30.0)
        where = f"judge preflight ({self.cfg.model} at {self.cfg.base_url})"
        last = ""
        for attempt in range(PREFLIGHT_TRIES):
            try:
                self._reply(self._post(data, timeout))
                return attempt + 1
            except _MalformedResponse as e:
                last = f"{where}: not an OpenAI-compatible chat API, {self._scrub(str(e))}; check judge.base_url"
            except urllib.error.HTTPError as e:
                detail = f"HTTP {e.code}: {self._error_detail(e)}"
                if e.code in (401, 403):
                    key = (f"the key in ${self.cfg.api_key_env} was rejected" if self.cfg.api_key_env
                           else "the server wants a key; set judge.api_key_env to the NAME of the variable holding it")
                    raise JudgeFatalError(f"{where}: {key} ({detail}); check judge.api_key_env") from None
                if e.code == 404:
                    raise JudgeFatalError(f"{where}: no model {self.cfg.model!r} there ({detail}); check judge.model "
                                          "(a vLLM server serves the name given by --served-model-name) and judge.base_url") from None
                if e.code not in RETRY_STATUS:
                    raise JudgeFatalError(f"{where}: the request was refused ({detail}); check judge.model and judge.base_url") from None
                last = f"{where}: the endpoint keeps answering {detail}"
            except (TimeoutError, socket.timeout):
                last = f"{where}: no answer within {timeout:g}s; check judge.base_url (is the server up?)"
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, OSError) as e:
                last = (f"{where}: cannot reach the endpoint ({self._scrub(str(getattr(e, 'reason', e)))}); "
                        "check judge.base_url (is the server up?)")
            if attempt + 1 < PREFLIGHT_TRIES:
                time.sleep(min(1.0, self.cfg.backoff_s) * 2 ** attempt)
        raise JudgeFatalError(last)

    def _error_detail(self, e: urllib.error.HTTPError) -> str:
        try:
            raw = e.read()[:300]
        except (OSError, http.client.HTTPException):
            raw = b""
        return " ".join(self._scrub(raw.decode("utf-8", "replace")).split())

    @staticmethod
    def _reply(body: bytes) -> JudgeReply:
        try:
            obj = json.loads(body)  # bytes that are not UTF-8 raise UnicodeDecodeError, a ValueError
            msg = obj["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _MalformedResponse(f"malformed API response: {body[:200]!r}") from None
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        if content is not None and not isinstance(content, str):
            raise _MalformedResponse(f"malformed API response: message content is {type(content).__name__}")
        model = obj.get("model")
        return JudgeReply(text=content or "", model_version=model[:200] if isinstance(model, str) else None)


class _MalformedResponse(Exception):
    pass


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


JUDGES.register("openai_api", Spec(config=OpenAIJudgeConfig, build=OpenAIJudge,
                                   help="OpenAI-compatible chat API (GPT-4.1/4o, or a vLLM server)"))
