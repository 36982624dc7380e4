"""shapes_edit: the built-in world's editing benchmark, scored exactly against rendered targets.

A fixed, seeded set of held-out edits (scenes from the world's test split, a seed stream of its
own), `n_per_type` for each edit type. Outputs go to `{out_dir}/{model}/{task}/{id}.png`.

Scoring mirrors VIEScore as GEdit-Bench aggregates it, with exact judges instead of a VLM:

- the output (resized to the world's size) is parsed back into a scene;
- every fact of the target scene is a slot (background, style, each object's shape, colour, size,
  cell and pattern, each removed object's absence). Slots where target and input differ are the
  intended change, the others must be preserved; an extra object in the output is one more failed
  preserved slot. edit_success = 10 x share of changed slots right; preservation = 10 x share of
  preserved slots right; SC = min(edit_success, preservation);
- PQ = 10 exp(-e / PQ_TAU), e = mean over pixels of max(0, d - PQ_TOLERANCE), d the RGB distance
  (in [0, 1]) between the output and the re-rendering of its own parse (objects drawn where they
  were found, so a clean object a pixel off its cell is still clean; its cell is what SC checks):
  10 for a clean scene, falling smoothly with noise, blur, stray or malformed pixels;
- O = sqrt(SC x PQ) per sample; per task the mean of each; the reported number is the unweighted
  mean over tasks. A missing or unreadable output scores 0 and is counted, never dropped.

PSNR and LPIPS against the target are reported too (over the outputs that exist); LPIPS only when
the pretrained backbone is available locally, otherwise omitted with the reason in `meta`.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from benchmarks.base import BenchmarkResult, Sample
from harness.config import to_dict
from harness.registry import BENCHMARKS, Spec
from harness.toyworld.edits import EDIT_TYPES, Edit, check_edit_type, sample_edit, supported_edit_types
from harness.toyworld.parse import as_array, pixel_error, reconstruct
from harness.toyworld.render import render, to_pil
from harness.toyworld.scenes import Obj, Scene, WorldConfig
from methods.base import Editor

PQ_TOLERANCE = 0.02  # per-pixel RGB distance that costs nothing (about 5/255)
PQ_TAU = 0.03  # mean excess distance at which PQ has fallen to 10/e
PSNR_CAP = 100.0  # dB, for outputs identical to the target
LPIPS_SIZE = 64  # AlexNet features of a 32x32 image are 1x1 after the second stage
_SEED_STREAM = 0x5E1D  # this benchmark's seed stream; the training export uses another one
_VAL_STREAM = 0x7A1D  # the validation split's
METRICS = ("SC", "PQ", "O", "edit_success", "preservation")


@dataclass
class ShapesEditConfig:
    name: str = "shapes_edit"
    # 'test': edits of the world's held-out scenes (the reported numbers). 'val': edits of training-split
    # scenes from a seed stream of their own, for tuning: disjoint from 'test' by construction (the
    # world's split), so a search over it never sees a test edit; reported as subset 'val'.
    split: Literal["test", "val"] = field(default="test", metadata={"hash": "unless_default"})
    n_per_type: int = 20
    edit_types: list[str] = field(default_factory=list)  # empty = every type the world supports
    seed: int = 0
    world: WorldConfig = field(default_factory=WorldConfig)  # must be the world the model was trained in
    lpips: bool = True  # computed only when the pretrained backbone is in the local torch hub cache
    lpips_net: str = "alex"

    def validate(self) -> None:
        if self.n_per_type < 1:
            raise ValueError(f"n_per_type must be >= 1, got {self.n_per_type}")
        supported = supported_edit_types(self.world)
        for t in self.edit_types:
            check_edit_type(t)
            if t not in supported:
                raise ValueError(f"edit_types: {t!r} cannot be expressed in this world; supported: "
                                 f"{', '.join(supported)}")
        if len(set(self.edit_types)) != len(self.edit_types):
            raise ValueError(f"edit_types: duplicates in {self.edit_types}")


# ---------------------------------------------------------------------------------------------
# Per-sample scoring

_ABSENT = "<absent>"  # the value of every slot of an object that is not there


def _facts(obj: Obj, style: str) -> dict[str, Any]:
    return {"shape": obj.shape, "color": obj.color, "size": obj.size, "pos": obj.pos,
            "pattern": obj.pattern if style == "filled" else None}  # outline drawings have no pattern


def _agreement(p: Obj, p_style: str, anchor: Obj, anchor_style: str) -> int:
    a, b = _facts(p, p_style), _facts(anchor, anchor_style)
    return sum(a[k] == b[k] for k in a)


def _match(parsed: Scene, tracks: list[tuple[Obj | None, Obj | None]], edit: Edit) -> list[Obj | None]:
    """The parsed object standing for each track (source object, target object), or None: the
    one-to-one assignment with the most agreeing facts (an object must agree on at least one)."""
    anchors = [(t, edit.target.style) if t is not None else (s, edit.source.style) for s, t in tracks]
    agree = [[_agreement(p, parsed.style, a, st) for a, st in anchors] for p in parsed.objects]
    best, best_key = [None] * len(tracks), (-1, -1)
    for choice in itertools.product([None, *range(len(parsed.objects))], repeat=len(tracks)):
        used = [c for c in choice if c is not None]
        if len(used) != len(set(used)) or any(c is not None and agree[c][j] == 0 for j, c in enumerate(choice)):
            continue
        key = (sum(agree[c][j] for j, c in enumerate(choice) if c is not None), len(used))
        if key > best_key:
            best, best_key = list(choice), key
    return [parsed.objects[c] if c is not None else None for c in best]


def slots(parsed: Scene, edit: Edit) -> tuple[list[tuple[Any, Any, Any]], int]:
    """(target, input, output) value of every fact of the edit, and the number of extra objects."""
    src, tgt = edit.source, edit.target
    ids = sorted({o.id for o in src.objects} | {o.id for o in tgt.objects})
    tracks = [(src.find(i), tgt.find(i)) for i in ids]
    matched = _match(parsed, tracks, edit)
    out = [(tgt.background, src.background, parsed.background), (tgt.style, src.style, parsed.style)]
    for (s, t), p in zip(tracks, matched):
        if t is None:  # removed: the slot is the object's absence
            out.append((True, False, p is None))
            continue
        tf, sf = _facts(t, tgt.style), _facts(s, src.style) if s is not None else None
        pf = _facts(p, parsed.style) if p is not None else None
        out += [(tf[k], sf[k] if sf else _ABSENT, pf[k] if pf else _ABSENT) for k in tf]
    extra = len(parsed.objects) - sum(p is not None for p in matched)
    return out, extra


def semantic_consistency(parsed: Scene, edit: Edit) -> dict[str, float]:
    facts, extra = slots(parsed, edit)
    changed = [p == t for t, s, p in facts if t != s]
    kept = [p == t for t, s, p in facts if t == s]
    if not changed:
        raise ValueError(f"edit {edit.instruction!r} does not change its scene")
    success = 10.0 * sum(changed) / len(changed)
    preservation = 10.0 * sum(kept) / (len(kept) + extra) if kept or extra else 10.0
    return {"edit_success": success, "preservation": preservation, "SC": min(success, preservation)}


def perceptual_quality(img: np.ndarray, clean: np.ndarray) -> float:
    """0-10: how close the image is to `clean`, the noise-free drawing of what it shows."""
    excess = np.maximum(pixel_error(img, clean) - PQ_TOLERANCE, 0.0)
    return float(10.0 * math.exp(-float(excess.mean()) / PQ_TAU))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float((((a.astype(np.float64) - b.astype(np.float64)) / 255.0) ** 2).mean())
    return min(PSNR_CAP, 10.0 * math.log10(1.0 / mse)) if mse > 0 else PSNR_CAP


def score_pair(output: Image.Image | np.ndarray, edit: Edit, cfg: WorldConfig) -> dict[str, float]:
    """Score one edited image: SC, PQ and O on 0-10 (VIEScore-like), their parts, and PSNR (dB)."""
    img = as_array(output, cfg)
    parsed, clean = reconstruct(img, cfg)
    scores = semantic_consistency(parsed, edit)
    scores["PQ"] = perceptual_quality(img, clean)
    scores["O"] = math.sqrt(scores["SC"] * scores["PQ"])
    scores["PSNR"] = psnr(img, render(edit.target, cfg))
    return scores


# ---------------------------------------------------------------------------------------------
# The benchmark


def _save_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


class ShapesEdit:
    name = "shapes_edit"

    def __init__(self, cfg: ShapesEditConfig | None = None):
        self.cfg = cfg or ShapesEditConfig()
        self.cfg.world.validate()
        self.cfg.validate()
        self.world = self.cfg.world
        self.edit_types = list(self.cfg.edit_types) or supported_edit_types(self.world)
        self._edits: list[tuple[str, Edit]] | None = None

    @property
    def subset(self) -> str:
        return "all" if self.cfg.split == "test" else "val"

    def edits(self) -> list[tuple[str, Edit]]:
        """(sample id, edit) for every sample, in a fixed order: types, then index."""
        if self._edits is None:
            width = max(3, len(str(self.cfg.n_per_type - 1)))
            self._edits = []
            for t in self.edit_types:
                code = EDIT_TYPES.index(t)  # stable per type, whatever subset of types is selected
                for j in range(self.cfg.n_per_type):
                    if self.cfg.split == "test":
                        rng = np.random.default_rng([_SEED_STREAM, self.cfg.seed, code, j])
                        edit = sample_edit(rng, self.world, t, split="test")
                    else:
                        rng = np.random.default_rng([_VAL_STREAM, self.cfg.seed, code, j])
                        edit = sample_edit(rng, self.world, t, split="train")
                    self._edits.append((f"{t}_{j:0{width}d}", edit))
        return self._edits

    def samples(self) -> list[Sample]:
        return [
            Sample(id=sid, image=to_pil(render(e.source, self.world)), instruction=e.instruction, task=e.edit_type,
                   meta={"object": e.object, "caption_ref": e.caption_ref, "caption_edit": e.caption_edit,
                         "source": e.source.to_dict(), "target": e.target.to_dict()})
            for sid, e in self.edits()
        ]

    @staticmethod
    def output_path(out_dir: Path, model_name: str, task: str, sample_id: str) -> Path:
        return Path(out_dir) / model_name / task / f"{sample_id}.png"

    def generate(
        self,
        editor: Editor,
        out_dir: Path,
        *,
        model_name: str = "model",
        batch_size: int = 8,
        shard: tuple[int, int] = (0, 1),
        progress: bool = True,
        seed: int | None = None,
    ) -> None:
        """`seed` (default: the benchmark's own) fixes the editor's noise per batch."""
        base_seed = self.cfg.seed if seed is None else seed
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        mine = list(enumerate(self.samples()))[index::count]
        # Batches are fixed by the sample order, and a batch with any missing output is edited whole,
        # so a resumed run gives the editor exactly the calls an uninterrupted run would.
        batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
        bar = tqdm(batches, desc=f"shapes_edit {model_name}", unit="batch",
                   disable=not (progress and sys.stderr.isatty()))
        for batch in bar:
            paths = [self.output_path(out_dir, model_name, s.task, s.id) for _, s in batch]
            if all(p.exists() for p in paths):
                continue
            outputs = editor.edit([s.image for _, s in batch], [s.instruction for _, s in batch],
                                  seed=base_seed * 1_000_003 + batch[0][0])
            if len(outputs) != len(batch):
                raise RuntimeError(f"editor returned {len(outputs)} images for a batch of {len(batch)}")
            for path, out in zip(paths, outputs):
                if not path.exists():
                    _save_png(out.convert("RGB"), path)

    def score(self, out_dir: Path, *, model_name: str = "model") -> list[BenchmarkResult]:
        rows: list[dict[str, Any]] = []
        images: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # row -> (output, target) for LPIPS
        for sid, edit in self.edits():
            path = self.output_path(out_dir, model_name, edit.edit_type, sid)
            row: dict[str, Any] = {"id": sid, "task": edit.edit_type, "status": "scored"}
            if not path.exists():
                row.update(status="missing", **{m: 0.0 for m in METRICS})
            else:
                try:
                    with Image.open(path) as im:
                        img = as_array(im, self.world)
                except (OSError, ValueError) as e:
                    row.update(status="failed", error=str(e), **{m: 0.0 for m in METRICS})
                else:
                    row.update(score_pair(img, edit, self.world))
                    images[len(rows)] = (img, render(edit.target, self.world))
            rows.append(row)

        meta: dict[str, Any] = {
            "scorer": "exact: parse + fact comparison (SC), residual to the clean re-drawing (PQ); "
                      f"PQ_TOLERANCE={PQ_TOLERANCE}, PQ_TAU={PQ_TAU}",
            "aggregate": "per-sample O = sqrt(SC*PQ); per-task means; reported = unweighted mean over tasks; "
                         "missing/failed outputs score 0 on SC, PQ, O; PSNR and LPIPS over existing outputs",
            "split": self.cfg.split, "seed": self.cfg.seed, "n_per_type": self.cfg.n_per_type, "edit_types": self.edit_types,
            "world": to_dict(self.world), "psnr_cap_db": PSNR_CAP,
        }
        self._add_lpips(rows, images, meta)

        per_task: dict[str, dict[str, float]] = {}
        counts: dict[str, dict[str, int]] = {}
        for t in self.edit_types:
            task_rows = [r for r in rows if r["task"] == t]
            scored = [r for r in task_rows if r["status"] == "scored"]
            per_task[t] = {m: float(np.mean([r[m] for r in task_rows])) for m in METRICS}
            for m in ("PSNR", "LPIPS"):
                if scored and m in scored[0]:
                    per_task[t][m] = float(np.mean([r[m] for r in scored]))
            counts[t] = {"n": len(task_rows), "scored": len(scored),
                         "failed": sum(r["status"] == "failed" for r in task_rows),
                         "missing": sum(r["status"] == "missing" for r in task_rows)}
        names = sorted({m for v in per_task.values() for m in v}, key=lambda m: (m not in METRICS, m))
        metrics = {m: float(np.mean([v[m] for v in per_task.values() if m in v])) for m in names}

        scores_path = Path(out_dir) / model_name / "shapes_edit_scores.jsonl"
        scores_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = scores_path.with_name(scores_path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, scores_path)
        meta["per_sample"] = str(scores_path)
        return [BenchmarkResult(benchmark=self.name, subset=self.subset, metrics=metrics, per_task=per_task,
                                counts=counts, meta=meta)]

    def _add_lpips(self, rows: list[dict[str, Any]], images: dict[int, tuple[np.ndarray, np.ndarray]],
                   meta: dict[str, Any]) -> None:
        if not self.cfg.lpips:
            meta["lpips"] = "off (config)"
            return
        from benchmarks.metrics.lpips import LpipsWeightsMissing, load_lpips

        try:
            model = load_lpips(self.cfg.lpips_net)
        except LpipsWeightsMissing as e:
            meta["lpips"] = f"omitted: {e}"
            return
        import torch

        meta["lpips"] = f"lpips {self.cfg.lpips_net}, images upsampled (nearest) to {LPIPS_SIZE}x{LPIPS_SIZE}"

        def batch(arrays: list[np.ndarray]) -> torch.Tensor:
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            return torch.nn.functional.interpolate(x, size=(LPIPS_SIZE, LPIPS_SIZE), mode="nearest")

        keys = sorted(images)
        with torch.no_grad():
            for i in range(0, len(keys), 64):
                chunk = keys[i : i + 64]
                dist = model(batch([images[k][0] for k in chunk]), batch([images[k][1] for k in chunk]))
                for k, d in zip(chunk, dist.flatten().tolist()):
                    rows[k]["LPIPS"] = float(d)


def build(cfg: ShapesEditConfig) -> ShapesEdit:
    return ShapesEdit(cfg)


BENCHMARKS.register("shapes_edit", Spec(config=ShapesEditConfig, build=build,
                                         help="built-in world: exact scoring against rendered targets"))
