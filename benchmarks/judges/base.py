"""The judge interface, the parsers of judges' replies, and the runner that asks a judge many
questions with caching, bounded retries and honest failure accounting.

A judge answers one request (a prompt and its images) with a text reply. The runner turns each
reply into a value with a parser; a reply that cannot be parsed is asked again (at most
`parse_retries` times) and then recorded as failed. A failed request is never replaced by a
made-up score (the official VIEScore parser substitutes a random integer; we count the failure).
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
    """One request failed for good (after the judge's own transport retries); recorded as failed."""


class JudgeFatalError(RuntimeError):
    """The judge cannot work at all (no key, bad key, unknown model): stop, cache nothing."""


class ReplyParseError(ValueError):
    pass


@dataclass(frozen=True)
class JudgeRequest:
    prompt: str
    images: tuple[Image.Image, ...]


@dataclass(frozen=True)
class JudgeReply:
    text: str
    model_version: str | None = None  # what the server says it ran (e.g. a dated GPT snapshot)


@runtime_checkable
class Judge(Protocol):
    backend: str  # "openai_api" | "local_vlm" | ...
    model: str  # the judge model as configured
    concurrency: int  # requests in flight at once

    def identity(self) -> dict[str, Any]:
        """Everything that changes replies (model, decoding parameters, image encoding): the cache key."""
        ...

    def complete(self, request: JudgeRequest) -> JudgeReply:
        """Ask once. Raise JudgeError when this request failed, JudgeFatalError when every request will."""
        ...


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


_CRITERION = re.compile(r"^\s*[-*#]*\s*\**\s*(?P<name>[^:\n*]+?)\s*\**\s*:\s*\**\s*(?P<v>\d+)\s*\**\s*(?:/\s*\d+)?\s*\.?\s*$")


def parse_criteria(reply: str, n_criteria: int, lo: int = 1, hi: int = 5) -> list[tuple[str, int]]:
    """ImgEdit-style reply: lines `Criterion Name: <int>` (markdown emphasis and '/5' tolerated).
    Exactly `n_criteria` such lines with integers in [lo, hi] are required."""
    if not reply or not reply.strip():
        raise ReplyParseError("empty reply")
    found = []
    for line in reply.splitlines():
        m = _CRITERION.match(line)
        if m:
            found.append((m.group("name").strip(), int(m.group("v"))))
    if len(found) != n_criteria:
        raise ReplyParseError(f"expected {n_criteria} 'Criterion: <int>' lines, found {len(found)}")
    for name, v in found:
        if not lo <= v <= hi:
            raise ReplyParseError(f"{name}: {v} is outside [{lo}, {hi}]")
    return found


_SINGLE = re.compile(r"\bscore\s*[:=]\s*\**\s*(\d+)", re.IGNORECASE)


def parse_single_score(reply: str, lo: int = 1, hi: int = 5) -> int:
    """ImgEdit UGE reply: the last `Score: <int>` in the text (it may share its line with the reasoning)."""
    if not reply or not reply.strip():
        raise ReplyParseError("empty reply")
    hits = _SINGLE.findall(reply)
    if not hits:
        raise ReplyParseError("no 'Score: <int>' found")
    v = int(hits[-1])
    if not lo <= v <= hi:
        raise ReplyParseError(f"score {v} is outside [{lo}, {hi}]")
    return v


# ---------------------------------------------------------------------------------------------
# Runner


@dataclass
class Verdict:
    value: Any = None  # the parsed reply; None when failed
    reply: str | None = None
    error: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


T = TypeVar("T")


@dataclass
class RunnerStats:
    calls: int = 0  # requests sent to the judge (retries included)
    cache_hits: int = 0
    failed: int = 0
    model_versions: set[str] = field(default_factory=set)  # what the server said it ran


class JudgeRunner:
    def __init__(self, judge: Judge, cache: JudgeCache, *, parse_retries: int = 2, retry_failed: bool = False):
        self.judge = judge
        self.cache = cache
        self.parse_retries = parse_retries
        self.retry_failed = retry_failed
        self.stats = RunnerStats()
        self._lock = threading.Lock()
        self._identity = judge.identity()

    def _count(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)

    def ask(self, request: JudgeRequest, parse: Callable[[str], Any]) -> Verdict:
        key = request_key(self._identity, request.prompt, [image_digest(im) for im in request.images])
        entry = self.cache.get(key)
        if entry is not None:
            verdict = self._from_entry(entry, parse)
            if verdict.ok or not self.retry_failed:
                self._count(cache_hits=1, failed=0 if verdict.ok else 1)
                return verdict
        reply: JudgeReply | None = None
        error = None
        attempts = 0
        for _ in range(1 + max(0, self.parse_retries)):
            attempts += 1
            self._count(calls=1)
            try:
                reply = self.judge.complete(request)
            except JudgeError as e:
                reply, error = None, str(e)
                break
            if reply.model_version:
                with self._lock:
                    self.stats.model_versions.add(reply.model_version)
            try:
                value = parse(reply.text)
            except ReplyParseError as e:
                error = f"unparsable reply: {e}"
                continue
            error = None
            break
        self.cache.put(key, {
            "reply": reply.text if reply else None,
            "error": error,
            "model_version": reply.model_version if reply else None,
            "attempts": attempts,
            "judge": self._identity,
            "prompt": request.prompt,
            "time": utc_now(),
        })
        if error is not None:
            self._count(failed=1)
            return Verdict(reply=reply.text if reply else None, error=error)
        return Verdict(value=value, reply=reply.text)

    @staticmethod
    def _from_entry(entry: dict[str, Any], parse: Callable[[str], Any]) -> Verdict:
        if entry.get("error") and entry.get("reply") is None:
            return Verdict(error=entry["error"], cached=True)
        try:
            return Verdict(value=parse(entry.get("reply") or ""), reply=entry.get("reply"), cached=True)
        except ReplyParseError as e:
            return Verdict(reply=entry.get("reply"), error=f"unparsable reply: {e}", cached=True)

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
    """The judge named by `cfg` behind a runner with the cache/retry settings of `cfg`."""
    cache_dir = getattr(cfg, "cache_dir", "") or default_cache_dir
    return JudgeRunner(
        build_judge(cfg),
        JudgeCache(cache_dir),
        parse_retries=int(getattr(cfg, "parse_retries", 2)),
        retry_failed=bool(getattr(cfg, "retry_failed", False)),
    )


def judge_meta(runner: JudgeRunner) -> dict[str, Any]:
    j = runner.judge
    return {
        "judge_backend": j.backend,
        "judge_model": j.model,
        "judge_params": {k: v for k, v in runner._identity.items() if k not in ("backend", "model")},
        "judge_calls": runner.stats.calls,
        "judge_cache_hits": runner.stats.cache_hits,
        "judge_failed_requests": runner.stats.failed,
        "judge_model_versions": sorted(runner.stats.model_versions),
    }
