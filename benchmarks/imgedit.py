"""ImgEdit-Bench (PKU-YuanGroup/ImgEdit): the Basic suite and the UGE suite.

Basic. `basic_edit.json`: {key: {"id": "<folder>/<file>.jpg", "prompt": str, "edit_type": str}}
(737 items, 9 edit types), images under an image root (`id` is relative to it). Outputs:
`{out}/{model}/{key}.png` (the folder the official script reads). Scored two ways:
  - scorer `imgedit` (the paper's Table 5): the official GPT protocol, one prompt per edit type from
    `prompts.json` with `<edit_prompt>` filled, images [original, edited]; the judge rates three
    criteria 1-5 as `Name: <int>` lines. Per sample: the mean of the three, rounded to 2 decimals
    (as step1_get_avgscore.py does); per type: the mean; Score: the unweighted mean of the type means.
  - scorer `viescore` (Table 6): VIEScore "tie", aggregated as GEdit-Bench (per-type means, unweighted
    mean over types), the edited image resized to the original's size.

UGE (Understanding-Grounding-Editing). `UGE_edit.json`: {key: {"id": "<file>.jpg", "prompt": str}}
(47 items, no edit type), images flat under the image root. Outputs: `{out}/{model}/uge/{key}.png`
(a folder of its own: UGE keys 1..47 would clash with Basic keys). The judge prompt is the string
`prompt` inside the official `UGE_bench.py`; the reply holds one `Score: <int>` (1-5), which may share
its line with the reasoning (the official parser then finds nothing and drops the sample; we parse
it). Score: the mean over samples.

Unusable replies and missing outputs are counted per type and left out of the means (the official
scripts drop them silently).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from benchmarks.base import BenchmarkResult, Sample
from benchmarks.common import (
    FAILED, MISSING, SCORED, BenchmarkDataError, Job, SampleScore, aggregate_result, load_rgb, read_json,
    run_jobs, utc_now, write_jsonl,
)
from benchmarks.judges.base import JudgeRequest, build_runner, judge_meta, parse_criteria, parse_single_score
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

    def output_path(self, out_dir: Path, model_name: str, sample: Sample) -> Path:
        return Path(out_dir) / model_name / self.subfolder / f"{sample.meta['key']}.png"

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


class ImgEditBenchmark(_ImgEditBase):
    name = "imgedit"
    subfolder = ""
    json_name = "basic_edit.json"
    with_type = True
    public_counts = PUBLIC_COUNTS

    def score(self, out_dir: Path, *, model_name: str = "model", progress: bool = True) -> list[BenchmarkResult]:
        out_dir = Path(out_dir)
        samples = self.samples()
        runner = build_runner(self.cfg.judge, out_dir / ".judge_cache")
        outs = {s.id: self.output_path(out_dir, model_name, s) for s in samples}
        present = [s for s in samples if outs[s.id].exists()]
        if self.cfg.scorer == "imgedit":
            prompts = imgedit_prompts(self.cfg.prompts or None, sorted({s.task for s in samples}))
            results = self._score_imgedit(runner, prompts, present, outs, progress)
            metrics, subset = ["Score"], "basic"
            source, path = prompts.source, prompts.path
            aggregation = ("per sample mean of the 3 criteria (rounded to 2 decimals, as the official step 1); "
                           "per-type means; Score = unweighted mean over types")
        else:
            vprompts = viescore_prompts("tie", self.cfg.prompts or None)
            results = self._score_viescore(runner, vprompts, present, outs, progress)
            metrics, subset = ["SC", "PQ", "Overall"], "basic_viescore"
            source, path = vprompts.source, vprompts.path
            aggregation = "VIEScore tie per sample; per-type means; reported = unweighted mean over types"
        scores = []
        for s in samples:
            r = results.get(s.id)
            if r is None:
                scores.append(SampleScore(s.id, s.task, MISSING))
            elif r[0] is None:
                scores.append(SampleScore(s.id, s.task, FAILED, error=r[1]))
            else:
                scores.append(SampleScore(s.id, s.task, SCORED, r[0], extra=r[2]))
        write_jsonl(out_dir / model_name / f"imgedit_{subset}_samples.jsonl", (x.to_row() for x in scores))
        meta = {**self._base_meta(model_name), "subset": subset, "scorer": self.cfg.scorer, "prompts": source,
                "prompts_path": path, "aggregation": aggregation + "; missing/failed counted and excluded",
                "type_labels": TYPE_LABELS, **judge_meta(runner)}
        return [aggregate_result(self.name, subset, scores, meta, EDIT_TYPES, metrics)]

    def _score_imgedit(self, runner, prompts, present, outs, progress) -> dict[str, tuple]:
        parse = partial(parse_criteria, n_criteria=N_CRITERIA, lo=1, hi=5)

        def make(s: Sample) -> tuple[JudgeRequest, Any]:
            request = JudgeRequest(prompts.for_sample(s.task, s.instruction), (self.input_image(s), load_rgb(outs[s.id])))
            return request, parse

        verdicts = runner.run(present, make, progress=progress, desc="ImgEdit judge")
        out = {}
        for s, v in zip(present, verdicts):
            if v.ok:
                criteria = dict(v.value)
                out[s.id] = ({"Score": round(sum(c for _, c in v.value) / len(v.value), 2)}, None, {"criteria": criteria})
            else:
                out[s.id] = (None, v.error, {})
        return out

    def _score_viescore(self, runner, prompts, present, outs, progress) -> dict[str, tuple]:
        def load(s: Sample) -> tuple[list[Image.Image], Image.Image]:
            src = self.input_image(s)
            return [src], resize_to(load_rgb(outs[s.id]), src.size)

        items = [VIEItem(s.id, s.instruction, partial(load, s)) for s in present]
        return {o.id: (o.scores, o.error, {"sub_scores": o.sub_scores} if o.sub_scores else {})
                for o in score_items(runner, prompts, items, progress=progress, desc="ImgEdit VIEScore")}


class ImgEditUGEBenchmark(_ImgEditBase):
    name = "imgedit_uge"
    subfolder = "uge"
    json_name = "UGE_edit.json"
    with_type = False
    public_counts = PUBLIC_UGE_COUNTS

    def score(self, out_dir: Path, *, model_name: str = "model", progress: bool = True) -> list[BenchmarkResult]:
        out_dir = Path(out_dir)
        samples = self.samples()
        prompt = uge_prompt(self.cfg.prompts or None)
        runner = build_runner(self.cfg.judge, out_dir / ".judge_cache")
        outs = {s.id: self.output_path(out_dir, model_name, s) for s in samples}
        present = [s for s in samples if outs[s.id].exists()]
        parse = partial(parse_single_score, lo=1, hi=5)

        def make(s: Sample) -> tuple[JudgeRequest, Any]:
            return JudgeRequest(prompt.for_sample(s.instruction), (self.input_image(s), load_rgb(outs[s.id]))), parse

        verdicts = dict(zip((s.id for s in present), runner.run(present, make, progress=progress, desc="ImgEdit UGE judge")))
        scores = []
        for s in samples:
            v = verdicts.get(s.id)
            if v is None:
                scores.append(SampleScore(s.id, s.task, MISSING))
            elif not v.ok:
                scores.append(SampleScore(s.id, s.task, FAILED, error=v.error))
            else:
                scores.append(SampleScore(s.id, s.task, SCORED, {"Score": float(v.value)}))
        write_jsonl(out_dir / model_name / self.subfolder / "imgedit_uge_samples.jsonl", (x.to_row() for x in scores))
        meta = {**self._base_meta(model_name), "subset": "uge", "prompts": prompt.source, "prompts_path": prompt.path,
                "aggregation": "Score = mean over samples of the single 1-5 score; missing/failed counted and excluded",
                **judge_meta(runner)}
        return [aggregate_result(self.name, "uge", scores, meta, [UGE_TASK], ["Score"])]


BENCHMARKS.register("imgedit", Spec(config=ImgEditConfig, build=ImgEditBenchmark,
                                    help="ImgEdit-Bench Basic (ImgEdit GPT protocol or VIEScore)"))
BENCHMARKS.register("imgedit_uge", Spec(config=ImgEditUGEConfig, build=ImgEditUGEBenchmark,
                                        help="ImgEdit-Bench UGE suite"))
