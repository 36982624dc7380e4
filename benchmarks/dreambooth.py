"""DreamBooth (google/dreambooth) as a customization benchmark for an editor.

Data: `dataset/<subject>/*.jpg` and `dataset/prompts_and_classes.txt` (the subject -> class table,
then the object and the live-subject prompt lists, as Python `'...'.format(unique_token, class_token)`
lines, read with `ast`, never executed). 30 subjects (9 live: cats and dogs), 25 prompts each.

Generation: the editor gets one real image of the subject (`reference_image`, by sorted file name)
and the paper's customization instruction (`instruction_template`, default: "Generate the main
object shown in the first image in a different setting and pose: {prompt}"), where {prompt} is the
DreamBooth prompt with the unique token set to `unique_token` ('' = just the class noun, e.g.
"a backpack in the jungle"). `images_per_prompt` (4) images per prompt ->
`{out}/{model}/{subject}/{prompt_index:02d}_{k}.png`.

Metrics, per generated image then averaged over all images (and per subject):
  - VIEScore "sdig": SC call [reference image, generated] + the class-noun prompt; PQ: the generated
    image; SC = min, PQ = min, Overall = sqrt(SC * PQ).
  - DINO: cosine of DINO ViT-S/16 CLS embeddings, generated vs each real image of the subject, averaged.
  - CLIP-I: the same with CLIP image embeddings. CLIP-T: cosine of the generated image and the prompt
    with the unique token replaced by the class noun.
MDINO (background-masked DINO) and TIFA are not implemented: their exact recipes are not public.
DINO/CLIP are computed for every existing output; SC/PQ/Overall for those the judge scored
(`failed` counts judge failures, `missing` absent outputs).
"""
from __future__ import annotations

import ast
import string
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from benchmarks.base import BenchmarkResult, Sample
from benchmarks.common import (
    FAILED, MISSING, SCORED, BenchmarkDataError, Job, SampleScore, completeness, counts_by_task, extra_outputs,
    load_rgb, means_by_task, micro_mean, ordered_tasks, outputs_meta, run_jobs, utc_now, write_jsonl,
)
from benchmarks.judges.base import build_runner, judge_meta, prompts_version
from benchmarks.judges.prompts import viescore_prompts
from benchmarks.judges.viescore import VIEItem, score_items
from benchmarks.metrics.clip import ClipConfig
from benchmarks.metrics.dino import DinoConfig
from harness.config import nohash, poly
from harness.registry import BENCHMARKS, Spec
from methods.base import Editor

LIVE_SUBJECTS = ["cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"]
DEFAULT_TEMPLATE = "Generate the main object shown in the first image in a different setting and pose: {prompt}"
ALL_METRICS = ["viescore", "dino", "clip_i", "clip_t"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
PROMPTS_FILE = "prompts_and_classes.txt"
PUBLIC_SUBJECTS, PUBLIC_PROMPTS = 30, 25  # a copy that differs is flagged in results


@dataclass
class DreamBoothConfig:
    name: str = "dreambooth"
    path: str = ""  # DreamBooth's dataset/ folder: <subject>/*.jpg and prompts_and_classes.txt
    # The editor's instruction; {prompt} is the DreamBooth prompt (paper, Appendix E.2).
    instruction_template: str = DEFAULT_TEMPLATE
    unique_token: str = ""  # the identifier written into the editor's prompt ('' = the class noun alone)
    reference_image: int = 0  # which subject image (sorted by name) the editor and the judge see
    images_per_prompt: int = 4
    subjects: list[str] = field(default_factory=list)  # [] = all
    limit: int = 0  # at most this many prompts per subject (0 = all 25)
    live_subjects: list[str] = field(default_factory=lambda: list(LIVE_SUBJECTS))
    metrics: list[Literal["viescore", "dino", "clip_i", "clip_t"]] = field(default_factory=lambda: list(ALL_METRICS))
    prompts: str = ""  # VIEScore's vie_prompts.py (or its folder) for official prompts; '' = the harness's own
    judge: Any = poly("judge", "openai_api", model="gpt-4.1")  # null = no VIEScore
    dino: DinoConfig = field(default_factory=DinoConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    device: str = nohash("auto", help="device of the DINO/CLIP backbones")

    def validate(self) -> None:
        if not self.path:
            raise ValueError("dreambooth.path must point to DreamBooth's dataset/ folder")
        try:
            self.instruction_template.format(prompt="x")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"dreambooth.instruction_template must use only the field {{prompt}}: {e}") from None
        if "{prompt}" not in self.instruction_template:
            raise ValueError("dreambooth.instruction_template must contain {prompt}")
        if self.images_per_prompt < 1 or self.limit < 0 or self.reference_image < 0:
            raise ValueError("dreambooth: images_per_prompt must be >= 1, limit and reference_image >= 0")
        if "viescore" in self.metrics and self.judge is None:
            raise ValueError("dreambooth.metrics has 'viescore' but judge is null")


@dataclass(frozen=True)
class DreamBoothData:
    classes: dict[str, str]  # subject -> class noun, in file order
    object_prompts: list[str]  # templates with {0} = unique token, {1} = class
    live_prompts: list[str]
    images: dict[str, list[Path]]  # subject -> its real images, sorted


def _prompt_list(block: str, file: Path, heading: str) -> list[str]:
    start = block.find("prompt_list")
    end = block.rfind("]")
    if start < 0 or end < start:
        raise BenchmarkDataError(f"{file}: no 'prompt_list = [...]' under '{heading}'")
    try:
        tree = ast.parse(block[start:end + 1])
    except SyntaxError as e:
        raise BenchmarkDataError(f"{file}: the prompt list under '{heading}' is not a Python list literal ({e.msg})") from None
    node = tree.body[0] if tree.body else None
    if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.List)):
        raise BenchmarkDataError(f"{file}: expected 'prompt_list = [...]' under '{heading}'")
    out = []
    for el in node.value.elts:
        if isinstance(el, ast.Call) and isinstance(el.func, ast.Attribute) and el.func.attr == "format":
            el = el.func.value
        if not (isinstance(el, ast.Constant) and isinstance(el.value, str)):
            raise BenchmarkDataError(f"{file}: under '{heading}', expected string templates like 'a {{0}} {{1}} ...'")
        fields = {f for _, f, spec, conv in string.Formatter().parse(el.value) if f is not None}
        if not fields <= {"0", "1"}:
            raise BenchmarkDataError(f"{file}: prompt {el.value!r} may use only {{0}} (token) and {{1}} (class)")
        out.append(el.value)
    if not out:
        raise BenchmarkDataError(f"{file}: empty prompt list under '{heading}'")
    return out


def load_dreambooth(path: str | Path) -> DreamBoothData:
    root = Path(path)
    file = root / PROMPTS_FILE
    if not file.is_file():
        raise BenchmarkDataError(f"{file}: file not found (expected DreamBooth's dataset/ folder with {PROMPTS_FILE})")
    text = file.read_text(encoding="utf-8")
    lines = text.splitlines()
    try:
        header = next(i for i, l in enumerate(lines) if l.strip().replace(" ", "") == "subject_name,class")
    except StopIteration:
        raise BenchmarkDataError(f"{file}: no 'subject_name,class' table") from None
    classes: dict[str, str] = {}
    for line in lines[header + 1:]:
        if not line.strip():
            break
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not all(parts):
            raise BenchmarkDataError(f"{file}: bad class-table line {line!r}; expected 'subject_name,class'")
        classes[parts[0]] = parts[1]
    obj_at, live_at = text.find("Object Prompts"), text.find("Live Subject Prompts")
    if obj_at < 0 or live_at < 0:
        raise BenchmarkDataError(f"{file}: expected the sections 'Object Prompts' and 'Live Subject Prompts'")
    object_prompts = _prompt_list(text[obj_at:live_at] if obj_at < live_at else text[obj_at:], file, "Object Prompts")
    live_prompts = _prompt_list(text[live_at:] if obj_at < live_at else text[live_at:obj_at], file, "Live Subject Prompts")
    images = {}
    for subject in classes:
        folder = root / subject
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        if not files:
            raise BenchmarkDataError(f"{folder}: expected the images of subject {subject!r} (listed in {file})")
        images[subject] = files
    return DreamBoothData(classes, object_prompts, live_prompts, images)


def render(template: str, token: str, cls: str) -> str:
    return " ".join(template.format(token, cls).split())  # an empty token leaves no double space


class DreamBoothBenchmark:
    name = "dreambooth"

    def __init__(self, cfg: DreamBoothConfig):
        self.cfg = cfg
        self._data: DreamBoothData | None = None
        self._samples: list[Sample] | None = None

    @property
    def data(self) -> DreamBoothData:
        if self._data is None:
            self._data = load_dreambooth(self.cfg.path)
            unknown = [s for s in self.cfg.subjects if s not in self._data.classes]
            if unknown:
                raise BenchmarkDataError(f"dreambooth.subjects: unknown {unknown}; known: {list(self._data.classes)}")
        return self._data

    def subjects(self) -> list[str]:
        return [s for s in self.data.classes if not self.cfg.subjects or s in self.cfg.subjects]

    def generation_config(self) -> dict[str, Any]:
        """The settings that decide the generated files (not the judge's or metrics'): a key for an output folder."""
        c = self.cfg
        return {"name": self.name, "path": c.path, "instruction_template": c.instruction_template,
                "unique_token": c.unique_token, "reference_image": c.reference_image,
                "images_per_prompt": c.images_per_prompt, "live_subjects": sorted(c.live_subjects)}

    def matches_public_counts(self) -> bool | None:
        if self.cfg.limit or self.cfg.subjects:
            return None
        d = self.data
        return (len(d.classes) == PUBLIC_SUBJECTS and len(d.object_prompts) == PUBLIC_PROMPTS
                and len(d.live_prompts) == PUBLIC_PROMPTS and all(s in d.classes for s in self.cfg.live_subjects))

    def reference(self, subject: str) -> Path:
        files = self.data.images[subject]
        if self.cfg.reference_image >= len(files):
            raise BenchmarkDataError(f"{Path(self.cfg.path) / subject}: has {len(files)} images; "
                                     f"dreambooth.reference_image = {self.cfg.reference_image}")
        return files[self.cfg.reference_image]

    def samples(self) -> list[Sample]:
        if self._samples is None:
            out = []
            for subject in self.subjects():
                cls = self.data.classes[subject]
                live = subject in self.cfg.live_subjects
                templates = self.data.live_prompts if live else self.data.object_prompts
                if self.cfg.limit:
                    templates = templates[:self.cfg.limit]
                for p, tmpl in enumerate(templates):
                    prompt = render(tmpl, "", cls)  # what CLIP-T and the judge read: the class noun alone
                    instruction = self.cfg.instruction_template.format(prompt=render(tmpl, self.cfg.unique_token, cls))
                    for k in range(self.cfg.images_per_prompt):
                        out.append(Sample(id=f"{subject}/{p:02d}_{k}", image=None, instruction=instruction, task=subject,
                                          meta={"subject": subject, "class": cls, "live": live, "prompt_index": p,
                                                "k": k, "prompt": prompt}))
            self._samples = out
        return self._samples

    def output_path(self, out_dir: Path, model_name: str, sample: Sample) -> Path:
        return self.outputs_folder(out_dir, model_name) / f"{sample.id}.png"

    # ---- the outputs folder: {subject}/{prompt_index:02d}_{k}.png

    @staticmethod
    def outputs_folder(out_dir: Path, model_name: str) -> Path:
        return Path(out_dir) / model_name

    def expected_outputs(self, folder: Path) -> dict[str, Path]:
        return {s.id: Path(folder) / f"{s.id}.png" for s in self.samples()}

    def generate(self, editor: Editor, out_dir: Path, *, model_name: str = "model", batch_size: int = 8,
                 shard: tuple[int, int] = (0, 1), progress: bool = True, seed: int = 0) -> None:
        jobs = [Job(self.output_path(out_dir, model_name, s), s.instruction,
                    partial(load_rgb, self.reference(s.meta["subject"]))) for s in self.samples()]
        run_jobs(editor, jobs, batch_size=batch_size, shard=shard, seed=seed, progress=progress, desc="DreamBooth")

    # ---- scoring

    def score(self, out_dir: Path, *, model_name: str = "model", progress: bool = True) -> list[BenchmarkResult]:
        """Score a run's outputs (judge cache in out_dir/.judge_cache, per-sample rows beside the outputs)."""
        folder = self.outputs_folder(out_dir, model_name)
        return self.score_folder(folder, cache_dir=Path(out_dir) / ".judge_cache", report_dir=folder,
                                 model_name=model_name, progress=progress)

    def score_folder(self, folder: Path, *, cache_dir: Path, report_dir: Path, model_name: str = "model",
                     progress: bool = True) -> list[BenchmarkResult]:
        folder, report_dir = Path(folder), Path(report_dir)
        samples = self.samples()
        outs = self.expected_outputs(folder)
        present = [s for s in samples if outs[s.id].exists()]
        values: dict[str, dict[str, float]] = {s.id: {} for s in present}
        errors: dict[str, str] = {}
        meta: dict[str, Any] = {}

        if "viescore" in self.cfg.metrics:
            prompts = viescore_prompts("sdig", self.cfg.prompts or None)
            runner = build_runner(self.cfg.judge, cache_dir)
            items = [VIEItem(s.id, s.meta["prompt"], partial(self._pair, s, outs[s.id])) for s in present]
            for o in score_items(runner, prompts, items, progress=progress, desc="DreamBooth VIEScore"):
                if o.scores is None:
                    errors[o.id] = o.error or "judge failed"
                else:
                    values[o.id].update(o.scores)
            meta.update(prompts=prompts.source, prompts_path=prompts.path,
                        prompts_version=prompts_version(prompts.sc, prompts.pq), **judge_meta(runner))
        meta.update(self._embedding_metrics(present, outs, values))

        scores = []
        for s in samples:
            extra = {"live": s.meta["live"], "prompt": s.meta["prompt"]}
            if s.id not in values:
                extra["expected"] = outs[s.id].relative_to(folder).as_posix()
                scores.append(SampleScore(s.id, s.task, MISSING, extra=extra))
            elif s.id in errors:
                scores.append(SampleScore(s.id, s.task, FAILED, values[s.id], error=errors[s.id], extra=extra))
            else:
                scores.append(SampleScore(s.id, s.task, SCORED, values[s.id], extra=extra))
        write_jsonl(report_dir / "dreambooth_samples.jsonl", (x.to_row() for x in scores))

        metric_names = [m for m in ("SC", "PQ", "Overall", "DINO", "CLIP-I", "CLIP-T")
                        if any(m in x.values for x in scores)]
        tasks = ordered_tasks((x.task for x in scores), self.subjects())
        counts = counts_by_task(scores, tasks)
        by_category = {
            cat: {m: v for m in metric_names if (v := micro_mean([x for x in scores if x.extra["live"] == live], m)) is not None}
            for cat, live in (("object", False), ("live", True))
        }
        meta.update({
            "dataset": str(self.cfg.path), "model_name": model_name, "date": utc_now(), "subset": "all",
            "instruction_template": self.cfg.instruction_template, "unique_token": self.cfg.unique_token,
            "reference_image": self.cfg.reference_image, "images_per_prompt": self.cfg.images_per_prompt,
            "limit": self.cfg.limit, "by_category": by_category,
            "matches_public_counts": self.matches_public_counts(),
            "aggregation": "per generated image; reported = mean over all images (per_task: per subject); "
                           "DINO/CLIP-I: mean cosine to the subject's real images; CLIP-T: cosine to the "
                           "class-noun prompt; missing outputs and failed judge replies counted",
            "not_implemented": ["MDINO", "TIFA"],
            **outputs_meta(folder, outs, extra_outputs(folder, outs.values(), ["*", "*/*"])),
            **completeness(counts),
        })
        return [BenchmarkResult(
            benchmark=self.name, subset="all",
            metrics={m: v for m in metric_names if (v := micro_mean(scores, m)) is not None},
            per_task=means_by_task(scores, tasks, metric_names), counts=counts, meta=meta,
        )]

    def _pair(self, sample: Sample, out: Path) -> tuple[list[Image.Image], Image.Image]:
        return [load_rgb(self.reference(sample.meta["subject"]))], load_rgb(out)

    def _embedding_metrics(self, present: list[Sample], outs: dict[str, Path],
                           values: dict[str, dict[str, float]]) -> dict[str, Any]:
        wanted = [m for m in ("dino", "clip_i", "clip_t") if m in self.cfg.metrics]
        if not wanted or not present:
            return {}
        by_subject: dict[str, list[Sample]] = {}
        for s in present:
            by_subject.setdefault(s.meta["subject"], []).append(s)
        meta: dict[str, Any] = {}
        if "dino" in wanted:
            from benchmarks.metrics.dino import DinoEmbedder

            dino = DinoEmbedder(self.cfg.dino, self.cfg.device)
            meta["dino_backbone"] = dino.meta()
            for subject, group in by_subject.items():
                real = dino.embed([load_rgb(p) for p in self.data.images[subject]])
                gen = dino.embed([load_rgb(outs[s.id]) for s in group])
                for s, sim in zip(group, (gen @ real.T).mean(dim=1).tolist()):
                    values[s.id]["DINO"] = sim
            del dino
        if "clip_i" in wanted or "clip_t" in wanted:
            from benchmarks.metrics.clip import ClipEmbedder

            clip = ClipEmbedder(self.cfg.clip, self.cfg.device)
            meta["clip_backbone"] = clip.meta()
            for subject, group in by_subject.items():
                gen = clip.embed_images([load_rgb(outs[s.id]) for s in group])
                if "clip_i" in wanted:
                    real = clip.embed_images([load_rgb(p) for p in self.data.images[subject]])
                    for s, sim in zip(group, (gen @ real.T).mean(dim=1).tolist()):
                        values[s.id]["CLIP-I"] = sim
                if "clip_t" in wanted:
                    text = clip.embed_texts([s.meta["prompt"] for s in group])
                    for s, sim in zip(group, (gen * text).sum(dim=1).tolist()):
                        values[s.id]["CLIP-T"] = sim
        return meta


BENCHMARKS.register("dreambooth", Spec(config=DreamBoothConfig, build=DreamBoothBenchmark,
                                       help="DreamBooth customization: VIEScore sdig, DINO, CLIP-I, CLIP-T"))
