"""The built-in world's VLM critics: LlavaForConditionalGeneration (SigLIP vision + Qwen2 LM) of
several sizes, written by `save_tiny_llava` and trained here to answer the paper's questions
(methods/questions.py, Appendix E, verbatim) about (reference, candidate) image pairs.

Examples. For an edit of a training-split scene, the candidate is the correct edit, the input
itself (no-op), another edit of the same kind (wrong), the correct edit plus an extra change
(over-edit), an edit of another kind (other), or an unrelated scene. Nearly half the candidates
are degraded the way a generator's outputs are (noise, blur, off colours, partly drawn shapes,
1-2 px shifts), and optionally (`p_teacher`) some are the toy teacher's own samples. Every answer
is computed from the scene the candidate shows: the exact scene for a clean render, the benchmark
parser's reading (harness.toyworld.parse) otherwise, with benchmarks/shapes_edit's slot logic:

  edit          "has the instruction been executed": every changed slot right (edit_success = 10)
  identity      "is everything else the same": every preserved slot right, no extra object
  removal       "does the image have {object}": an object of that colour and shape is there
  custom_context   the object (colour and shape) is there, in another grid cell than in the input
  custom_identity  an object of the same colour, shape and texture (style + pattern) is there

Training (one LLaVA per size, all on the same cached examples) is a curriculum, because a tiny
VLM trained from scratch on the answer token alone stayed at chance over the 600 steps (20K
pairs) we tried: one bit per ~120-token sequence, and nothing to start from. Each phase gives a
dense signal for one skill:

  1. perception: a training-only linear probe (CellProbe) reads every image token's grid cell
     (colour, shape, size, pattern) and the background and style: trains the vision tower;
  2. binding: the inventory task (`inventory`), Yes / No after each colour and shape word
     for whether the first or second image has it: many answers per sequence, each one needing a
     word bound to image content (what the questions need, and what the answer token alone teaches
     slowly);
  3. reading: describe each image cell by cell (`describe`), next-token loss over the whole text:
     the LM learns to attend to image tokens;
  4. comparing: describe what changed from the first image to the second (`describe_changes`);
  5. the questions: next-token cross-entropy on the answer token ("Yes" / "No"), first on clean
     correct / unedited / unrelated candidates, then on all, with the probe and the comparison
     task kept as auxiliary losses.

Everything runs through VLMCritic's own differentiable input path (the preprocessing, prompt ids
and image-feature scattering that NP-Edit's VLM loss uses), with gradients into both images'
features; only LlavaForConditionalGeneration's weights are saved.
"""
from __future__ import annotations

import shutil
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from harness.config import check_literals
from harness.toyworld import text as T
from harness.toyworld.edits import Edit, make_edit, sample_edit, supported_edit_types
from harness.toyworld.parse import parse, shift_mask
from harness.toyworld.render import object_mask, render
from harness.toyworld.scenes import PALETTE, Scene, WorldConfig, sample_scene

SIZES = ("small", "medium", "large")
KINDS = ("edit", "identity", "removal", "custom_context", "custom_identity")
CANDIDATES = ("correct", "noop", "wrong", "over", "other", "unrelated")
DEGRADATIONS = ("noise", "blur", "colors", "partial", "shift")
SOURCES = ("clean", "degraded", "teacher")  # how a candidate image was made
EASY_CANDIDATES = ("correct", "noop", "unrelated")  # the curriculum's first questions (clean only)
_STREAM_POOL, _STREAM_BATCH, _STREAM_BANK, _STREAM_INVENTORY = 21, 22, 23, 24
PHASES = ("probe", "inventory", "describe", "changes", "easy", "all")  # the training curriculum, in order
# The recipe fields with each phase's length (the last phase, "all", gets the steps that are left).
PHASE_STEPS = ("probe_steps", "inventory_steps", "describe_steps", "changes_steps", "easy_steps")


@dataclass
class CriticArch:
    """Widths and depths of the SigLIP vision tower and the Qwen2 language model. Images are shown
    in 16x16 patches, one vision token per cell of the world's grid (32x32 for its 2x2 grid)."""

    vision_dim: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 2
    image_size: int = 32
    patch_size: int = 16


DEFAULT_ARCHS: dict[str, CriticArch] = {
    "small": CriticArch(vision_dim=64, vision_layers=2, vision_heads=2, text_dim=64, text_layers=2, text_heads=2),
    "medium": CriticArch(vision_dim=128, vision_layers=3, vision_heads=4, text_dim=96, text_layers=3, text_heads=3),
    "large": CriticArch(vision_dim=192, vision_layers=4, vision_heads=6, text_dim=128, text_layers=4, text_heads=4),
}


@dataclass
class CriticDataRecipe:
    """The training examples every critic size shares (built once, cached)."""

    world: WorldConfig = field(default_factory=WorldConfig)
    pairs: int = 12_000  # (reference, candidate) pairs; each carries the 2 questions of its edit
    p_candidates: dict[str, float] = field(default_factory=lambda: {
        "correct": 0.3, "noop": 0.15, "wrong": 0.15, "over": 0.15, "other": 0.1, "unrelated": 0.15})
    p_degraded: float = 0.45  # synthetic degradations of the candidate
    # Candidates that are the toy teacher's samples (0 = none: the critics then train alongside the
    # teacher instead of after it; `evaluate` still measures them on teacher samples).
    p_teacher: float = 0.0
    teacher_bank: int = 384  # teacher samples drawn for the training pool
    teacher_hash: str = ""  # the teacher that drew them (set from the teacher recipe)
    teacher_steps: int = 12  # Euler steps of those samples
    teacher_guidance: float = 4.0
    seed: int = 0

    def validate(self) -> None:
        self.world.validate()
        bad = [k for k in self.p_candidates if k not in CANDIDATES]
        if bad or not self.p_candidates or any(v < 0 for v in self.p_candidates.values()):
            raise ValueError(f"p_candidates: keys must be among {CANDIDATES} with weights >= 0, got {self.p_candidates}")
        if not 0 <= self.p_degraded + self.p_teacher <= 1:
            raise ValueError(f"p_degraded + p_teacher must be in [0, 1], got {self.p_degraded} + {self.p_teacher}")


@dataclass
class CriticRecipe:
    size: str = "large"
    arch: CriticArch = field(default_factory=CriticArch)
    data: CriticDataRecipe = field(default_factory=CriticDataRecipe)
    steps: int = 1200
    batch_pairs: int = 32  # pairs per step (x 2 questions)
    lr: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # Weight of the auxiliary captioning loss beside the questions (describe each image; training only).
    describe_weight: float = 0.0
    # Curriculum (PHASES): `probe_steps` steps of the cell probe alone (perception), then
    # `inventory_steps` of the inventory task (`inventory`: Yes or No after each colour or shape word
    # for whether the named image has it; binding words to image content), then `describe_steps` of
    # the captioning task (the LM learns to read image tokens), then the questions.
    probe_steps: int = 0
    inventory_steps: int = 0
    describe_steps: int = 0
    changes_steps: int = 0  # then the comparison task (describe_changes) before the questions
    easy_steps: int = 0  # then the questions about clean correct / unedited / unrelated candidates only
    probe_weight: float = 0.5  # the cell probe's loss beside the LM's after the first phase
    changes_weight: float = 0.3  # the comparison task's loss beside the questions' (0 = off)
    inventory_weight: float = 0.0  # the same, inventory task
    init_seed: int = 0
    seed: int = 0
    save_dtype: Literal["float16", "float32"] = "float16"

    def validate(self) -> None:
        self.data.validate()
        check_literals(self)
        if self.arch.image_size % self.arch.patch_size:
            raise ValueError(f"arch: image_size {self.arch.image_size} is not a multiple of patch_size {self.arch.patch_size}")
        if self.steps < 1 or self.batch_pairs < 1:
            raise ValueError(f"steps and batch_pairs must be >= 1, got {self.steps}, {self.batch_pairs}")
        tokens, cells = (self.arch.image_size // self.arch.patch_size) ** 2, len(self.data.world.positions)
        if tokens != cells:
            raise ValueError(f"arch: {tokens} image tokens per image, but the cell probe needs one per grid cell "
                             f"({cells}); choose image_size / patch_size = {self.data.world.grid}")


# Training schedule of each size: the curriculum's phases (steps of `batch_pairs` pairs) and the peak
# learning rate. Perception (cell probe), binding (inventory, kept at weight 0.3 afterwards), reading
# (captions), comparing (changes), then the questions: first about clean correct / unedited /
# unrelated candidates, then about everything. The large critic at the medium's 1.5e-3 (its 1e-3 of
# before left it under-trained: 64.8% against 71.6% clean on the full world, docs/toyworld-search.md), and longer: it
# underfits (86.6% of its own training questions at 3000 steps), and held-out clean accuracy rose
# with the steps (84.4 / 87.8 / 89.8 / 91.2% at 3000 / 4500 / 6000 / 8000, docs/toyworld-search.md).
_CURRICULUM = {"probe_steps": 150, "inventory_steps": 600, "describe_steps": 150, "changes_steps": 150, "easy_steps": 300,
               "inventory_weight": 0.3}
DEFAULT_SCHEDULES: dict[str, dict[str, Any]] = {
    "small": {**_CURRICULUM, "steps": 3000, "lr": 2e-3},
    "medium": {**_CURRICULUM, "steps": 3000, "lr": 1.5e-3},
    "large": {**_CURRICULUM, "steps": 8000, "lr": 1.5e-3},
}


def default_critic_recipe(size: str, teacher_hash: str = "", world: WorldConfig | None = None) -> CriticRecipe:
    """The built-in recipe of a critic size for `world` (default: the default world); `teacher_hash`
    names the teacher whose samples it sees."""
    if size not in SIZES:
        raise ValueError(f"critic size {size!r} is not built in; sizes: {', '.join(SIZES)}")
    data = CriticDataRecipe() if world is None else CriticDataRecipe(world=world)
    if data.p_teacher > 0:
        data = replace(data, teacher_hash=teacher_hash)
    arch = DEFAULT_ARCHS[size]
    arch = replace(arch, image_size=arch.patch_size * data.world.grid)  # one vision token per grid cell
    return CriticRecipe(size=size, arch=arch, data=data, **DEFAULT_SCHEDULES[size])


# ---------------------------------------------------------------------------------------------
# Questions and their answers


@dataclass(frozen=True)
class QA:
    text: str
    answer: bool  # True = "Yes"
    two_images: bool
    kind: str  # one of KINDS


def _kind(edit_type: str, question_kind: str) -> str:
    if edit_type == "remove" and question_kind == "edit":
        return "removal"
    if edit_type == "customization":
        return "custom_context" if question_kind == "edit" else "custom_identity"
    return question_kind


def _named(scene: Scene, name: str) -> list:
    return [o for o in scene.objects if T.object_name(o) == name]


def _texture(obj: Any, style: str) -> tuple[str, str]:
    return style, obj.pattern if style == "filled" else "solid"


def truth(kind: str, edit: Edit, shown: Scene) -> bool:
    """The right answer to a question of `kind` about `edit` when the candidate shows `shown`."""
    from benchmarks.shapes_edit import semantic_consistency

    if kind in ("edit", "identity"):
        sc = semantic_consistency(shown, edit)
        return sc["edit_success" if kind == "edit" else "preservation"] == 10.0
    if kind == "removal":
        return bool(_named(shown, edit.object))
    (src,) = _named(edit.source, edit.object)
    if kind == "custom_context":
        return any(o.pos != src.pos for o in _named(shown, edit.object))
    if kind == "custom_identity":
        return any(_texture(o, shown.style) == _texture(src, edit.source.style) for o in _named(shown, edit.object))
    raise ValueError(f"unknown question kind {kind!r}; known: {', '.join(KINDS)}")


def questions(edit: Edit, shown: Scene) -> list[QA]:
    """The paper's questions about `edit` (methods.questions, verbatim), answered for `shown`."""
    from methods.questions import questions_for

    out = []
    for q in questions_for(edit.edit_type, edit.instruction, edit.object, identity=True):
        kind = _kind(edit.edit_type, q.kind)
        out.append(QA(q.text, truth(kind, edit, shown), q.two_images, kind))
    return out


# The auxiliary captioning task (training only): what the image shows, with sizes and places.
DESCRIBE = "Describe the image in detail."


def describe(scene: Scene, world: WorldConfig) -> str:
    """'white background , filled , top left : a large striped red circle , top center : nothing , ...':
    the background, the style, then every grid cell in reading order (a fixed layout, so each
    phrase is about one image token)."""
    at = {o.pos: o for o in scene.objects}
    cells = [f"{name} : {T.describe(at[k], scene.style, size=True) if k in at else 'nothing'}"
             for k, name in enumerate(world.positions)]
    return " , ".join([f"{scene.background} background", scene.style, *cells])


CHANGES = "Describe the changes in the second image."


def describe_changes(ref: Scene, shown: Scene, world: WorldConfig) -> str:
    """'background : same , style : same , top left : same , top center : a small blue circle , ...':
    for the background, the style and every grid cell, 'same' or what the second image has instead
    (the auxiliary comparison task: teaches the LM to compare the two images cell by cell)."""
    def cell(scene: Scene, k: int) -> str:
        o = next((o for o in scene.objects if o.pos == k), None)
        return "nothing" if o is None else T.describe(o, scene.style, size=True)

    parts = [f"background : {'same' if ref.background == shown.background else shown.background}",
             f"style : {'same' if ref.style == shown.style else shown.style}"]
    for k, name in enumerate(world.positions):
        a, b = cell(ref, k), cell(shown, k)
        parts.append(f"{name} : {'same' if a == b else b}")
    return " , ".join(parts)


INVENTORY = "Answer with a Yes or No if the first or second image has:"  # words the vocabulary has


def inventory(ref: Scene, shown: Scene, world: WorldConfig, rng: np.random.Generator) -> str:
    """'second red No , first circle Yes , ...': for each image ('first' = the reference) and each of
    the world's colours and shapes, in a random order, whether that image has an object of it."""
    items = [f"{which} {word} {'Yes' if has else 'No'}"
             for which, scene in (("first", ref), ("second", shown))
             for word, has in [(c, c in scene.colors()) for c in world.colors]
             + [(sh, any(o.shape == sh for o in scene.objects)) for sh in world.shapes]]
    return " , ".join(items[i] for i in rng.permutation(len(items)))


def critic_vocabulary(world: WorldConfig) -> list[str]:
    """Every word of the question templates, of the texts filled into them, and of the descriptions."""
    from harness.toyworld.teacher import teacher_vocabulary
    from methods import questions as Q

    templates = [Q.EDIT_VERIFICATION, Q.IDENTITY_PRESERVATION, Q.REMOVAL, Q.CUSTOMIZATION_CONTEXT, Q.CUSTOMIZATION_IDENTITY]
    literals = [" ".join(lit for lit, *_ in string.Formatter().parse(t)) for t in templates]
    return literals + [DESCRIBE, CHANGES, "object nothing style"] + teacher_vocabulary(world)


# ---------------------------------------------------------------------------------------------
# Candidates and degradations


def _other_edit(scene: Scene, rng: np.random.Generator, world: WorldConfig, types: list[str],
                differs_from: Scene | None = None) -> Edit | None:
    for _ in range(20):
        e = make_edit(scene, types[int(rng.integers(len(types)))], rng, world)
        if e is not None and (differs_from is None or not e.target.same_as(differs_from)):
            return e
    return None


def candidate_scene(edit: Edit, kind: str, rng: np.random.Generator, world: WorldConfig, split: str) -> Scene:
    """The scene a candidate of `kind` shows for `edit` (falls back to an unrelated scene)."""
    types = supported_edit_types(world)
    s, t = edit.source, edit.target
    if kind == "correct":
        return t
    if kind == "noop":
        return s
    if kind == "wrong":
        e = _other_edit(s, rng, world, [edit.edit_type], differs_from=t)
    elif kind == "over":
        e = _other_edit(t, rng, world, types, differs_from=s)
    elif kind == "other":
        e = _other_edit(s, rng, world, [x for x in types if x != edit.edit_type], differs_from=t)
    elif kind == "unrelated":
        e = None
    else:
        raise ValueError(f"unknown candidate kind {kind!r}; known: {', '.join(CANDIDATES)}")
    return e.target if e is not None else sample_scene(rng, world, split=split)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an (H, W, C) float image (separable, edges replicated)."""
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    for axis in (0, 1):
        pad = [(r, r) if a == axis else (0, 0) for a in range(3)]
        p = np.pad(x, pad, mode="edge")
        x = sum(w * np.take(p, range(i, i + x.shape[axis]), axis=axis) for i, w in enumerate(k))
    return x


def _shifted_render(scene: Scene, world: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    """The scene with each object moved by up to 2 pixels (at least one moved)."""
    img = np.empty((world.size, world.size, 3), np.uint8)
    img[:] = PALETTE[scene.background]
    moved = int(rng.integers(len(scene.objects)))
    for i, obj in enumerate(scene.objects):
        dy, dx = (0, 0)
        while i == moved and (dy, dx) == (0, 0):
            dy, dx = (int(v) for v in rng.integers(-2, 3, size=2))
        img[shift_mask(object_mask(obj, scene.style, world), dy, dx)] = PALETTE[obj.color]
    return img


def degrade(scene: Scene, world: WorldConfig, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """A rendering of `scene` spoiled like a generator's output (`kind` among DEGRADATIONS, or a
    random one or two of them)."""
    kinds = [kind] if kind else list(rng.choice(DEGRADATIONS, size=1 + int(rng.random() < 0.3), replace=False))
    img = _shifted_render(scene, world, rng) if "shift" in kinds else render(scene, world)
    x = img.astype(np.float32)
    if "partial" in kinds and scene.objects:
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        mask = object_mask(obj, scene.style, world)
        if rng.random() < 0.5:  # a random share of the pixels missing
            drop = mask & (rng.random(mask.shape) < rng.uniform(0.15, 0.5))
        else:  # a band of rows or columns missing
            ys, xs = np.nonzero(mask)
            horizontal = rng.random() < 0.5
            coords = ys if horizontal else xs
            lo, hi = coords.min(), coords.max()
            width = max(1, int(round((hi - lo + 1) * rng.uniform(0.2, 0.45))))
            start = int(rng.integers(lo, hi - width + 2))
            band = np.zeros_like(mask)
            if horizontal:
                band[start : start + width] = True
            else:
                band[:, start : start + width] = True
            drop = mask & band
        x[drop] = PALETTE[scene.background]
    if "colors" in kinds:  # every flat region's colour off by its own offset
        # in a fixed order (a set's order changes with the process's hash seed, and so would the offsets)
        for c in dict.fromkeys([scene.background, *(o.color for o in scene.objects)]):
            m = np.all(img == PALETTE[c], -1)
            x[m] += rng.uniform(-45, 45, size=3).astype(np.float32)
    if "blur" in kinds:
        sigma = rng.uniform(0.3, 0.8)  # above ~0.6 px, thin stripes and outlines start to wash out
        x = _blur(x, sigma)
    if "noise" in kinds:
        x = x + rng.normal(0, rng.uniform(4, 40), size=x.shape).astype(np.float32)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Example pools


@dataclass
class Pool:
    """(reference, candidate) image pairs, the questions about each (answered), and a description
    of what each image shows (the auxiliary captioning task)."""

    refs: np.ndarray  # (N, H, W, 3) uint8
    cands: np.ndarray  # (N, H, W, 3) uint8
    qas: list[list[QA]]
    source: list[str]  # per pair: one of SOURCES
    candidate: list[str]  # per pair: one of CANDIDATES ('teacher' for teacher samples)
    edit_type: list[str]
    descriptions: list[tuple[str, str]]  # per pair: (reference, candidate)
    scenes: list[tuple[Scene, Scene]]  # per pair: (reference, what the candidate shows)
    changes: list[str]  # per pair: describe_changes (the auxiliary comparison task)

    def __len__(self) -> int:
        return len(self.qas)

    @staticmethod
    def concat(pools: list["Pool"]) -> "Pool":
        return Pool(np.concatenate([p.refs for p in pools]), np.concatenate([p.cands for p in pools]),
                    *(sum((getattr(p, f) for p in pools), []) for f in
                      ("qas", "source", "candidate", "edit_type", "descriptions", "scenes", "changes")))

    def subset(self, index: list[int]) -> "Pool":
        return Pool(self.refs[index], self.cands[index], [self.qas[i] for i in index], [self.source[i] for i in index],
                    [self.candidate[i] for i in index], [self.edit_type[i] for i in index],
                    [self.descriptions[i] for i in index], [self.scenes[i] for i in index],
                    [self.changes[i] for i in index])

    def save(self, path: Path) -> None:
        import json
        import os

        meta = [{"qas": [[q.text, q.answer, q.two_images, q.kind] for q in qs], "source": s, "candidate": c,
                 "edit_type": e, "descriptions": list(d), "scenes": [sc[0].to_dict(), sc[1].to_dict()], "changes": ch}
                for qs, s, c, e, d, sc, ch in zip(self.qas, self.source, self.candidate, self.edit_type, self.descriptions,
                                                  self.scenes, self.changes)]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, refs=self.refs, cands=self.cands, meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "Pool":
        import json

        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(z["refs"], z["cands"], [[QA(*q) for q in m["qas"]] for m in meta], [m["source"] for m in meta],
                       [m["candidate"] for m in meta], [m["edit_type"] for m in meta],
                       [tuple(m["descriptions"]) for m in meta],
                       [(Scene.from_dict(m["scenes"][0]), Scene.from_dict(m["scenes"][1])) for m in meta],
                       [m["changes"] for m in meta])


def teacher_bank(teacher_folder: Path, recipe: CriticDataRecipe, n: int, split: str, seed: int) -> list[tuple[Edit, np.ndarray]]:
    """`n` (edit, teacher sample) pairs: the teacher draws the edited caption (70%) or the
    reference caption (30%) of a random edit, so its samples are near-misses of both."""
    from harness.toyworld.teacher import load_teacher, sample

    rng = np.random.default_rng([_STREAM_BANK, recipe.seed, seed, split == "test"])
    types = supported_edit_types(recipe.world)
    edits = [sample_edit(rng, recipe.world, types[int(rng.integers(len(types)))], split=split) for _ in range(n)]
    prompts = [e.caption_edit if rng.random() < 0.7 else e.caption_ref for e in edits]
    images = sample(load_teacher(teacher_folder), prompts, seed=seed, steps=recipe.teacher_steps,
                    guidance=recipe.teacher_guidance)
    return list(zip(edits, images))


def build_pool(recipe: CriticDataRecipe, n: int, *, split: str = "train", seed: int = 0,
               bank: list[tuple[Edit, np.ndarray]] | None = None, p_degraded: float | None = None,
               p_teacher: float | None = None, part: Literal["all", "base", "teacher"] = "all",
               progress: bool = False) -> Pool:
    """`n` answered (reference, candidate) pairs over edits of the world's `split` scenes; a share
    `p_teacher` of them are teacher samples from `bank`. `part`: only the pairs without ('base')
    or with ('teacher') teacher samples, so the base can be built while the teacher trains;
    concatenating both parts gives every pair of 'all' (in another order)."""
    import sys

    from tqdm.auto import tqdm

    if part not in ("all", "base", "teacher"):
        raise ValueError(f"part must be 'all', 'base' or 'teacher', got {part!r}")
    p_tea = recipe.p_teacher if p_teacher is None else p_teacher
    if p_tea > 0 and part != "base" and not bank:
        raise ValueError(f"p_teacher={p_tea} needs a bank of teacher samples (see teacher_bank), or part='base'")

    w = recipe.world
    types = supported_edit_types(w)
    kinds = list(recipe.p_candidates)
    probs = np.array([recipe.p_candidates[k] for k in kinds], float)
    probs /= probs.sum()
    p_deg = recipe.p_degraded if p_degraded is None else p_degraded
    refs, cands, qas, source, cand_kind, etypes, descs, scenes, changes = [], [], [], [], [], [], [], [], []
    from harness.toyworld.pretrain import BARS

    bar = progress and sys.stderr.isatty() and BARS
    for i in tqdm(range(n), desc=f"critic examples ({split})", unit="pair", disable=not bar):
        rng = np.random.default_rng([_STREAM_POOL, recipe.seed, seed, split == "test", i])
        u = rng.random()
        if (part == "base" and u < p_tea) or (part == "teacher" and u >= p_tea):
            continue
        if u < p_tea:
            edit, img = bank[int(rng.integers(len(bank)))]
            shown, src, ck = parse(img, w), "teacher", "teacher"
        else:
            edit = sample_edit(rng, w, types[int(rng.integers(len(types)))], split=split)
            ck = kinds[int(rng.choice(len(kinds), p=probs))]
            scene = candidate_scene(edit, ck, rng, w, split)
            if u < p_tea + p_deg:
                img = degrade(scene, w, rng)
                shown, src = parse(img, w), "degraded"
            else:
                img, shown, src = render(scene, w), scene, "clean"
        refs.append(render(edit.source, w))
        cands.append(img)
        qas.append(questions(edit, shown))
        source.append(src)
        cand_kind.append(ck)
        etypes.append(edit.edit_type)
        descs.append((describe(edit.source, w), describe(shown, w)))
        scenes.append((edit.source, shown))
        changes.append(describe_changes(edit.source, shown, w))
    shape = (0, w.size, w.size, 3)
    return Pool(np.stack(refs) if refs else np.zeros(shape, np.uint8), np.stack(cands) if cands else np.zeros(shape, np.uint8),
                qas, source, cand_kind, etypes, descs, scenes, changes)


# ---------------------------------------------------------------------------------------------
# The model


def build_initial_folder(folder: Path, recipe: CriticRecipe) -> Path:
    from harness.models.tiny import save_tiny_llava

    a = recipe.arch
    return save_tiny_llava(folder, vocab=critic_vocabulary(recipe.data.world), image_size=a.image_size,
                           patch_size=a.patch_size, vision_dim=a.vision_dim, vision_layers=a.vision_layers,
                           vision_heads=a.vision_heads, text_dim=a.text_dim, text_layers=a.text_layers,
                           text_heads=a.text_heads, max_position_embeddings=512, image_processor="siglip",
                           seed=recipe.init_seed)


def trainable_critic(folder: Path):
    """A VLMCritic over a LLaVA folder with every weight trainable (VLMCritic freezes nothing itself)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from harness.models.critic import VLMCritic
    from harness.models.llava import LlavaLayout

    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(folder)
    model.requires_grad_(True)
    return VLMCritic(LlavaLayout(model, processor), name=f"llava:{folder}")


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _embed(critic: Any, ids: list[list[int]], feats: torch.Tensor, order: list[int]) -> tuple[torch.Tensor, ...]:
    """Right-padded input ids, attention mask and input embeddings with the image-token embeddings
    replaced by feats[order] (in prompt order), as VLMCritic.next_token_logits builds them."""
    q, length = len(ids), max(len(x) for x in ids)
    input_ids = torch.full((q, length), critic.pad_id, dtype=torch.long)
    attention = torch.zeros((q, length), dtype=torch.long)
    for k, x in enumerate(ids):
        input_ids[k, : len(x)] = torch.tensor(x)
        attention[k, : len(x)] = 1
    input_ids, attention = input_ids.to(critic.device), attention.to(critic.device)
    embeds = critic.model.get_input_embeddings()(input_ids)
    mask = (input_ids == critic.layout.image_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(mask, feats[order].reshape(-1, feats.shape[-1]).to(embeds.dtype))
    return input_ids, attention, embeds


def answer_logits(critic: Any, texts: list[str], images: torch.Tensor, cand_index: list[int],
                  ref_index: list[int | None], feats: torch.Tensor | None = None) -> torch.Tensor:
    """(Q, V) next-token logits, as VLMCritic.next_token_logits computes them, but with gradients
    through every image (question q sees images[ref_index[q]] first when not None, then
    images[cand_index[q]]). `feats`: critic.encode_images(images) when already computed."""
    feats = critic.encode_images(images) if feats is None else feats
    ids = [critic.prompt_ids(t, 1 if r is None else 2) for t, r in zip(texts, ref_index)]
    order = [i for r, c in zip(ref_index, cand_index) for i in ([c] if r is None else [r, c])]
    input_ids, attention, embeds = _embed(critic, ids, feats, order)
    return critic.layout.logits_at(input_ids, embeds, attention, attention.sum(1) - 1)


def description_loss(critic: Any, feats: torch.Tensor, descriptions: list[str], *, prompt: str = DESCRIBE,
                     images: list[list[int]] | None = None, only: set[int] | None = None) -> torch.Tensor:
    """Teacher-forced next-token cross-entropy of a text about images (the auxiliary captioning,
    comparison and inventory tasks: a dense signal that teaches the LM to read and compare image
    tokens). Sequence k shows feats[i] for i in images[k] (default: feats[k] alone). `only`: score
    just the text's tokens with these ids (the inventory's answers, not its random word order)."""
    tok = critic.tokenizer
    images = images if images is not None else [[k] for k in range(len(descriptions))]
    prompts = [critic.prompt_ids(prompt, len(im)) for im in images]
    answers = [tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for d in descriptions]
    input_ids, attention, embeds = _embed(critic, [p + a for p, a in zip(prompts, answers)], feats,
                                          [i for im in images for i in im])
    labels = torch.full_like(input_ids, -100)
    for k, (p, a) in enumerate(zip(prompts, answers)):
        labels[k, len(p) : len(p) + len(a)] = torch.tensor([t if only is None or t in only else -100 for t in a])
    model = critic.model
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand_as(input_ids)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions,
                                        use_cache=False).last_hidden_state
    logits = model.lm_head(hidden[:, :-1]).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def batch_inputs(pool: Pool, pairs: list[int]) -> tuple[torch.Tensor, list[str], list[int], list[int | None], list[bool], list[QA]]:
    """Images (references, then candidates) and the questions of the given pairs."""
    images = to_tensor(np.concatenate([pool.refs[pairs], pool.cands[pairs]]))
    texts, cand, ref, answers, flat = [], [], [], [], []
    for k, i in enumerate(pairs):
        for qa in pool.qas[i]:
            texts.append(qa.text)
            cand.append(len(pairs) + k)
            ref.append(k if qa.two_images else None)
            answers.append(qa.answer)
            flat.append(qa)
    return images, texts, cand, ref, answers, flat


def answer_loss(critic: Any, pool: Pool, pairs: list[int], *, feats: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy of the right answer token ("Yes" or "No") to every question of the
    pairs. `feats`: the features of the pairs' images (references, then candidates) when already computed."""
    images, texts, cand, ref, answers, flat = batch_inputs(pool, pairs)
    logits = answer_logits(critic, texts, images, cand, ref, feats=feats)
    target = torch.tensor([critic.yes_ids[0] if a else critic.no_ids[0] for a in answers], device=logits.device)
    return F.cross_entropy(logits, target)


class CellProbe(torch.nn.Module):
    """Training-only linear read-outs of the critic's image features (the LM inputs): per image
    token (one per grid cell) the colour, shape, size and pattern of the object there (or none),
    and from the mean token the background and the style. A cheap, dense signal that teaches the
    vision tower what the world's images show before the LM has learned to ask; not saved."""

    def __init__(self, dim: int, world: WorldConfig):
        super().__init__()
        self.world = world
        self.values = {"color": world.colors, "shape": world.shapes, "size": world.sizes, "pattern": world.patterns}
        self.cells = torch.nn.ModuleDict({k: torch.nn.Linear(dim, 1 + len(v)) for k, v in self.values.items()})
        self.background = torch.nn.Linear(dim, len(world.backgrounds))
        self.style = torch.nn.Linear(dim, len(world.styles))

    def targets(self, scenes: list[Scene]) -> dict[str, torch.Tensor]:
        n, cells = len(scenes), len(self.world.positions)
        out = {k: torch.zeros(n, cells, dtype=torch.long) for k in self.values}
        for i, s in enumerate(scenes):
            for o in s.objects:
                if 0 <= o.pos < cells:
                    for k, values in self.values.items():
                        v = getattr(o, k)
                        out[k][i, o.pos] = 1 + values.index(v) if v in values else 0
        out["background"] = torch.tensor([self.world.backgrounds.index(s.background) for s in scenes])
        out["style"] = torch.tensor([self.world.styles.index(s.style) for s in scenes])
        return out

    def loss(self, feats: torch.Tensor, scenes: list[Scene]) -> torch.Tensor:
        if feats.shape[1] != len(self.world.positions):
            raise ValueError(f"the cell probe needs one image token per grid cell: {feats.shape[1]} tokens, "
                             f"{len(self.world.positions)} cells")
        y = {k: v.to(feats.device) for k, v in self.targets(scenes).items()}
        feats = feats.float()
        losses = [F.cross_entropy(head(feats).flatten(0, 1), y[k].flatten()) for k, head in self.cells.items()]
        pooled = feats.mean(1)
        losses += [F.cross_entropy(self.background(pooled), y["background"]), F.cross_entropy(self.style(pooled), y["style"])]
        return sum(losses) / len(losses)


def phase_at(recipe: CriticRecipe, step: int) -> str:
    """The curriculum phase (PHASES) that training step `step` is in; phases of 0 steps are skipped."""
    bounds = np.cumsum([getattr(recipe, key) for key in PHASE_STEPS])
    return PHASES[int(np.searchsorted(bounds, step, side="right"))]


def train_critic(recipe: CriticRecipe, folder: Path, pool: Pool, *, progress: bool = True,
                 stop_after: int | None = None, device: str | torch.device | None = None) -> Path | None:
    """Train one critic on `pool` and write its LLaVA folder to `folder` atomically (recipe.json
    beside the weights). Returns None when stopped early by `stop_after`. `device`: where to train
    (default CPU)."""
    from harness.models.tiny import write_folder_atomically
    from harness.toyworld import pretrain as P

    recipe.validate()
    folder = Path(folder)
    work = folder.with_name(folder.name + ".work")
    init = work / "init"
    if not (init / "config.json").exists():
        build_initial_folder(init, recipe)
    critic = trainable_critic(init).to(torch.device(device or "cpu"))
    model = critic.model
    probe = CellProbe(model.config.text_config.hidden_size, recipe.data.world).to(critic.device)
    named = list(model.named_parameters()) + [(f"probe.{n}", p) for n, p in probe.named_parameters()]
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.98))
    params = [p for _, p in named]

    easy = [i for i, (c, src) in enumerate(zip(pool.candidate, pool.source)) if c in EASY_CANDIDATES and src == "clean"]
    answer_ids = {*critic.yes_ids, *critic.no_ids}

    def step_fn(step: int) -> float:
        phase = phase_at(recipe, step)

        def after(name: str) -> bool:
            return PHASES.index(phase) > PHASES.index(name)

        rng = np.random.default_rng(P.step_seed(recipe.seed, step, _STREAM_BATCH))
        source = easy if phase == "easy" and easy else range(len(pool))
        pairs = sorted(int(source[k]) for k in rng.choice(len(source), size=min(recipe.batch_pairs, len(source)), replace=False))
        n = len(pairs)
        images = to_tensor(np.concatenate([pool.refs[pairs], pool.cands[pairs]]))
        feats = critic.encode_images(images)
        loss = probe.loss(feats, [pool.scenes[i][0] for i in pairs] + [pool.scenes[i][1] for i in pairs])
        if phase != "probe":
            loss = recipe.probe_weight * loss
        if phase == "inventory" or (after("inventory") and recipe.inventory_weight > 0):
            inv_rng = np.random.default_rng(P.step_seed(recipe.seed, step, _STREAM_INVENTORY))
            texts = [inventory(*pool.scenes[i], recipe.data.world, inv_rng) for i in pairs]
            inv = description_loss(critic, feats, texts, prompt=INVENTORY, images=[[k, n + k] for k in range(n)],
                                   only=answer_ids)
            loss = loss + (1.0 if phase == "inventory" else recipe.inventory_weight) * inv
        if phase == "describe" or (after("describe") and recipe.describe_weight > 0):
            descs = [pool.descriptions[i][0] for i in pairs] + [pool.descriptions[i][1] for i in pairs]
            loss = loss + (1.0 if phase == "describe" else recipe.describe_weight) * description_loss(critic, feats, descs)
        if phase == "changes" or (after("changes") and recipe.changes_weight > 0):
            changes = description_loss(critic, feats, [pool.changes[i] for i in pairs], prompt=CHANGES,
                                       images=[[k, n + k] for k in range(n)])
            loss = loss + (1.0 if phase == "changes" else recipe.changes_weight) * changes
        if phase in ("easy", "all"):
            loss = loss + answer_loss(critic, pool, pairs, feats=feats)
        loss.backward()
        if recipe.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        return float(loss.detach())

    state = P.train_loop(work_dir=work, hash_=P.recipe_hash(recipe), modules={"model": model, "probe": probe},
                         optimizer=optimizer,
                         step_fn=step_fn, steps=recipe.steps,
                         lr=lambda s: P.lr_at(s, recipe.steps, recipe.lr, recipe.warmup_steps),
                         desc=f"critic {recipe.size}", progress=progress, stop_after=stop_after)
    if state.step < recipe.steps:
        return None
    dtype = {"float16": torch.float16, "float32": torch.float32}[recipe.save_dtype]

    def fill(tmp: Path) -> None:
        model.to(dtype).save_pretrained(tmp)
        model.to(torch.float32)
        critic.processor.save_pretrained(tmp)
        P.write_recipe(tmp, "critic", recipe, {"train": {"steps": state.step, "seconds": round(state.elapsed_s, 1),
                                                         "device": str(critic.device),
                                                         "loss_curve": [round(v, 5) for v in state.losses]}})

    write_folder_atomically(folder, fill)
    shutil.rmtree(work, ignore_errors=True)
    return folder


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def predictions(critic: Any, pool: Pool, batch_pairs: int = 64) -> list[tuple[QA, bool, str]]:
    """(question, predicted answer (Yes logit > No logit), source) of every question of the pool,
    through VLMCritic.next_token_logits (the inference path NP-Edit uses)."""
    out = []
    for start in range(0, len(pool), batch_pairs):
        pairs = list(range(start, min(len(pool), start + batch_pairs)))
        flat = [(k, qa) for k, i in enumerate(pairs) for qa in pool.qas[i]]
        refs, cands = to_tensor(pool.refs[pairs]), to_tensor(pool.cands[pairs])
        logits = critic.next_token_logits([qa.text for _, qa in flat], cands, refs, [k for k, _ in flat],
                                          ref_mask=[qa.two_images for _, qa in flat])
        yn = critic.yes_no_logits(logits)
        for (k, qa), yes in zip(flat, (yn[:, 0] > yn[:, 1]).tolist()):
            out.append((qa, yes, pool.source[pairs[k]]))
    return out


def accuracy_table(preds: list[tuple[QA, bool, str]]) -> dict[str, dict[str, Any]]:
    """{source: {kind: accuracy, ..., 'all': accuracy, 'n': count, 'yes_rate': share of Yes answers}}."""
    table: dict[str, dict[str, Any]] = {}
    for src in (*SOURCES, "all"):
        rows = [(qa, y) for qa, y, s in preds if src in ("all", s)]
        if not rows:
            continue
        t: dict[str, Any] = {}
        for kind in KINDS:
            sel = [qa.answer == y for qa, y in rows if qa.kind == kind]
            if sel:
                t[kind] = round(float(np.mean(sel)), 4)
        t["all"] = round(float(np.mean([qa.answer == y for qa, y in rows])), 4)
        t["n"] = len(rows)
        t["yes_rate"] = round(float(np.mean([qa.answer for qa, _ in rows])), 4)
        table[src] = t
    return table


def accuracy_by_edit_type(pool: Pool, preds: list[tuple[QA, bool, str]], source: str = "clean") -> dict[str, float]:
    """{edit type: share of right answers} over the questions on `source` candidates; `preds` are
    `predictions(critic, pool)`, in the pool's order of pairs and questions."""
    types = [pool.edit_type[i] for i in range(len(pool)) for _ in pool.qas[i]]
    if len(types) != len(preds):
        raise ValueError(f"{len(preds)} predictions for a pool of {len(types)} questions")
    right: dict[str, list[bool]] = {}
    for t, (qa, yes, src) in zip(types, preds):
        if src == source:
            right.setdefault(t, []).append(qa.answer == yes)
    return {t: round(float(np.mean(v)), 4) for t, v in sorted(right.items())}


__all__ = ["CANDIDATES", "DEFAULT_ARCHS", "DEGRADATIONS", "KINDS", "QA", "SIZES", "SOURCES", "CriticArch",
           "CriticDataRecipe", "CriticRecipe", "Pool", "accuracy_by_edit_type", "accuracy_table", "answer_logits", "answer_loss",
           "build_initial_folder", "build_pool", "candidate_scene", "critic_vocabulary", "default_critic_recipe", "degrade",
           "CellProbe", "INVENTORY", "PHASES", "batch_inputs", "describe", "describe_changes", "description_loss",
           "inventory", "to_tensor",
           "predictions",
           "questions", "teacher_bank", "train_critic", "trainable_critic", "truth"]
