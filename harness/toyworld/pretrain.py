"""Pretraining of the built-in world's models: the resumable training loop they share, and the
command that builds them all (`python -m harness.toyworld pretrain`).

A training run lives in a work folder next to its final model folder. Every `ckpt_every_s`
seconds (and at the end) the loop writes `ckpt.pt` atomically: weights, optimizer, EMA and the
step. Batches and noise are pure functions of (seed, step), so a run resumed from a checkpoint
takes exactly the steps an uninterrupted run would have taken. A checkpoint of another recipe
(its hash differs) is never resumed.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from harness.config import config_hash, to_dict

HASH_LENGTH = 12
# Progress bars in this process (worker processes of `pretrain` log lines instead: several bars
# from several processes on one terminal garble each other).
BARS = True


def recipe_hash(recipe: Any) -> str:
    """The id of everything in a recipe that changes the trained weights."""
    return config_hash(recipe, length=HASH_LENGTH)


def log(msg: str) -> None:
    print(f"[toyworld] {msg}", file=sys.stderr, flush=True)


def step_seed(seed: int, step: int, stream: int) -> list[int]:
    """Seed material of one step's numpy/torch generators (independent streams per use)."""
    return [seed, stream, step]


def torch_generator(seed: int, step: int, stream: int) -> torch.Generator:
    import numpy as np

    return torch.Generator().manual_seed(int(np.random.SeedSequence(step_seed(seed, step, stream)).generate_state(1)[0]))


def lr_at(step: int, steps: int, lr: float, warmup: int, final_fraction: float = 0.1) -> float:
    """Linear warmup, then cosine decay to `final_fraction` of `lr`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class EMA:
    """Exponential moving average of parameters, with the usual warmup of the decay."""

    def __init__(self, params: dict[str, nn.Parameter], decay: float):
        self.decay = decay
        self.params = params
        self.shadow = {k: p.detach().clone() for k, p in params.items()}
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, p in self.params.items():
            self.shadow[k].lerp_(p.detach(), 1 - d)

    @torch.no_grad()
    def copy_to(self, params: dict[str, nn.Parameter]) -> None:
        for k, p in params.items():
            p.copy_(self.shadow[k])

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow = {k: v.to(self.params[k].device, copy=True) for k, v in state["shadow"].items()}
        self.updates = int(state["updates"])


@dataclass
class LoopState:
    step: int = 0
    losses: list[float] = field(default_factory=list)  # mean loss of each logged window
    elapsed_s: float = 0.0  # training time over all sessions (resumes add up)


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_loop(
    *,
    work_dir: Path,
    hash_: str,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    step_fn: Callable[[int], float],
    steps: int,
    lr: Callable[[int], float],
    ema: EMA | None = None,
    desc: str = "train",
    ckpt_every_s: float = 60.0,
    log_every: int = 50,
    progress: bool = True,
    stop_after: int | None = None,
) -> LoopState:
    """Run `step_fn(step) -> loss` (which does forward + backward) for steps [resume, steps),
    stepping the optimizer with the scheduled learning rate and updating the EMA.

    `stop_after`: return after this many steps of this session (tests of resuming)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt = work_dir / "ckpt.pt"
    state = LoopState()
    if ckpt.exists():
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        if saved.get("hash") == hash_:
            for name, m in modules.items():
                m.load_state_dict(saved["modules"][name])
            optimizer.load_state_dict(saved["optimizer"])
            if ema is not None:
                ema.load_state_dict(saved["ema"])
            state = LoopState(int(saved["step"]), list(saved["losses"]), float(saved["elapsed_s"]))
            log(f"{desc}: resuming at step {state.step}/{steps} from {ckpt}")
        else:
            log(f"{desc}: ignoring {ckpt} (another recipe: {saved.get('hash')} != {hash_})")

    def save() -> None:
        _save_atomic({"hash": hash_, "step": state.step, "losses": state.losses, "elapsed_s": state.elapsed_s,
                      "modules": {n: m.state_dict() for n, m in modules.items()},
                      "optimizer": optimizer.state_dict(), "ema": ema.state_dict() if ema is not None else {}}, ckpt)

    tty = progress and BARS and sys.stderr.isatty()
    bar = tqdm(total=steps, initial=state.step, desc=desc, unit="step", disable=not tty, dynamic_ncols=True)
    last_save = time.monotonic()
    window: list[float] = []
    session_start, session_steps = time.monotonic(), 0
    for m in modules.values():
        m.train()
    while state.step < steps and (stop_after is None or session_steps < stop_after):
        t0 = time.monotonic()
        for group in optimizer.param_groups:
            group["lr"] = lr(state.step)
        optimizer.zero_grad(set_to_none=True)
        loss = step_fn(state.step)
        optimizer.step()
        if ema is not None:
            ema.update()
        state.step += 1
        session_steps += 1
        state.elapsed_s += time.monotonic() - t0
        window.append(loss)
        if len(window) == log_every or state.step == steps:
            state.losses.append(sum(window) / len(window))
            window = []
            if not tty and progress:
                rate = session_steps / max(1e-9, time.monotonic() - session_start)
                log(f"{desc}: step {state.step}/{steps} loss {state.losses[-1]:.4f} "
                    f"({rate:.2f} steps/s, ~{(steps - state.step) / max(rate, 1e-9) / 60:.1f} min left)")
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if time.monotonic() - last_save > ckpt_every_s or state.step == steps:
            save()
            last_save = time.monotonic()
    if session_steps and state.step < steps:
        save()  # interrupted on purpose (stop_after): keep the progress
    bar.close()
    for m in modules.values():
        m.eval()
    return state


def write_recipe(folder: Path, kind: str, recipe: Any, extra: dict | None = None) -> None:
    """recipe.json: the recipe that made a model folder, its hash, and how it went."""
    import diffusers
    import transformers

    info = {"kind": kind, "hash": recipe_hash(recipe), "recipe": to_dict(recipe),
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                         "transformers": transformers.__version__}}
    info.update(extra or {})
    (folder / "recipe.json").write_text(json.dumps(info, indent=1, sort_keys=True))


def read_recipe(folder: Path) -> dict | None:
    path = Path(folder) / "recipe.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def threads(n: int | None) -> None:
    """Use `n` intra-op threads (None: leave torch's default)."""
    if n:
        torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# The pretraining command


def _job(kind: str, size: str, out: Path | None, force: bool, progress: bool, threads_: int,
         worker: bool = False, device: str | None = None, overrides: tuple[str, ...] = ()) -> tuple[str, float]:
    """One pretraining job: 'teacher', 'pool' (the critics' examples that need no teacher) or
    'critic'. Returns (name, wall seconds). In a worker process progress goes to log lines."""
    global BARS
    from harness.toyworld import assets

    if worker:
        BARS = False
        threads(threads_)
    teacher, critics = assets.recipes_with(overrides)
    t0 = time.monotonic()
    if kind == "teacher":
        name, folder = "teacher", assets.ensure_teacher(teacher, root=out, force=force, progress=progress, device=device)
    elif kind == "pool":
        name, folder = "critic-data", assets.critic_pool(critics[size], root=out, part="base", progress=progress)
    else:
        name, folder = f"critic-{size}", assets.ensure_critic(size, critics[size], root=out, force=force, progress=progress,
                                                               device=device, teacher_recipe_=teacher)
    took = time.monotonic() - t0
    if kind != "pool":
        log(f"{name}: {folder} ({took / 60:.1f} min)")
    return name, took


def pretrain(only: str | None = None, *, force: bool = False, out: Path | None = None, sizes: tuple[str, ...] | None = None,
             jobs: int = 2, threads_per_job: int = 1, progress: bool = True, device: str | None = None,
             overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Build the teacher and/or the critics (in the cache, or in `out`, e.g. the package's
    pretrained/ folder when shipping), `jobs` at a time in worker processes of `threads_per_job`
    torch threads each (small models run faster as parallel single-threaded jobs than as one
    multi-threaded one): the teacher alongside the critics' teacher-free examples, then the
    critics, largest first. `device`: where the models train ('cuda' on a GPU; default CPU).
    `overrides`: changes to the recipes (assets.recipes_with); such models go to `out` only, since
    runs look up the current recipes. Returns and prints wall times."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    from harness.toyworld.critics import SIZES

    if only not in (None, "teacher", "critics"):
        raise ValueError(f"--only must be 'teacher' or 'critics', got {only!r}")
    overrides = tuple(overrides)
    if overrides and out is None:
        raise ValueError("recipes changed with --set are not the ones runs look up: write them to a folder of "
                         "their own with --out DIR (and measure them with evaluate --dir DIR --set ...)")
    sizes = tuple(s for s in SIZES[::-1] if s in (sizes or SIZES))
    load_start = os.getloadavg()
    start = time.monotonic()
    from harness.toyworld import assets

    critics = [("critic", s) for s in sizes] if only in (None, "critics") else []
    _, critic_recipes = assets.recipes_with(overrides)  # bad keys fail before any work
    needs_teacher = any(critic_recipes[s].data.p_teacher > 0 for s in sizes)
    stages: list[list[tuple[str, str]]] = []
    if only == "teacher" or (only is None and needs_teacher):
        stages.append([("teacher", "")] + ([("pool", sizes[0])] if critics else []))
        stages.append(critics)
    elif only is None:  # the critics do not need the teacher: train everything side by side
        stages.append([("teacher", ""), *critics])
    else:
        stages.append(critics)
    stages = [s for s in stages if s]
    times: dict[str, float] = {}
    if jobs <= 1:
        threads(threads_per_job)
        for stage in stages:
            for kind, size in stage:
                name, took = _job(kind, size, out, force, progress, threads_per_job, device=device, overrides=overrides)
                times[name] = took
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            for stage in stages:
                futures = [pool.submit(_job, kind, size, out, force, progress, threads_per_job, True, device, overrides)
                           for kind, size in stage]
                for f in futures:
                    name, took = f.result()
                    times[name] = took
    summary = {"wall_s": {k: round(v, 1) for k, v in times.items()}, "total_wall_s": round(time.monotonic() - start, 1),
               "jobs": jobs, "threads_per_job": threads_per_job, "cpus": os.cpu_count(), "device": device or "cpu",
               "set": list(overrides),
               "loadavg_start": [round(v, 2) for v in load_start], "loadavg_end": [round(v, 2) for v in os.getloadavg()]}
    log(f"pretraining done in {summary['total_wall_s'] / 60:.1f} min wall ({jobs} jobs; load average "
        f"{summary['loadavg_start'][0]} at the start, {summary['loadavg_end'][0]} at the end, on {summary['cpus']} CPUs)")
    if out is not None:
        path = Path(out) / "recipe.json"
        earlier = (json.loads(path.read_text()) if path.exists() else {}).get("pretrain", {})
        runs = earlier.get("runs", []) + [summary]  # one entry per command (e.g. --only teacher, then critics)
        wall_s = {name: s for run in runs for name, s in run["wall_s"].items()}  # each model's latest
        _write_summary(Path(out), {"pretrain": {**earlier, "runs": runs, "wall_s": wall_s}})
    return summary


def _write_summary(root: Path, update: dict[str, Any]) -> None:
    """root/recipe.json: the hashes of the models in `root`, plus the blocks of `update` (each
    replacing the block of that name: the callers merge what they keep)."""
    path = root / "recipe.json"
    info = json.loads(path.read_text()) if path.exists() else {}
    models = {}
    for sub in sorted(root.iterdir()):
        rec = read_recipe(sub) if sub.is_dir() else None
        if rec is not None:
            models[sub.name] = {"hash": rec["hash"], "train_seconds": rec.get("train", {}).get("seconds")}
    info.update(update)
    info["models"] = models
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(info, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _quality(root: Path, report: dict[str, Any]) -> dict[str, Any]:
    """recipe.json's quality block after an evaluate: what it measured replaces that model's earlier
    numbers whole (so none of another model's numbers, e.g. of an earlier teacher, survive next to
    them); the models it did not measure keep theirs."""
    path = root / "recipe.json"
    old = (json.loads(path.read_text()) if path.exists() else {}).get("quality", {})
    quality = {**old, **report}
    if "critics" in report:
        quality["critics"] = {**old.get("critics", {}), **report["critics"]}
    return quality


def evaluate(root: Path | None = None, *, n_captions: int = 100, n_pairs: int = 1200, sizes: tuple[str, ...] | None = None,
             seed: int = 0, progress: bool = True, overrides: tuple[str, ...] = (),
             only: str | None = None) -> dict[str, Any]:
    """Quality of the current recipes' models (looked up like ensure_* does, or in `root`), or of
    the recipes changed by `overrides`: the teacher's parse-back rate on held-out captions (one- and
    two-object) and each critic's held-out accuracy per question kind on clean, degraded and
    teacher-drawn candidates. `only`: "teacher" or "critics" measures just those (the critics'
    held-out pairs still include teacher-drawn candidates, so the teacher is needed either way)."""
    from harness.toyworld import assets
    from harness.toyworld import critics as C
    from harness.toyworld import teacher as TT
    from harness.models.llava import LlavaCriticConfig, load_llava_critic

    report: dict[str, Any] = {}
    if overrides and root is None and assets.changes_weights(overrides):
        raise ValueError("recipes changed with --set are looked up in the folder pretrain --out wrote: give it as --dir DIR")
    t_recipe, c_recipes = assets.recipes_with(overrides)
    if overrides:
        report["set"] = list(overrides)

    def find(name: str, recipe: Any, build: Any) -> Path:
        if root is None:
            return build()
        # never retrain over the models being measured; a model of an unchanged recipe (say the
        # teacher, when only the critics were pretrained into root) may come from the shipped copy or the cache
        folder = assets.locate(name, recipe, root=root) or assets.locate(name, recipe)
        if folder is None:
            made = (read_recipe(Path(root) / name) or {}).get("hash", "nothing")
            raise ValueError(f"{Path(root) / name}: not made by the recipe to measure ({recipe_hash(recipe)}; found "
                             f"{made}); give evaluate the --set that pretrain was given (recorded in {root}/recipe.json)")
        return folder

    teacher = find(assets.TEACHER, t_recipe, lambda: assets.ensure_teacher(t_recipe, progress=progress))
    if only != "critics":
        backbone = TT.load_teacher(teacher)
        rates, s = {}, t_recipe.sampler()
        for n in (1, 2):
            rates[f"{n}_object"], _ = TT.parse_back_rate(backbone, t_recipe.world, n_captions, n, seed=seed, **s)
        p_two = t_recipe.world.p_two
        rates["world_mix"] = (1 - p_two) * rates["1_object"] + p_two * rates["2_object"]
        background = TT.background_at_pure_noise(backbone, t_recipe.world, n_captions, seed=seed)
        report["teacher"] = {"parse_back": rates, "n_per_count": n_captions, "folder": str(teacher),
                             "background_at_pure_noise": background,
                             "sampler": f"{'stochastic ' if s['stochastic'] else ''}euler {s['steps']} steps, "
                                        f"guidance {s['guidance']:g}, shift {s['shift']:g}"}
        log(f"teacher parse-back: {rates}; the captioned background at t = 1 (pure noise): {background:.2f}")
    if only == "teacher":
        if root is not None:
            _write_summary(Path(root), {"quality": _quality(Path(root), report)})
        return report

    sizes = tuple(sizes or C.SIZES)
    data = c_recipes[sizes[0]].data
    bank = C.teacher_bank(teacher, data, max(1, n_pairs // 6), split="test", seed=seed + 1)
    pool = C.build_pool(data, n_pairs, split="test", seed=seed + 1, bank=bank, p_degraded=0.4, p_teacher=0.2,
                        progress=progress)
    report["critics"] = {}
    for size in sizes:
        folder = find(assets.critic_name(size), c_recipes[size],
                      lambda: assets.ensure_critic(size, c_recipes[size], progress=progress, teacher_recipe_=t_recipe))
        critic = load_llava_critic(LlavaCriticConfig(path=str(folder)))
        params = sum(p.numel() for p in critic.model.parameters())
        preds = C.predictions(critic, pool)
        table, by_type = C.accuracy_table(preds), C.accuracy_by_edit_type(pool, preds)
        report["critics"][size] = {"params": params, "accuracy": table, "clean_by_edit_type": by_type}
        log(f"critic {size} ({params / 1e6:.2f}M params): " + "; ".join(
            f"{src} {t['all']:.3f}" for src, t in table.items()))
        log(f"critic {size}, clean, by edit type: " + ", ".join(f"{t} {a:.3f}" for t, a in by_type.items()))
    report["critics_eval"] = {"pairs": n_pairs, "split": "test", "p_degraded": 0.4, "p_teacher": 0.2}
    if root is not None:
        _write_summary(Path(root), {"quality": _quality(Path(root), report)})
    return report
