"""ImgEdit-Bench (PKU-YuanGroup/ImgEdit): the Basic suite and the UGE suite.

Basic. `basic_edit.json`: {key: {"id": "<folder>/<file>.jpg", "prompt": str, "edit_type": str}}
(737 items, 9 edit types), images under an image root (`id` is relative to it). Outputs: a folder
of `{key}.png` (the folder the official basic_bench.py reads; in a run `{out}/{model}/`). Scored two ways:
  - scorer `imgedit` (the paper's Table 5): the official GPT protocol, one prompt per edit type from
    `prompts.json` with `<edit_prompt>` filled, images [original, edited]; the judge rates three
    criteria 1-5 as `Name: <int>` lines. Scores follow the official scripts exactly (the rules below,
    each marked with its file): per sample step 1, per type step 2; Score: the unweighted mean of the
    per-type scores (the paper's "Overall"; the official scripts stop at the per-type scores).
  - scorer `viescore` (Table 6): VIEScore "tie", aggregated as GEdit-Bench (per-type means, unweighted
    mean over types), the edited image resized to the original's size.

UGE (Understanding-Grounding-Editing). `UGE_edit.json`: {key: {"id": "<file>.jpg", "prompt": str}}
(47 items, no edit type), images flat under the image root. Outputs: a folder of `{key}.png` (in a
run `{out}/{model}/uge/`: UGE keys 1..47 would clash with Basic keys). The judge prompt is the string
`prompt` inside the official `UGE_bench.py`. Scores follow the official get_average_score.py: its
per-reply rule is step 1's (so a `Score: 2` that shares its line with the reasoning counts nothing and
the sample is dropped, as there), and the Score is the mean over samples rounded to 2 decimals.

Where the official scripts drop a sample silently (no output file, no usable reply, a failed call),
we count it per type (`counts`, `meta.complete`) and leave it out of the means, as they do. With
`judge.passes: N` (not an official option) a sample's step-1 value is the mean of its N replies' values.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from benchmarks.base import BenchmarkResult, Sample
from benchmarks.common import (
    FAILED, MISSING, NAMED, SCORED, BenchmarkDataError, Job, SampleScore, aggregate_result, completeness,
    counts_by_task, extra_outputs, load_rgb, ordered_tasks, outputs_meta, read_json, run_jobs, utc_now, write_jsonl,
)
from benchmarks.judges.base import JudgeRequest, ReplyParseError, build_runner, judge_meta, prompts_version
from benchmarks.judges.prompts import imgedit_prompts, uge_prompt, viescore_prompts
from benchmarks.judges.viescore import VIEItem, resize_to, score_items
from harness.config import poly
from harness.registry import BENCHMARKS, Spec
from methods.base import Editor

# Edit types in the order of the paper's Table 5; "compose" is called Hybrid in tables.
EDIT_TYPES = ["action", "background", "style", "adjust", "replace", "add", "extract", "remove", "compose"]
TYPE_LABELS = {"action": "Action", "background": "Bg", "style": "Style", "adjust": "Adjust", "replace": "Replace",
               "add": "Add", "extract": "Extract", "remove": "Remove", "compose": "Hybrid"}
# Items per edit type of the public Basic suite (737) and the UGE suite's size: a copy that differs is flagged.
PUBLIC_COUNTS = {"extract": 117, "style": 100, "add": 95, "adjust": 94, "background": 94, "replace": 92,
                 "remove": 86, "action": 36, "compose": 23}
PUBLIC_UGE_COUNTS = {"uge": 47}
N_CRITERIA = 3
UGE_TASK = "uge"


# ---------------------------------------------------------------------------------------------
# The official scoring rules of PKU-YuanGroup/ImgEdit (read there; written here), each with its file.


def official_line_scores(reply: str) -> list[tuple[str, int]]:
    """Benchmark/Basic/step1_get_avgscore.py, `extract_scores_and_average` (Benchmark/UGE/get_average_score.py
    has the same function): a line counts when, stripped and split at ': ', it gives exactly two parts
    and the second is all digits (`str.isdigit`); its integer is a score. So any number of lines may
    count, with any integer, whatever the name ("Brief reasoning: 5" counts too), and a line whose value
    is "4/5", "4.", "**4**", "4 (Good)", or that has a second ': ', counts nothing."""
    found = []
    for line in reply.splitlines():
        parts = line.strip().split(": ")
        if len(parts) == 2 and parts[1].isdigit():
            try:
                found.append((parts[0], int(parts[1])))
            except ValueError:  # digits int() cannot read (e.g. '²'): the official script stops with an error there
                pass
    return found


def official_sample_score(reply: str) -> float:
    """step1_get_avgscore.py (and UGE/get_average_score.py), `extract_scores_and_average`: the mean of
    the counted lines rounded to 2 decimals; a reply with none is dropped (`None` there, a failure here)."""
    scores = [v for _, v in official_line_scores(reply)]
    if not scores:
        raise ReplyParseError("no line 'Name: <integer>' (the official step1_get_avgscore.py rule counts nothing)")
    return round(sum(scores) / len(scores), 2)


def official_type_score(sample_scores: list[float]) -> float:
    """Benchmark/Basic/step2_typescore.py, `compute_edit_type_averages`: the mean of a type's step-1
    values (in basic_edit.json's order) rounded to 2 decimals."""
    return round(sum(sample_scores) / len(sample_scores), 2)


def official_uge_score(sample_scores: list[float]) -> float:
    """Benchmark/UGE/get_average_score.py, `compute_final_average`: the mean of the step-1 values rounded to 2 decimals."""
    return round(sum(sample_scores) / len(sample_scores), 2)


def off_protocol(criteria: list[tuple[str, int]], n_expected: int) -> bool:
    """A reply the official rule scores although it is not the `n_expected` 1-5 scores the prompt asks for."""
    return len(criteria) != n_expected or any(not 1 <= v <= 5 for _, v in criteria)


@dataclass
class ImgEditConfig:
    name: str = "imgedit"
    path: str = ""  # basic_edit.json, or the folder that holds it
    image_root: str = ""  # the folder the items' "id" paths are relative to; '' = the json's folder
    # imgedit: ImgEdit's own GPT protocol (paper Table 5); viescore: VIEScore tie (paper Table 6).
    scorer: Literal["imgedit", "viescore"] = "imgedit"
    # Official prompts for official numbers: prompts.json (scorer imgedit) or VIEScore's vie_prompts.py
    # (scorer viescore); '' = the harness's own prompts (results say prompts: unofficial).
    prompts: str = ""
    judge: Any = poly("judge", "openai_api", model="gpt-4o", image_format="png")
    limit: int = 0  # at most this many samples per edit type (0 = all)

    def validate(self) -> None:
        if not self.path:
            raise ValueError("imgedit.path must point to basic_edit.json (or its folder)")
        if self.limit < 0:
            raise ValueError(f"imgedit.limit must be >= 0, got {self.limit}")


@dataclass
class ImgEditUGEConfig:
    name: str = "imgedit_uge"
    path: str = ""  # UGE_edit.json, or the folder that holds it
    image_root: str = ""  # '' = the json's folder
    prompts: str = ""  # ImgEdit's UGE_bench.py (or its folder) for the official prompt; '' = the harness's own
    judge: Any = poly("judge", "openai_api", model="gpt-4o", image_format="png")
    limit: int = 0  # at most this many samples (0 = all)

    def validate(self) -> None:
        if not self.path:
            raise ValueError("imgedit_uge.path must point to UGE_edit.json (or its folder)")
        if self.limit < 0:
            raise ValueError(f"imgedit_uge.limit must be >= 0, got {self.limit}")


def load_edit_json(path: str | Path, default_name: str, image_root: str, with_type: bool) -> tuple[Path, list[Sample]]:
    p = Path(path)
    file = p / default_name if p.is_dir() else p
    fields = '"id", "prompt", "edit_type"' if with_type else '"id", "prompt"'
    what = f"{{key: {{{fields}}}}} (ImgEdit's {default_name})"
    data = read_json(file, what)
    if not isinstance(data, dict) or not data:
        raise BenchmarkDataError(f"{file}: expected a non-empty JSON object {what}")
    root = Path(image_root) if image_root else file.parent
    samples, missing = [], []
    for key, item in data.items():
        need = ("id", "prompt", "edit_type") if with_type else ("id", "prompt")
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in need):
            raise BenchmarkDataError(f"{file}: item {key!r} must be an object with string fields {', '.join(need)}; got {item!r}")
        src = root / item["id"]
        if not src.is_file():
            missing.append(str(src))
        task = item["edit_type"] if with_type else UGE_TASK
        samples.append(Sample(id=str(key), image=None, instruction=item["prompt"], task=task,
                              meta={"key": str(key), "source": str(src)}))
    if missing:
        raise BenchmarkDataError(f"{file}: {len(missing)} source images not found under the image root {root} "
                                 f"(set image_root), e.g. {missing[:3]}")
    return file, samples


def _limit(samples: list[Sample], limit: int) -> list[Sample]:
    if not limit:
        return samples
    taken: dict[str, int] = {}
    out = []
    for s in samples:
        if taken.get(s.task, 0) < limit:
            taken[s.task] = taken.get(s.task, 0) + 1
            out.append(s)
    return out


class _ImgEditBase:
    cfg: Any
    name: str
    subfolder: str
    json_name: str
    with_type: bool
    public_counts: dict[str, int]

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self._samples: list[Sample] | None = None
        self._file: Path | None = None

    def samples(self) -> list[Sample]:
        if self._samples is None:
            self._file, samples = load_edit_json(self.cfg.path, self.json_name, self.cfg.image_root, self.with_type)
            self._samples = _limit(samples, self.cfg.limit)
        return self._samples

    # ---- the outputs folder: {key}.png, flat (the official layout)

    def outputs_folder(self, out_dir: Path, model_name: str) -> Path:
        """Where a run's outputs of this benchmark are: the folder in the public layout."""
        return Path(out_dir) / model_name / self.subfolder if self.subfolder else Path(out_dir) / model_name

    def expected_outputs(self, folder: Path) -> dict[str, Path]:
        return {s.id: Path(folder) / f"{s.meta['key']}.png" for s in self.samples()}

    def output_path(self, out_dir: Path, model_name: str, sample: Sample) -> Path:
        return self.outputs_folder(out_dir, model_name) / f"{sample.meta['key']}.png"

    @staticmethod
    def input_image(sample: Sample) -> Image.Image:
        return load_rgb(Path(sample.meta["source"]))

    def generate(self, editor: Editor, out_dir: Path, *, model_name: str = "model", batch_size: int = 8,
                 shard: tuple[int, int] = (0, 1), progress: bool = True, seed: int = 0) -> None:
        jobs = [Job(self.output_path(out_dir, model_name, s), s.instruction, partial(self.input_image, s))
                for s in self.samples()]
        run_jobs(editor, jobs, batch_size=batch_size, shard=shard, seed=seed, progress=progress, desc=self.name)

    def generation_config(self) -> dict[str, Any]:
        """The settings that decide the generated files (not the judge's): a key for an output folder."""
        return {"name": self.name, "path": self.cfg.path, "image_root": self.cfg.image_root}

    def matches_public_counts(self) -> bool | None:
        if self.cfg.limit:
            return None
        found: dict[str, int] = {}
        for s in self.samples():
            found[s.task] = found.get(s.task, 0) + 1
        return found == self.public_counts

    def _base_meta(self, model_name: str) -> dict[str, Any]:
        self.samples()
        return {"dataset": str(self._file), "model_name": model_name, "date": utc_now(), "limit": self.cfg.limit,
                "matches_public_counts": self.matches_public_counts()}

    def score(self, out_dir: Path, *, model_name: str = "model", progress: bool = True) -> list[BenchmarkResult]:
        """Score a run's outputs (judge cache in out_dir/.judge_cache, per-sample rows beside the outputs)."""
        folder = self.outputs_folder(out_dir, model_name)
        return self.score_folder(folder, cache_dir=Path(out_dir) / ".judge_cache", report_dir=folder,
                                 model_name=model_name, progress=progress)

    def score_folder(self, folder: Path, *, cache_dir: Path, report_dir: Path, model_name: str = "model",
                     progress: bool = True) -> list[BenchmarkResult]:
        raise NotImplementedError

    def _judge_official(self, runner, prompt_for, present: list[Sample], outputs: dict[str, Path], progress: bool,
                        desc: str, n_expected: int) -> dict[str, tuple]:
        """Ask the judge about every present output; per sample (step-1 value, error, row extras)."""
        def make(s: Sample) -> tuple[JudgeRequest, Any]:
            return JudgeRequest(prompt_for(s), (self.input_image(s), load_rgb(outputs[s.id]))), official_sample_score

        out = {}
        for s, v in zip(present, runner.run(present, make, progress=progress, desc=desc)):
            criteria = [official_line_scores(r or "") for r in (v.replies or [v.reply])]
            extra = {"criteria": [[n, c] for n, c in criteria[0]]} if criteria and criteria[0] else {}
            if len(criteria) > 1:
                extra["criteria_per_pass"] = [[[n, c] for n, c in cs] for cs in criteria]
            if v.ok:
                extra["off_protocol"] = any(off_protocol(cs, n_expected) for cs in criteria)
            out[s.id] = (v.value if v.ok else None, v.error, extra)
        return out

    def _rows(self, samples: list[Sample], judged: dict[str, tuple], folder: Path,
              expected: dict[str, Path]) -> list[SampleScore]:
        rows = []
        for s in samples:
            r = judged.get(s.id)
            if r is None:
                rows.append(SampleScore(s.id, s.task, MISSING, extra={"expected": expected[s.id].relative_to(folder).as_posix()}))
            elif r[0] is None:
                rows.append(SampleScore(s.id, s.task, FAILED, error=r[1], extra=r[2]))
            else:
                rows.append(SampleScore(s.id, s.task, SCORED, {"Score": r[0]}, extra=r[2]))
        return rows


def _off_protocol_meta(rows: list[SampleScore]) -> dict[str, Any]:
    ids = [r.id for r in rows if r.extra.get("off_protocol")]
    return {"off_protocol_replies": len(ids), "off_protocol_ids": ids[:NAMED]}


class ImgEditBenchmark(_ImgEditBase):
    name = "imgedit"
    subfolder = ""
    json_name = "basic_edit.json"
    with_type = True
    public_counts = PUBLIC_COUNTS

    def score_folder(self, folder: Path, *, cache_dir: Path, report_dir: Path, model_name: str = "model",
                     progress: bool = True) -> list[BenchmarkResult]:
        folder, report_dir = Path(folder), Path(report_dir)
        samples = self.samples()
        runner = build_runner(self.cfg.judge, cache_dir)
        outs = self.expected_outputs(folder)
        present = [s for s in samples if outs[s.id].exists()]
        extra = extra_outputs(folder, outs.values(), ["*"])
        if self.cfg.scorer == "imgedit":
            prompts = imgedit_prompts(self.cfg.prompts or None, sorted({s.task for s in samples}))
            judged = self._judge_official(runner, lambda s: prompts.for_sample(s.task, s.instruction), present, outs,
                                          progress, "ImgEdit judge", N_CRITERIA)
            rows = self._rows(samples, judged, folder, outs)
            version = prompts_version(*(prompts.by_type[t] for t in sorted(prompts.by_type)))
            meta = {"prompts": prompts.source, "prompts_path": prompts.path, "prompts_version": version,
                    "aggregation": "official ImgEdit: per sample step1_get_avgscore.py (mean of the 'Name: <int>' "
                                   "lines, rounded to 2 decimals), per type step2_typescore.py (mean, rounded to 2 "
                                   "decimals); Score = unweighted mean of the per-type scores; missing/failed counted "
                                   "and excluded", **_off_protocol_meta(rows)}
            result = self._aggregate_official(rows, "basic", meta)
        else:
            vprompts = viescore_prompts("tie", self.cfg.prompts or None)
            judged = self._score_viescore(runner, vprompts, present, outs, progress)
            rows = self._rows_viescore(samples, judged, folder, outs)
            meta = {"prompts": vprompts.source, "prompts_path": vprompts.path,
                    "prompts_version": prompts_version(vprompts.sc, vprompts.pq),
                    "aggregation": "VIEScore tie per sample; per-type means; reported = unweighted mean over types; "
                                   "missing/failed counted and excluded"}
            result = aggregate_result(self.name, "basic_viescore", rows, meta, EDIT_TYPES, ["SC", "PQ", "Overall"])
        write_jsonl(report_dir / f"imgedit_{result.subset}_samples.jsonl", (x.to_row() for x in rows))
        result.meta.update({**self._base_meta(model_name), "subset": result.subset, "scorer": self.cfg.scorer,
                            "type_labels": TYPE_LABELS, **outputs_meta(folder, outs, extra), **judge_meta(runner)})
        return [result]

    def _aggregate_official(self, rows: list[SampleScore], subset: str, meta: dict[str, Any]) -> BenchmarkResult:
        tasks = ordered_tasks((x.task for x in rows), EDIT_TYPES)
        per_task = {}
        for t in tasks:
            vals = [x.values["Score"] for x in rows if x.task == t and x.status == SCORED]
            if vals:
                per_task[t] = {"Score": official_type_score(vals)}
        counts = counts_by_task(rows, tasks)
        metrics = {"Score": sum(r["Score"] for r in per_task.values()) / len(per_task)} if per_task else {}
        return BenchmarkResult(benchmark=self.name, subset=subset, metrics=metrics, per_task=per_task, counts=counts,
                               meta={**meta, **completeness(counts), "n_tasks": len(tasks)})

    def _score_viescore(self, runner, prompts, present, outs, progress) -> dict[str, tuple]:
        def load(s: Sample) -> tuple[list[Image.Image], Image.Image]:
            src = self.input_image(s)
            return [src], resize_to(load_rgb(outs[s.id]), src.size)

        items = [VIEItem(s.id, s.instruction, partial(load, s)) for s in present]
        return {o.id: (o.scores, o.error, {"sub_scores": o.sub_scores} if o.sub_scores else {})
                for o in score_items(runner, prompts, items, progress=progress, desc="ImgEdit VIEScore")}

    def _rows_viescore(self, samples, judged, folder, outs) -> list[SampleScore]:
        rows = []
        for s in samples:
            r = judged.get(s.id)
            if r is None:
                rows.append(SampleScore(s.id, s.task, MISSING, extra={"expected": outs[s.id].relative_to(folder).as_posix()}))
            elif r[0] is None:
                rows.append(SampleScore(s.id, s.task, FAILED, error=r[1]))
            else:
                rows.append(SampleScore(s.id, s.task, SCORED, r[0], extra=r[2]))
        return rows


class ImgEditUGEBenchmark(_ImgEditBase):
    name = "imgedit_uge"
    subfolder = "uge"
    json_name = "UGE_edit.json"
    with_type = False
    public_counts = PUBLIC_UGE_COUNTS

    def score_folder(self, folder: Path, *, cache_dir: Path, report_dir: Path, model_name: str = "model",
                     progress: bool = True) -> list[BenchmarkResult]:
        folder, report_dir = Path(folder), Path(report_dir)
        samples = self.samples()
        prompt = uge_prompt(self.cfg.prompts or None)
        runner = build_runner(self.cfg.judge, cache_dir)
        outs = self.expected_outputs(folder)
        present = [s for s in samples if outs[s.id].exists()]
        judged = self._judge_official(runner, lambda s: prompt.for_sample(s.instruction), present, outs, progress,
                                      "ImgEdit UGE judge", 1)
        rows = self._rows(samples, judged, folder, outs)
        write_jsonl(report_dir / "imgedit_uge_samples.jsonl", (x.to_row() for x in rows))
        counts = counts_by_task(rows, [UGE_TASK])
        vals = [x.values["Score"] for x in rows if x.status == SCORED]
        metrics = {"Score": official_uge_score(vals)} if vals else {}
        meta = {**self._base_meta(model_name), "subset": "uge", "prompts": prompt.source, "prompts_path": prompt.path,
                "prompts_version": prompts_version(prompt.text),
                "aggregation": "official ImgEdit UGE get_average_score.py: per sample the mean of the 'Name: <int>' "
                               "lines rounded to 2 decimals; Score = the mean over samples rounded to 2 decimals; "
                               "missing/failed counted and excluded",
                **_off_protocol_meta(rows), **completeness(counts), "n_tasks": 1,
                **outputs_meta(folder, outs, extra_outputs(folder, outs.values(), ["*"])), **judge_meta(runner)}
        return [BenchmarkResult(benchmark=self.name, subset="uge", metrics=metrics,
                                per_task={UGE_TASK: dict(metrics)} if metrics else {}, counts=counts, meta=meta)]


BENCHMARKS.register("imgedit", Spec(config=ImgEditConfig, build=ImgEditBenchmark,
                                    help="ImgEdit-Bench Basic (ImgEdit GPT protocol or VIEScore)"))
BENCHMARKS.register("imgedit_uge", Spec(config=ImgEditUGEConfig, build=ImgEditUGEBenchmark,
                                        help="ImgEdit-Bench UGE suite"))
