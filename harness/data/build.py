r"""The instruction-dataset builder (paper, Sec. 4.1 and Appendix D): reference images in, (y, c, c^y, c^x)
tuples out, with a VLM behind any OpenAI-compatible endpoint.

    python -m harness.data build --images SRC --vlm configs/data/qwen2.5-vl-32b.yaml --out DATASET \
        [--types color add ...] [--per-image 4] [--customization] [--prompts FILE] [vlm.KEY=VALUE ...]

The paper's setting is Qwen2.5-VL-32B-Instruct; served by vLLM on one node (two 80 GB GPUs):

    vllm serve Qwen/Qwen2.5-VL-32B-Instruct --served-model-name Qwen2.5-VL-32B-Instruct --tensor-parallel-size 2 --max-model-len 16384 --limit-mm-per-prompt '{"image": 2}' --port 8000

For every image (in source order): c^y from the corpus caption or the VLM, the proposal prompt for
`--per-image` instructions of the asked-for types, the validity question for each candidate (invalid
ones are dropped; a valid verdict carries c^x), and with --customization the prominent-object check and
three new background captions (harness.data.annotate). Output: the harness's instruction format
(harness.data.instructions), each record with its provenance (VLM model, prompt version, source image).

Like every long job here: before any work one cheap request checks the endpoint, key and model
(judge preflight); requests run `vlm.concurrency` at a time with a progress bar; every reply is cached
on disk (DATASET/.vlm_cache, keyed by model, decoding, prompt and image content) and every finished
image has a state file (DATASET/.build/, keyed by image hash, caption, prompts and VLM), so a build
killed at any point and started again makes no request twice. A failed or unparsable request is retried
(transport: vlm.max_retries; unparsable: vlm.parse_retries), then counted and named in
DATASET/build_report.json, which also names every unreadable image. Nothing is invented for a failed
reply; `vlm.retry_failed=true` asks the failed requests again.
"""
from __future__ import annotations

import hashlib
import json
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from harness.data import sources
from harness.data.annotate import VLM, annotate_image
from harness.data.edit_types import EDIT_TYPES, LOCAL_TYPES
from harness.data.parallel import ordered_map
from harness.data.prompts import PromptSet
from harness.data.writer import instruction_row, read_meta, store_image, write_dataset
from harness.runstore import atomic_write_json

STATE_DIR = ".build"
CACHE_DIR = ".vlm_cache"
REPORT = "build_report.json"


class BuildError(ValueError):
    pass


@dataclass
class BuildOptions:
    images: Path
    out: Path
    types: list[str] = field(default_factory=lambda: list(LOCAL_TYPES))
    per_image: int = 4
    max_side: int = 1024  # the long side of the image sent to the VLM (the stored reference keeps its own size)
    image_column: str = "image"
    caption_column: str | None = "caption"
    split: str | None = None
    name: str = ""
    limit: int = 0  # 0 = every image

    def validate(self) -> None:
        unknown = sorted(set(self.types) - set(EDIT_TYPES))
        if unknown:
            raise BuildError(f"--types: unknown {unknown} (allowed: {', '.join(EDIT_TYPES)})")
        if not self.types:
            raise BuildError("--types: at least one edit type")
        if self.per_image < 1:
            raise BuildError(f"--per-image must be >= 1, got {self.per_image}")
        if self.max_side < 64:
            raise BuildError(f"--max-side must be >= 64, got {self.max_side}")


def settings(opts: BuildOptions, P: PromptSet, vlm: VLM) -> dict[str, Any]:
    """Everything that changes what an image yields: the per-image state key covers it."""
    return {"prompt_version": P.version, "vlm": vlm.identity(), "types": sorted(opts.types),
            "per_image": opts.per_image, "max_side": opts.max_side}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def check_out(out: Path) -> None:
    """DATASET must be new, empty, or an earlier build (never an import or other files)."""
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / STATE_DIR).is_dir():
        raise BuildError(f"--out {out}: not empty and not a dataset build folder (no {STATE_DIR}/); choose a new --out")


def for_vlm(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    im = image.copy()
    im.thumbnail((max_side, max_side), Image.BICUBIC)
    return im


@dataclass
class _Result:
    status: str  # ok | unreadable
    name: str
    key: str = ""
    error: str = ""


class Builder:
    def __init__(self, opts: BuildOptions, P: PromptSet, vlm: VLM, *, progress: bool = True):
        self.opts, self.P, self.vlm, self.progress = opts, P, vlm, progress
        self.local = [t for t in LOCAL_TYPES if t in opts.types]
        self.customization = "customization" in opts.types
        self.settings = settings(opts, P, vlm)
        self.settings_key = _digest(self.settings)[:16]
        self.state_dir = opts.out / STATE_DIR
        self.example = sources.decode(P.example_image.read_bytes()) if (P.example_image and self.customization) else None
        self._lock = threading.Lock()
        self._claimed: set[str] = set()
        self._unsaved: dict[str, dict[str, Any]] = {}  # images with a failed request: kept in memory, not saved

    # ---- one image ---------------------------------------------------------------------------

    def _state_path(self, key: str) -> Path:
        return self.state_dir / key[:2] / f"{key}.json"

    def process(self, item: sources.SourceItem) -> _Result:
        try:
            data = item.read()
        except OSError as e:
            return _Result("unreadable", item.name, error=f"cannot read the file: {e}")
        digest = hashlib.sha256(data).hexdigest()
        key = _digest([digest, item.caption or "", self.settings_key])[:32]
        if self._state_path(key).is_file():
            return _Result("ok", item.name, key)
        try:
            image = sources.decode(data)
            suffix = sources.image_suffix(data, item.suffix)
        except Exception as e:  # PIL raises many kinds for a damaged or foreign file
            return _Result("unreadable", item.name, error=sources.unreadable(e))
        with self._lock:  # the same image twice in the source: asked about once
            if key in self._claimed:
                return _Result("ok", item.name, key)
            self._claimed.add(key)
        rng = random.Random(int(key[:16], 16))
        outcome = annotate_image(self.vlm, self.P, for_vlm(image, self.opts.max_side), item.caption,
                                 types=self.opts.types, per_image=self.opts.per_image, customization=self.customization,
                                 rng=rng, example=self.example)
        rel = store_image(self.opts.out, "images", digest, suffix, data=data) if outcome.records else ""
        state = {"key": key, "source": item.name, "image": rel, "digest": digest, "records": outcome.records,
                 "counts": dict(outcome.counts), "failures": outcome.failures}
        if outcome.failures:
            with self._lock:
                self._unsaved[key] = state  # recomputed from the reply cache next time (or asked again with retry_failed)
        else:
            atomic_write_json(self._state_path(key), state)
        return _Result("ok", item.name, key)

    def state(self, key: str) -> dict[str, Any]:
        if key in self._unsaved:
            return self._unsaved[key]
        return json.loads(self._state_path(key).read_text(encoding="utf-8"))

    # ---- all images --------------------------------------------------------------------------

    def run(self, src: sources.Source) -> list[_Result]:
        """Every image of `src`, `vlm.concurrency` at a time; results in source order."""
        total = min(src.count, self.opts.limit) if self.opts.limit else src.count
        return ordered_map(self.process, src.items(), total=total, workers=self.vlm.concurrency, desc="build",
                           progress=self.progress)

    # ---- the dataset -------------------------------------------------------------------------

    def rows(self, results: list[_Result], summary: Counter) -> Iterator[dict[str, Any]]:
        """The records in source order; the counts of every unique image summed into `summary`."""
        seen: set[str] = set()
        for r in results:
            if r.status == "unreadable":
                summary["unreadable"] += 1
                continue
            if r.key in seen:  # the same image (and caption) again: its records are written once
                summary["duplicate_images"] += 1
                continue
            seen.add(r.key)
            st = self.state(r.key)
            summary["images_read"] += 1
            summary.update(st["counts"])
            for j, rec in enumerate(st["records"]):
                summary["records"] += 1
                prov = {"vlm": self.vlm.model, "prompt_version": self.P.version, "prompts": self.P.name,
                        "source": st["source"]}
                yield instruction_row({**rec, "id": f"{st['digest'][:16]}-{j}", "image": st["image"]}, prov)

    def report(self, results: list[_Result]) -> dict[str, Any]:
        failures = []
        for r in results:
            if r.status == "ok" and r.key in self._unsaved:
                failures += [{"source": r.name, **f} for f in self._unsaved[r.key]["failures"]]
        return {"unreadable": [{"source": r.name, "error": r.error} for r in results if r.status == "unreadable"],
                "failed_requests": failures}


def builder_meta(opts: BuildOptions, P: PromptSet, vlm: VLM, src: sources.Source, settings_key: str) -> dict[str, Any]:
    return {"builder": {"command": "build", "vlm": vlm.model, "vlm_params": vlm.identity(),
                        "prompt_version": P.version, "prompts": P.name, "prompts_file": str(P.path),
                        "types": opts.types, "per_image": opts.per_image, "max_side": opts.max_side,
                        "settings_key": settings_key,
                        "source": {"path": str(src.path), "kind": src.kind, "count": src.count, "limit": opts.limit}}}


def build(opts: BuildOptions, P: PromptSet, vlm: VLM, *, progress: bool = True) -> dict[str, Any]:
    """Build (or finish) the dataset in opts.out; returns its dataset.json content (with the summary)."""
    opts.validate()
    check_out(opts.out)
    src = sources.open_images(opts.images, image_column=opts.image_column, caption_column=opts.caption_column,
                              split=opts.split)
    builder = Builder(opts, P, vlm, progress=progress)
    meta = builder_meta(opts, P, vlm, src, builder.settings_key)
    done = read_meta(opts.out)
    if (done and done.get("builder") == meta["builder"] and (opts.out / "instructions.jsonl").is_file()
            and not vlm.runner.retry_failed):
        return {**done, "already_built": True}  # finished before with these settings: nothing to ask
    vlm.preflight()  # before anything is written: a wrong endpoint, key or model leaves no folder behind
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / STATE_DIR).mkdir(exist_ok=True)
    results = builder.run(src)
    summary: Counter = Counter()
    info = write_dataset(opts.out, builder.rows(results, summary), name=opts.name or opts.out.name, meta=meta)
    report = builder.report(results)
    info["unreadable_sample"] = [u["source"] for u in report["unreadable"][:5]]
    info["summary"] = {**{k: summary[k] for k in sorted(summary)}, "vlm": vlm.stats(),
                       "vlm_model_versions": sorted(vlm.runner.stats.model_versions)}
    atomic_write_json(opts.out / REPORT, {**report, "summary": info["summary"]})
    info["report"] = REPORT
    atomic_write_json(opts.out / "dataset.json", info)
    return info


def describe(info: dict[str, Any], out: Path) -> str:
    """The summary a user reads at the end of a build."""
    s = info.get("summary", {})
    per_type = ", ".join(f"{t} {n}" for t, n in info.get("per_type", {}).items()) or "none"
    failed = {k[len("failed_"):]: v for k, v in s.items() if k.startswith("failed_") and v}
    vlm = s.get("vlm", {})
    lines = [
        f"built {out}: {info.get('count', 0)} records ({per_type})",
        f"  images read {s.get('images_read', 0)}, unreadable {s.get('unreadable', 0)}"
        + (f" ({', '.join(info.get('unreadable_sample', []))}{', ...' if s['unreadable'] > 5 else ''}; all named in "
           f"{out / REPORT})" if s.get("unreadable") else "") + f", duplicates {s.get('duplicate_images', 0)}",
        f"  captions: corpus {s.get('captions_from_corpus', 0)}, VLM {s.get('captions_from_vlm', 0)}",
        f"  proposals {s.get('proposals', 0)}, rejected as invalid {s.get('rejected_invalid', 0)}, "
        f"off-type {s.get('proposals_off_type', 0)}, duplicates {s.get('proposals_duplicate', 0)}, "
        f"removals without an object {s.get('remove_without_object', 0)}",
    ]
    if any(k.startswith("customization") for k in s):
        lines.append(f"  customization: prominent object {s.get('customization_prominent', 0)}, "
                     f"not {s.get('customization_not_prominent', 0)}, a scene {s.get('customization_scene_not_object', 0)}")
    lines.append("  failed requests (retried, then counted; nothing made up): "
                 + (", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "none")
                 + (f" (named in {out / REPORT})" if failed else ""))
    if info.get("already_built"):
        lines.append("  already complete with these settings: nothing asked this time")
    else:
        lines.append(f"  VLM calls this run {vlm.get('calls', 0)} (preflight {vlm.get('preflight_calls', 0)}), "
                     f"answers from the cache {vlm.get('cache_hits', 0)}")
    return "\n".join(lines)
