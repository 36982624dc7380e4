"""What every public benchmark shares: the generation loop, atomic image writes, and the
aggregation of per-sample scores into per-task means and counts.

Generation is deterministic in (editor, seed, batch_size): the jobs are cut into consecutive
chunks of `batch_size`, chunk c is edited with seed `seed + c`, and shard (i, n) owns the chunks
with c % n == i. So an interrupted run that is resumed, or a job array of n shards, writes the same
files as one uninterrupted run. A chunk is skipped only when all its outputs exist; a partly
written chunk is edited again and only its missing files are written.
"""
from __future__ import annotations

import json
import math
import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from benchmarks.base import BenchmarkResult
from methods.base import Editor


class BenchmarkDataError(ValueError):
    """A benchmark file is missing or not in the public format (the message names the file)."""


# ---------------------------------------------------------------------------------------------
# Files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid and thread: two threads writing one cache entry (the same question asked twice at once) must not collide
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_png(image: Image.Image, path: Path) -> None:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise BenchmarkDataError(f"{path}: file not found (expected {what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BenchmarkDataError(f"{path}: not valid JSON ({e}); expected {what}") from None


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def show_progress(progress: bool) -> bool:
    return progress and sys.stderr.isatty()


# ---------------------------------------------------------------------------------------------
# Generation


@dataclass(frozen=True)
class Job:
    """One output file to produce: edit `image()` by `instruction` and save it at `out`."""

    out: Path
    instruction: str
    image: Callable[[], Image.Image]


@dataclass
class GenerateStats:
    jobs: int = 0  # jobs in this shard
    written: int = 0
    skipped: int = 0  # outputs that already existed


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    return i, n


def shard_chunks(n_jobs: int, batch_size: int, shard: tuple[int, int]) -> list[int]:
    """Indices of the chunks (of `batch_size` consecutive jobs) that shard (i, n) owns."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    i, n = check_shard(shard)
    return [c for c in range(math.ceil(n_jobs / batch_size)) if c % n == i]


def run_jobs(
    editor: Editor,
    jobs: Sequence[Job],
    *,
    batch_size: int = 8,
    shard: tuple[int, int] = (0, 1),
    seed: int = 0,
    progress: bool = True,
    desc: str = "edit",
) -> GenerateStats:
    """Edit the jobs of this shard into their output files (see the module docstring)."""
    chunks = shard_chunks(len(jobs), batch_size, shard)
    stats = GenerateStats(jobs=sum(len(jobs[c * batch_size:(c + 1) * batch_size]) for c in chunks))
    with tqdm(total=stats.jobs, desc=desc, unit="img", disable=not show_progress(progress)) as bar:
        for c in chunks:
            batch = jobs[c * batch_size:(c + 1) * batch_size]
            todo = [j for j in batch if not j.out.exists()]
            if todo:
                outputs = editor.edit([j.image() for j in batch], [j.instruction for j in batch], seed=seed + c)
                if len(outputs) != len(batch):
                    raise RuntimeError(f"editor returned {len(outputs)} images for a batch of {len(batch)}")
                for job, img in zip(batch, outputs):
                    if not job.out.exists():
                        atomic_save_png(img, job.out)
                        stats.written += 1
            stats.skipped += len(batch) - len(todo)
            bar.update(len(batch))
    return stats


# ---------------------------------------------------------------------------------------------
# Aggregation


SCORED, FAILED, MISSING = "scored", "failed", "missing"


@dataclass
class SampleScore:
    """One sample's outcome: `scored` (values hold its metrics), `failed` (the judge gave no usable
    reply; `error` says why) or `missing` (no output file)."""

    id: str
    task: str
    status: str
    values: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "task": self.task, "status": self.status, **self.values}
        if self.error:
            row["error"] = self.error
        row.update(self.extra)
        return row


def ordered_tasks(present: Iterable[str], canonical: Sequence[str] = ()) -> list[str]:
    present = set(present)
    return [t for t in canonical if t in present] + sorted(present - set(canonical))


def counts_by_task(samples: Sequence[SampleScore], tasks: Sequence[str]) -> dict[str, dict[str, int]]:
    out = {t: {"n": 0, SCORED: 0, FAILED: 0, MISSING: 0} for t in tasks}
    for s in samples:
        out[s.task]["n"] += 1
        out[s.task][s.status] += 1
    return out


def means_by_task(samples: Sequence[SampleScore], tasks: Sequence[str], metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per task, the mean of each metric over the samples that have it (tasks with none are left out)."""
    out: dict[str, dict[str, float]] = {}
    for t in tasks:
        row = {}
        for m in metrics:
            vals = [s.values[m] for s in samples if s.task == t and m in s.values]
            if vals:
                row[m] = sum(vals) / len(vals)
        if row:
            out[t] = row
    return out


def macro_mean(per_task: dict[str, dict[str, float]], metric: str) -> float | None:
    """Unweighted mean over tasks of the per-task means (the official GEdit/ImgEdit 'overall')."""
    vals = [row[metric] for row in per_task.values() if metric in row]
    return sum(vals) / len(vals) if vals else None


def micro_mean(samples: Sequence[SampleScore], metric: str) -> float | None:
    vals = [s.values[metric] for s in samples if metric in s.values]
    return sum(vals) / len(vals) if vals else None


def completeness(counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    n = sum(c["n"] for c in counts.values())
    scored = sum(c[SCORED] for c in counts.values())
    return {
        "complete": n > 0 and scored == n,
        "n": n,
        "scored": scored,
        "failed": sum(c[FAILED] for c in counts.values()),
        "missing": sum(c[MISSING] for c in counts.values()),
        "tasks_without_scores": sorted(t for t, c in counts.items() if c[SCORED] == 0),
    }


# ---------------------------------------------------------------------------------------------
# An outputs folder: which expected files are missing, which files are not expected

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
NAMED = 50  # how many missing / extra files results name (all are counted)


def extra_outputs(folder: Path, expected: Iterable[Path], patterns: Sequence[str],
                  ignore_suffixes: Sequence[str] = ()) -> list[str]:
    """Image files under `folder` matching the glob `patterns` that are not expected outputs (e.g. a
    `10.jpg` where `10.png` was expected, a key the benchmark does not have): paths relative to
    `folder`, sorted. Files ending in `ignore_suffixes` (e.g. GEdit's `_SRCIMG.png`) are ours."""
    folder = Path(folder)
    want = {Path(p).absolute() for p in expected}
    found = set()
    for pattern in patterns:
        for f in folder.glob(pattern):
            if (f.suffix.lower() in IMAGE_SUFFIXES and not f.name.endswith(tuple(ignore_suffixes))
                    and f.absolute() not in want and f.is_file()):
                found.add(f.relative_to(folder).as_posix())
    return sorted(found)


def outputs_meta(folder: Path, expected: dict[str, Path], extra: list[str]) -> dict[str, Any]:
    """What results say about the outputs folder: where it is, the missing files and the extra ones
    (counted; the first NAMED named)."""
    missing = [p.relative_to(folder).as_posix() for p in expected.values() if not p.exists()]
    return {"outputs": str(folder), "missing_outputs": missing[:NAMED], "extra": len(extra), "extra_outputs": extra[:NAMED]}


def aggregate_result(benchmark: str, subset: str, scores: list[SampleScore], meta: dict[str, Any],
                     canonical: Sequence[str], metrics: Sequence[str]) -> BenchmarkResult:
    """Per-task means and counts, reported metrics = unweighted means over tasks."""
    tasks = ordered_tasks((x.task for x in scores), canonical)
    per_task = means_by_task(scores, tasks, metrics)
    counts = counts_by_task(scores, tasks)
    reported = {m: v for m in metrics if (v := macro_mean(per_task, m)) is not None}
    return BenchmarkResult(benchmark=benchmark, subset=subset, metrics=reported, per_task=per_task, counts=counts,
                           meta={**meta, **completeness(counts), "n_tasks": len(tasks)})
