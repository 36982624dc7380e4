"""GEdit-Bench (Step1X-Edit), scored with VIEScore exactly as its official scripts aggregate.

Data: the HF dataset `stepfun-ai/GEdit-Bench` from a local path: a folder saved with
`save_to_disk`, or its parquet (or arrow) files, a file or a folder searched recursively.
Columns: task_type, key, instruction, instruction_language (en|cn), input_image,
input_image_raw, Intersection_exist. 606 English samples in 11 task types.

Outputs: `{out}/{model}/fullset/{task_type}/{en|cn}/{key}.png` (the public layout; `{out}/{model}` is
the folder `harness.evaluate --outputs` takes), plus
`{key}_SRCIMG.png` (the judge's source image, as the official example writes it) so the same
folder can be scored by the official scripts too.

Score: per sample SC = min(SC sub-scores) and PQ = min(PQ sub-scores) from VIEScore "tie" prompts
(SC call: [input_image, edited resized to its size] + instruction; PQ call: the edited image),
O = sqrt(SC * PQ); per task the means; reported: the unweighted mean over tasks. Reported for the
full set and for the rows with Intersection_exist. Unlike the official scripts, a missing output
or an unusable judge reply is never dropped silently or replaced by a random score: it is counted
(`counts`, `meta.complete`) and left out of the means.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from benchmarks.base import BenchmarkResult, Sample
from benchmarks.common import (
    FAILED, MISSING, SCORED, BenchmarkDataError, Job, SampleScore, aggregate_result, atomic_save_png, extra_outputs,
    load_rgb, outputs_meta, run_jobs, shard_chunks, utc_now, write_jsonl,
)
from benchmarks.judges.base import build_runner, judge_meta, prompts_version
from benchmarks.judges.prompts import viescore_prompts
from benchmarks.judges.viescore import VIEItem, resize_to, score_items
from harness.config import nohash, poly
from harness.registry import BENCHMARKS, Spec
from methods.base import Editor

TASKS = [
    "background_change", "color_alter", "material_alter", "motion_change", "ps_human", "style_change",
    "subject-add", "subject-remove", "subject-replace", "text_change", "tone_transfer",
]
# Samples per task type of the public English set (606): a copy that differs is flagged in results.
PUBLIC_EN_COUNTS = {
    "background_change": 40, "color_alter": 40, "material_alter": 40, "motion_change": 40, "ps_human": 70,
    "style_change": 60, "subject-add": 60, "subject-remove": 57, "subject-replace": 60, "text_change": 99,
    "tone_transfer": 40,
}
META_COLUMNS = ["task_type", "key", "instruction", "instruction_language", "Intersection_exist"]
METRICS = ["SC", "PQ", "Overall"]


@dataclass
class GEditConfig:
    name: str = "gedit"
    # GEdit-Bench: a save_to_disk folder, or parquet/arrow file(s) (a file or a folder).
    path: str = ""
    language: Literal["en", "cn"] = "en"
    # fullset: edit every row, report the full set and the Intersection_exist rows; intersection: only those.
    subset: Literal["fullset", "intersection"] = "fullset"
    # What the editor sees (the official example edits input_image_raw); the judge always compares with input_image.
    input_column: Literal["input_image_raw", "input_image"] = "input_image_raw"
    # VIEScore's vie_prompts.py (or a folder holding it) for official numbers; '' = the harness's own prompts.
    prompts: str = ""
    judge: Any = poly("judge", "openai_api", model="gpt-4.1")
    limit: int = 0  # at most this many samples per task type (0 = all); results then say partial
    write_source_images: bool = nohash(True, help="also write {key}_SRCIMG.png for the official scorer")

    def validate(self) -> None:
        if not self.path:
            raise ValueError("gedit.path must point to GEdit-Bench (a save_to_disk folder or its parquet files)")
        if self.limit < 0:
            raise ValueError(f"gedit.limit must be >= 0, got {self.limit}")


def load_dataset_any(path: str | Path, required: Sequence[str]):
    """A `datasets.Dataset` from a save_to_disk folder (Dataset or DatasetDict with a 'train' split),
    or from parquet/arrow files (one file or a folder searched recursively)."""
    import datasets

    p = Path(path)
    if not p.exists():
        raise BenchmarkDataError(f"{p}: not found (expected GEdit-Bench: a save_to_disk folder or parquet files)")
    if p.is_dir() and any((p / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise BenchmarkDataError(f"{p}: dataset has splits {list(ds)}; expected 'train'")
            ds = ds["train"]
    else:
        files = [p] if p.is_file() else sorted(p.rglob("*.parquet")) or sorted(p.rglob("*.arrow"))
        if not files or files[0].suffix not in (".parquet", ".arrow"):
            raise BenchmarkDataError(f"{p}: expected a folder saved with save_to_disk (dataset_info.json) "
                                     "or .parquet/.arrow files")
        if files[0].suffix == ".parquet":
            ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
        else:
            ds = datasets.concatenate_datasets([datasets.Dataset.from_file(str(f)) for f in files])
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise BenchmarkDataError(f"{p}: missing columns {missing}; found {ds.column_names}")
    for col in ("input_image", "input_image_raw"):
        if col in ds.column_names and not isinstance(ds.features[col], datasets.Image):
            try:
                ds = ds.cast_column(col, datasets.Image())
            except (TypeError, ValueError) as e:
                raise BenchmarkDataError(f"{p}: column {col!r} is not an image column ({ds.features[col]}): {e}") from None
    return ds


class GEditBenchmark:
    name = "gedit"

    def __init__(self, cfg: GEditConfig):
        self.cfg = cfg
        self._ds = None
        self._columns: dict[str, Any] = {}  # one-column views: reading a row decodes only that image
        self._samples: list[Sample] | None = None
        self._lock = threading.Lock()

    # ---- data

    @property
    def dataset(self):
        if self._ds is None:
            self._ds = load_dataset_any(self.cfg.path, META_COLUMNS + ["input_image"])
            if self.cfg.input_column not in self._ds.column_names:
                raise BenchmarkDataError(f"{self.cfg.path}: no column {self.cfg.input_column!r} "
                                         f"(gedit.input_column); found {self._ds.column_names}")
        return self._ds

    def samples(self) -> list[Sample]:
        """The rows of the configured language (and subset), in dataset order, `limit` per task."""
        if self._samples is None:
            rows = self.dataset.select_columns(META_COLUMNS).to_list()
            taken: dict[str, int] = {}
            out = []
            for i, r in enumerate(rows):
                if r["instruction_language"] != self.cfg.language:
                    continue
                inter = bool(r["Intersection_exist"])
                if self.cfg.subset == "intersection" and not inter:
                    continue
                task = r["task_type"]
                if self.cfg.limit and taken.get(task, 0) >= self.cfg.limit:
                    continue
                taken[task] = taken.get(task, 0) + 1
                out.append(Sample(id=f"{task}/{self.cfg.language}/{r['key']}", image=None, instruction=r["instruction"],
                                  task=task, meta={"key": r["key"], "row": i, "intersection": inter}))
            if not out:
                raise BenchmarkDataError(f"{self.cfg.path}: no rows with instruction_language == {self.cfg.language!r}")
            self._samples = out
        return self._samples

    def _image(self, sample: Sample, column: str) -> Image.Image:
        with self._lock:  # one arrow reader for all judge threads
            if column not in self._columns:
                self._columns[column] = self.dataset.select_columns([column])
            img = self._columns[column][sample.meta["row"]][column]
        return img.convert("RGB")

    def input_image(self, sample: Sample) -> Image.Image:
        return self._image(sample, self.cfg.input_column)

    def source_image(self, sample: Sample) -> Image.Image:
        return self._image(sample, "input_image")

    def output_path(self, out_dir: Path, model_name: str, sample: Sample, suffix: str = "") -> Path:
        return self.output_file(self.outputs_folder(out_dir, model_name), sample, suffix)

    # ---- the outputs folder: the model's folder, holding fullset/{task_type}/{language}/{key}.png

    @staticmethod
    def outputs_folder(out_dir: Path, model_name: str) -> Path:
        return Path(out_dir) / model_name

    def output_file(self, folder: Path, sample: Sample, suffix: str = "") -> Path:
        return Path(folder) / "fullset" / sample.task / self.cfg.language / f"{sample.meta['key']}{suffix}.png"

    def expected_outputs(self, folder: Path) -> dict[str, Path]:
        return {s.id: self.output_file(folder, s) for s in self.samples()}

    def generation_config(self) -> dict[str, Any]:
        """The settings that decide the generated files (not the judge's): a key for an output folder."""
        return {"name": self.name, "path": self.cfg.path, "language": self.cfg.language, "input_column": self.cfg.input_column}

    def matches_public_counts(self) -> bool | None:
        """Whether the English full set has the public per-task counts (None when that cannot be said)."""
        if self.cfg.language != "en" or self.cfg.subset != "fullset" or self.cfg.limit:
            return None
        found: dict[str, int] = {}
        for s in self.samples():
            found[s.task] = found.get(s.task, 0) + 1
        return found == PUBLIC_EN_COUNTS

    # ---- generation

    def generate(self, editor: Editor, out_dir: Path, *, model_name: str = "model", batch_size: int = 8,
                 shard: tuple[int, int] = (0, 1), progress: bool = True, seed: int = 0) -> None:
        samples = self.samples()
        jobs = [Job(self.output_path(out_dir, model_name, s), s.instruction, partial(self.input_image, s)) for s in samples]
        run_jobs(editor, jobs, batch_size=batch_size, shard=shard, seed=seed, progress=progress, desc="GEdit-Bench")
        if self.cfg.write_source_images:
            for c in shard_chunks(len(samples), batch_size, shard):
                for s in samples[c * batch_size:(c + 1) * batch_size]:
                    src = self.output_path(out_dir, model_name, s, "_SRCIMG")
                    if not src.exists():
                        atomic_save_png(self.source_image(s), src)

    # ---- scoring

    def _pair(self, sample: Sample, out: Path) -> tuple[list[Image.Image], Image.Image]:
        src = self.source_image(sample)
        return [src], resize_to(load_rgb(out), src.size)

    def score(self, out_dir: Path, *, model_name: str = "model", progress: bool = True) -> list[BenchmarkResult]:
        """Score a run's outputs (judge cache in out_dir/.judge_cache, per-sample rows beside the outputs)."""
        folder = self.outputs_folder(out_dir, model_name)
        return self.score_folder(folder, cache_dir=Path(out_dir) / ".judge_cache", report_dir=folder,
                                 model_name=model_name, progress=progress)

    def score_folder(self, folder: Path, *, cache_dir: Path, report_dir: Path, model_name: str = "model",
                     progress: bool = True) -> list[BenchmarkResult]:
        folder, report_dir = Path(folder), Path(report_dir)
        samples = self.samples()
        prompts = viescore_prompts("tie", self.cfg.prompts or None)
        runner = build_runner(self.cfg.judge, cache_dir)
        outs = self.expected_outputs(folder)
        present = [s for s in samples if outs[s.id].exists()]
        items = [VIEItem(s.id, s.instruction, partial(self._pair, s, outs[s.id])) for s in present]
        outcomes = {o.id: o for o in score_items(runner, prompts, items, progress=progress, desc="GEdit-Bench judge")}

        scores = []
        for s in samples:
            extra = {"intersection": s.meta["intersection"]}
            o = outcomes.get(s.id)
            if o is None:
                extra["expected"] = outs[s.id].relative_to(folder).as_posix()
                scores.append(SampleScore(s.id, s.task, MISSING, extra=extra))
            elif o.scores is None:
                scores.append(SampleScore(s.id, s.task, FAILED, error=o.error, extra=extra))
            else:
                scores.append(SampleScore(s.id, s.task, SCORED, dict(o.scores), extra={**extra, "sub_scores": o.sub_scores}))
        write_jsonl(report_dir / f"gedit_{self.cfg.language}_samples.jsonl", (x.to_row() for x in scores))

        extra_files = extra_outputs(folder, outs.values(), [f"fullset/*/{self.cfg.language}/*"], ["_SRCIMG.png"])
        meta = {
            "language": self.cfg.language,
            "dataset": str(self.cfg.path),
            "model_name": model_name,
            "date": utc_now(),
            "prompts": prompts.source,
            "prompts_path": prompts.path,
            "prompts_version": prompts_version(prompts.sc, prompts.pq),
            "limit": self.cfg.limit,
            "input_column": self.cfg.input_column,
            "matches_public_counts": self.matches_public_counts(),
            "aggregation": "per sample SC=min, PQ=min, O=sqrt(SC*PQ); per-task means; reported = unweighted "
                           "mean over tasks; missing outputs and failed judge replies are counted and excluded",
            **outputs_meta(folder, outs, extra_files),
            **judge_meta(runner),
        }
        subsets = ["fullset", "intersection"] if self.cfg.subset == "fullset" else ["intersection"]
        results = []
        for subset in subsets:
            chosen = scores if subset == "fullset" else [x for x in scores if x.extra["intersection"]]
            results.append(aggregate_result("gedit", subset, chosen, {**meta, "subset": subset}, TASKS, METRICS))
        return results


BENCHMARKS.register("gedit", Spec(config=GEditConfig, build=GEditBenchmark,
                                  help="GEdit-Bench (EN by default), VIEScore SC/PQ/Overall"))
