"""The judge interface, the parsers of judges' replies, and the runner that asks a judge many
questions with caching, bounded retries and honest failure accounting.

A judge answers one request (a prompt and its images) with a text reply. The runner turns each
reply into a value with a parser; a reply that cannot be parsed is asked again (at most
`parse_retries` times) and then recorded as failed. A failed request is never replaced by a
made-up score (the official VIEScore parser substitutes a random integer; we count the failure).

With `passes: N` every question is asked N times independently (pass p is its own request, cached
under its own key, sent with seed + p) and the parsed values are averaged; a question is scored
only when all N passes are. Before its first call that the cache cannot answer, the runner runs the
judge's preflight (one cheap request that checks endpoint, key and model), so a fully cached
evaluation makes no call at all. Every text the runner stores is scrubbed of the judge's secrets
and of Authorization headers (`scrub`).
"""
from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from PIL import Image
from tqdm import tqdm

from benchmarks.common import show_progress, utc_now
from benchmarks.judges.cache import JudgeCache, image_digest, request_key


class JudgeError(RuntimeError):
    """One request failed for good (after the judge's own transport retries); recorded as failed.
    `requests`: the HTTP requests it took (retries included)."""

    def __init__(self, message: str, requests: int = 1):
        super().__init__(message)
        self.requests = requests


class JudgeFatalError(RuntimeError):
    """The judge cannot work at all (no key, bad key, unknown model, unreachable): stop, cache nothing.
    The message is one line that names the config key to fix."""


class ReplyParseError(ValueError):
    pass


@dataclass(frozen=True)
class JudgeRequest:
    prompt: str
    images: tuple[Image.Image, ...]
    system: str = ""  # a system message before the user's (the dataset builder's prompts have one); part of the cache key


@dataclass(frozen=True)
class JudgeReply:
    text: str
    model_version: str | None = None  # what the server says it ran (e.g. a dated GPT snapshot)
    requests: int = 1  # HTTP requests this reply took (transport retries included)


@runtime_checkable
class Judge(Protocol):
    backend: str  # "openai_api" | "local_vlm" | ...
    model: str  # the judge model as configured
    concurrency: int  # requests in flight at once

    def identity(self) -> dict[str, Any]:
        """Everything that changes replies (model, decoding parameters, image encoding): the cache key."""
        ...

    def complete(self, request: JudgeRequest, pass_index: int = 0) -> JudgeReply:
        """Ask once (pass `pass_index` of the question: the judge sends seed + pass_index). Raise
        JudgeError when this request failed, JudgeFatalError when every request will."""
        ...


# ---------------------------------------------------------------------------------------------
# Secrets


_HEADER_VALUE = re.compile(
    r"""(?i)\b(authorization|proxy-authorization|api-key|x-api-key)(\s*["']?\s*[:=]\s*["']?\s*)(bearer\s+|basic\s+)?[^\s"',;}\]]+""")
_BEARER = re.compile(r"""(?i)\bbearer\s+[^\s"',;}\]]+""")
MIN_SECRET_LEN = 8  # shorter values (e.g. vLLM's placeholder key "EMPTY") are not treated as secrets


def scrub(text: str | None, secrets: Sequence[str] = ()) -> str | None:
    """`text` without the secret values and without the values of Authorization / API-key headers
    (a server may echo request headers back), as valid UTF-8 (lone surrogates replaced)."""
    if text is None:
        return None
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_LEN:
            text = text.replace(secret, "***")
    text = _HEADER_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}***", text)
    text = _BEARER.sub("Bearer ***", text)
    return text.encode("utf-8", "replace").decode("utf-8")


# ---------------------------------------------------------------------------------------------
# Parsers


_FENCE = re.compile(r"```(?:json)?", re.IGNORECASE)
_SCORE_LIST = re.compile(r"""["']?score["']?\s*:\s*\[([^\]]*)\]""", re.IGNORECASE)
_BARE_LIST = re.compile(r"^\s*\[\s*(\d+(?:\s*,\s*\d+)*)\s*\]\s*$")


def _as_score(v: Any, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ReplyParseError(f"score {v!r} is not a number")
    if not lo <= v <= hi:
        raise ReplyParseError(f"score {v} is outside [{lo:g}, {hi:g}]")
    return float(v)


def parse_score_json(reply: str, n_scores: int, lo: float = 0, hi: float = 10) -> list[float]:
    """VIEScore-style reply: a JSON object {"score": [...], "reasoning": "..."}, possibly wrapped in
    prose, code fences or VIEScore's ||V^=^V|| delimiters; a bare list "[6, 0]" is accepted too.
    Exactly `n_scores` numbers in [lo, hi] are required."""
    if not reply or not reply.strip():
        raise ReplyParseError("empty reply")
    text = _FENCE.sub("", reply).replace("||V^=^V||", "")
    scores: Any = None
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            obj = json.loads(text[start:end + 1])
            if isinstance(obj, dict) and "score" in obj:
                scores = obj["score"]
        except json.JSONDecodeError:
            pass
    if scores is None:
        m = _SCORE_LIST.search(text) or _BARE_LIST.match(text)
        if m is None:
            raise ReplyParseError("no score list found")
        try:
            scores = json.loads(f"[{m.group(1)}]")
        except json.JSONDecodeError:
            raise ReplyParseError(f"score list [{m.group(1)}] is not a list of numbers") from None
    if not isinstance(scores, list):
        scores = [scores]
    if len(scores) != n_scores:
        raise ReplyParseError(f"expected {n_scores} scores, got {len(scores)}")
    return [_as_score(v, lo, hi) for v in scores]


# ---------------------------------------------------------------------------------------------
# Runner


@dataclass
class Verdict:
    value: Any = None  # the parsed reply (with passes > 1: the mean over passes); None when failed
    reply: str | None = None  # the (first pass's) reply text
    error: str | None = None
    cached: bool = False  # every pass came from the cache
    replies: list[str | None] = field(default_factory=list)  # every pass's reply text

    @property
    def ok(self) -> bool:
        return self.error is None


T = TypeVar("T")


@dataclass
class RunnerStats:
    calls: int = 0  # HTTP requests sent to the judge: transport retries, re-asks and preflight included
    cache_hits: int = 0  # questions (passes) answered from the cache
    failed: int = 0  # questions (passes) that ended without a usable reply
    preflight_calls: int = 0  # of `calls`, the preflight's
    model_versions: set[str] = field(default_factory=set)  # what the server said it ran


def mean_of_passes(values: Sequence[Any]) -> Any:
    """The mean of the passes' parsed values: numbers, or lists of numbers of one length (elementwise)."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sum(values) / len(values)
    if all(isinstance(v, (list, tuple)) for v in values) and len({len(v) for v in values}) == 1:
        return [sum(col) / len(col) for col in zip(*values)]
    raise ReplyParseError(f"the passes' values cannot be averaged: {list(values)!r}")


class JudgeRunner:
    def __init__(self, judge: Judge, cache: JudgeCache, *, parse_retries: int = 2, retry_failed: bool = False,
                 passes: int = 1, preflight: bool = False):
        if passes < 1:
            raise ValueError(f"passes must be >= 1, got {passes}")
        self.judge = judge
        self.cache = cache
        self.parse_retries = parse_retries
        self.retry_failed = retry_failed
        self.passes = passes
        self.stats = RunnerStats()
        self._lock = threading.Lock()
        self._identity = judge.identity()
        self._secrets = tuple(judge.secrets()) if hasattr(judge, "secrets") else ()
        self._preflight_lock = threading.Lock()
        self._preflight_done = not (preflight and hasattr(judge, "preflight"))
        self._preflight_error: str | None = None  # a failed preflight is not tried again by the other workers

    def _count(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)

    def _scrub(self, text: str | None) -> str | None:
        return scrub(text, self._secrets)

    def _ensure_preflight(self) -> None:
        """One cheap request before the first real one (endpoint, key, model); JudgeFatalError if it fails."""
        if self._preflight_done:
            return
        with self._preflight_lock:
            if self._preflight_done:
                return
            if self._preflight_error is not None:
                raise JudgeFatalError(self._preflight_error)
            try:
                n = self.judge.preflight()  # type: ignore[attr-defined]
            except JudgeFatalError as e:
                self._preflight_error = self._scrub(str(e))
                raise JudgeFatalError(self._preflight_error) from None
            self._count(calls=n, preflight_calls=n)
            self._preflight_done = True

    def ask(self, request: JudgeRequest, parse: Callable[[str], Any]) -> Verdict:
        """Ask `passes` times (each pass cached on its own); the mean of the parsed values."""
        digests = [image_digest(im) for im in request.images]
        verdicts = [self._ask_pass(request, digests, parse, p) for p in range(self.passes)]
        if self.passes == 1:
            return verdicts[0]
        replies = [v.reply for v in verdicts]
        cached = all(v.cached for v in verdicts)
        errors = [f"pass {p}: {v.error}" for p, v in enumerate(verdicts) if not v.ok]
        if errors:
            return Verdict(reply=replies[0], error="; ".join(errors), cached=cached, replies=replies)
        try:
            value = mean_of_passes([v.value for v in verdicts])
        except ReplyParseError as e:
            return Verdict(reply=replies[0], error=str(e), cached=cached, replies=replies)
        return Verdict(value=value, reply=replies[0], cached=cached, replies=replies)

    def _ask_pass(self, request: JudgeRequest, digests: list[str], parse: Callable[[str], Any], p: int) -> Verdict:
        # pass 0 keeps the key of a single-pass question, so passes: N reuses a passes: 1 cache
        identity = self._identity if p == 0 else {**self._identity, "pass": p}
        key = request_key(identity, request.prompt, digests, system=request.system)
        entry = self.cache.get(key)
        if entry is not None:
            verdict = self._from_entry(entry, parse)
            if verdict.ok or not self.retry_failed:
                self._count(cache_hits=1, failed=0 if verdict.ok else 1)
                return verdict
        self._ensure_preflight()
        reply: JudgeReply | None = None
        text: str | None = None
        error = None
        value = None
        attempts = 0
        for _ in range(1 + max(0, self.parse_retries)):
            attempts += 1
            try:
                reply = self.judge.complete(request, pass_index=p)
            except JudgeError as e:
                self._count(calls=e.requests)
                reply, text, error = None, None, self._scrub(str(e))
                break
            self._count(calls=reply.requests)
            text = self._scrub(reply.text)
            version = self._scrub(reply.model_version)
            if version:
                with self._lock:
                    self.stats.model_versions.add(version)
            try:
                value = parse(text or "")
            except ReplyParseError as e:
                error = f"unparsable reply: {e}"
                continue
            error = None
            break
        self.cache.put(key, {
            "reply": text,
            "error": error,
            "model_version": self._scrub(reply.model_version) if reply else None,
            "attempts": attempts,
            "pass": p,
            "judge": identity,
            "prompt": request.prompt,
            **({"system": request.system} if request.system else {}),
            "time": utc_now(),
        })
        if error is not None:
            self._count(failed=1)
            return Verdict(reply=text, error=error, replies=[text])
        return Verdict(value=value, reply=text, replies=[text])

    @staticmethod
    def _from_entry(entry: dict[str, Any], parse: Callable[[str], Any]) -> Verdict:
        reply = entry.get("reply")
        if entry.get("error") and reply is None:
            return Verdict(error=entry["error"], cached=True, replies=[None])
        try:
            return Verdict(value=parse(reply or ""), reply=reply, cached=True, replies=[reply])
        except ReplyParseError as e:
            return Verdict(reply=reply, error=f"unparsable reply: {e}", cached=True, replies=[reply])

    def run(
        self,
        items: Sequence[T],
        make: Callable[[T], tuple[JudgeRequest, Callable[[str], Any]]],
        *,
        progress: bool = True,
        desc: str = "judge",
    ) -> list[Verdict]:
        """Ask about every item; `make(item)` builds its request and the parser of its reply. Images
        are loaded only then, in a worker, so memory stays bounded by the concurrency. Returns one
        verdict per item, in order."""
        out: list[Verdict | None] = [None] * len(items)

        def one(i: int) -> Verdict:
            request, parse = make(items[i])
            return self.ask(request, parse)

        with tqdm(total=len(items), desc=desc, unit="req", disable=not show_progress(progress)) as bar:
            workers = max(1, int(getattr(self.judge, "concurrency", 1)))
            if workers == 1:
                for i in range(len(items)):
                    out[i] = one(i)
                    bar.update(1)
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    futures = {pool.submit(one, i): i for i in range(len(items))}
                    try:
                        for fut in as_completed(futures):
                            out[futures[fut]] = fut.result()
                            bar.update(1)
                    except BaseException:
                        for f in futures:
                            f.cancel()
                        raise
        return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Building a judge from its config


def build_judge(cfg: Any) -> Judge:
    from harness.registry import JUDGES

    return JUDGES.get(cfg.name).build(cfg)


def build_runner(cfg: Any, default_cache_dir: Path) -> JudgeRunner:
    """The judge named by `cfg` behind a runner with the cache/retry/passes settings of `cfg`; it
    preflights the judge before its first uncached request."""
    cache_dir = getattr(cfg, "cache_dir", "") or default_cache_dir
    return JudgeRunner(
        build_judge(cfg),
        JudgeCache(cache_dir),
        parse_retries=int(getattr(cfg, "parse_retries", 2)),
        retry_failed=bool(getattr(cfg, "retry_failed", False)),
        passes=int(getattr(cfg, "passes", 1)),
        preflight=True,
    )


def preflight(cfg: Any) -> int:
    """Check the judge of `cfg` with one cheap request (endpoint, key, model): the number of HTTP
    requests it took. JudgeFatalError (one line naming the key to fix) when it cannot work."""
    judge = build_judge(cfg)
    check = getattr(judge, "preflight", None)
    return int(check()) if check is not None else 0


def judge_meta(runner: JudgeRunner) -> dict[str, Any]:
    j = runner.judge
    return {
        "judge_backend": j.backend,
        "judge_model": j.model,
        "judge_passes": runner.passes,
        "judge_params": {k: v for k, v in runner._identity.items() if k not in ("backend", "model")},
        "judge_calls": runner.stats.calls,
        "judge_preflight_calls": runner.stats.preflight_calls,
        "judge_cache_hits": runner.stats.cache_hits,
        "judge_failed_requests": runner.stats.failed,
        "judge_model_versions": sorted(runner.stats.model_versions),
    }


def prompts_version(*texts: str) -> str:
    """A short content hash of the prompt templates a score was made with (the results' prompt version)."""
    import hashlib

    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:12]
