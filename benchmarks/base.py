"""The interface of a benchmark, and the result every benchmark returns."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from methods.base import Editor


@dataclass
class Sample:
    id: str
    image: Image.Image | None  # the input (reference) image; None if loaded lazily
    instruction: str
    task: str  # edit type / task type as the benchmark names it
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkResult:
    """Scores of one benchmark subset. `metrics` are the reported numbers (e.g. the unweighted mean
    over tasks); `per_task` the same metrics per task; `counts` per task: n, scored, failed, missing."""

    benchmark: str
    subset: str = "all"
    metrics: dict[str, float] = field(default_factory=dict)
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # judge model, date, language, official/unofficial prompts...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchmarkResult":
        return cls(**d)


@runtime_checkable
class Benchmark(Protocol):
    name: str

    def samples(self) -> list[Sample]: ...

    def generate(
        self,
        editor: Editor,
        out_dir: Path,
        *,
        model_name: str = "model",
        batch_size: int = 8,
        shard: tuple[int, int] = (0, 1),
        progress: bool = True,
        seed: int = 0,
    ) -> None:
        """Edit every sample (of this shard) into out_dir in the public layout; skip outputs that exist.
        `seed` fixes the editor's noise, so a resumed or sharded generation equals a single one."""
        ...

    def score(self, out_dir: Path, *, model_name: str = "model") -> list[BenchmarkResult]:
        """Score the outputs in out_dir exactly as the public evaluation code aggregates them."""
        ...
