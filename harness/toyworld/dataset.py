"""Export of the built-in world as an instruction dataset (for NP-Edit) and a paired dataset
(targets, for the supervised baseline and for scoring only), in the format of harness.data.instructions.

    root/instructions/   dataset.json, instructions.jsonl, images/<ref>.png, world.json
    root/pairs/          dataset.json, pairs.jsonl, images/<ref>.png, targets/<id>.png,
                         scenes.jsonl (source and target scene of every pair), world.json

Both folders are built in a temporary folder and moved into place only when complete, so a crash
never leaves a dataset that looks finished; a complete export of the same parameters is reused.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from harness.config import to_dict
from harness.data.instructions import InstructionRecord, PairedRecord, write_instructions, write_pairs
from harness.toyworld.edits import Edit, check_edit_type, make_edit, supported_edit_types
from harness.toyworld.render import render_pil
from harness.toyworld.scenes import Scene, WorldConfig, sample_scene

_SEED_STREAM = 0x7EA1  # the training export's seed stream; the benchmark uses another one


def world_edits(
    cfg: WorldConfig, n_refs: int, seed: int, edits_per_ref: int, edit_types: list[str] | None = None
) -> Iterator[tuple[int, Scene, list[Edit]]]:
    """(index, reference scene, its edits) for every reference of the training split.

    Each reference gets up to `edits_per_ref` edits of different types, the least used types so
    far first (ties broken at random), so the types stay balanced although some only apply to
    one- or two-object scenes."""
    types = list(edit_types or supported_edit_types(cfg))
    for t in types:
        check_edit_type(t)
    used = dict.fromkeys(types, 0)
    for i in range(n_refs):
        rng = np.random.default_rng([_SEED_STREAM, seed, i])
        scene = sample_scene(rng, cfg, split="train")
        ties = rng.random(len(types))
        order = sorted(range(len(types)), key=lambda k: (used[types[k]], ties[k]))
        edits: list[Edit] = []
        for k in order:
            if len(edits) == edits_per_ref:
                break
            edit = make_edit(scene, types[k], rng, cfg)
            if edit is not None:
                edits.append(edit)
                used[types[k]] += 1
        yield i, scene, edits


def export_params(cfg: WorldConfig, n_refs: int, seed: int, edits_per_ref: int,
                  edit_types: list[str] | None = None) -> dict:
    return {"world": to_dict(cfg), "n_refs": n_refs, "seed": seed, "edits_per_ref": edits_per_ref,
            "edit_types": list(edit_types or supported_edit_types(cfg))}


def dataset_name(params: dict) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return f"toyworld-{digest}"


def _complete(folder: Path, name: str) -> bool:
    """True if `folder` holds a finished export named `name`; raise if it holds a different one."""
    meta_path = folder / "dataset.json"
    if not meta_path.exists():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return False
    if meta.get("name") != name:
        raise FileExistsError(
            f"{meta_path}: holds dataset {meta.get('name')!r}, not {name!r} (other world parameters); "
            f"export to another root or delete {folder}")
    records = folder / ("instructions.jsonl" if (folder / "instructions.jsonl").exists() else "pairs.jsonl")
    n = sum(1 for line in records.read_text().splitlines() if line.strip()) if records.exists() else -1
    return n == meta.get("count")


def build_world_datasets(
    root: str | Path,
    cfg: WorldConfig,
    n_refs: int,
    seed: int,
    edits_per_ref: int = 2,
    edit_types: list[str] | None = None,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Export (or reuse) the world's instruction and paired datasets; returns (instructions_dir, pairs_dir)."""
    cfg.validate()
    if n_refs < 1 or edits_per_ref < 1:
        raise ValueError(f"n_refs and edits_per_ref must be >= 1, got {n_refs}, {edits_per_ref}")
    root = Path(root)
    inst_dir, pair_dir = root / "instructions", root / "pairs"
    params = export_params(cfg, n_refs, seed, edits_per_ref, edit_types)
    name = dataset_name(params)
    if _complete(inst_dir, name) and _complete(pair_dir, name):
        return inst_dir, pair_dir

    tmp = root / f".build-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    t_inst, t_pair = tmp / "instructions", tmp / "pairs"
    for d in (t_inst / "images", t_pair / "images", t_pair / "targets"):
        d.mkdir(parents=True)
    width = max(6, len(str(n_refs - 1)))
    instructions, pairs, scenes = [], [], []
    refs = world_edits(cfg, n_refs, seed, edits_per_ref, edit_types)
    for i, scene, edits in tqdm(refs, total=n_refs, desc="toyworld export", unit="ref",
                                disable=not (progress and sys.stderr.isatty())):
        ref = f"images/{i:0{width}d}.png"
        image = render_pil(scene, cfg)
        image.save(t_inst / ref)
        image.save(t_pair / ref)
        for k, e in enumerate(edits):
            rid = f"{i:0{width}d}-{k}"
            common = dict(id=rid, image=ref, instruction=e.instruction, edit_type=e.edit_type,
                          caption_ref=e.caption_ref, caption_edit=e.caption_edit, object=e.object)
            instructions.append(InstructionRecord(**common))
            target = f"targets/{rid}.png"
            render_pil(e.target, cfg).save(t_pair / target)
            pairs.append(PairedRecord(target=target, **common))
            scenes.append({"id": rid, "source": e.source.to_dict(), "target": e.target.to_dict()})

    for folder in (t_inst, t_pair):
        (folder / "world.json").write_text(json.dumps(params, indent=1))
    (t_pair / "scenes.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scenes))
    write_instructions(t_inst, instructions, name=name)  # dataset.json last: the folder is now complete
    write_pairs(t_pair, pairs, name=name)
    for built, final in ((t_inst, inst_dir), (t_pair, pair_dir)):
        if _complete(final, name):  # another process finished first
            continue
        shutil.rmtree(final, ignore_errors=True)
        os.replace(built, final)
    shutil.rmtree(tmp, ignore_errors=True)
    return inst_dir, pair_dir


def read_pair_scenes(pairs_dir: str | Path) -> dict[str, tuple[Scene, Scene]]:
    """id -> (source scene, target scene) of an exported paired dataset."""
    path = Path(pairs_dir) / "scenes.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found (only the built-in world's paired export has scenes)")
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            out[d["id"]] = (Scene.from_dict(d["source"]), Scene.from_dict(d["target"]))
    return out
