"""Tiny randomly initialised models of the real classes + a small world dataset, for method tests."""
from __future__ import annotations

from pathlib import Path

from harness.models.tiny import save_tiny_llava, save_tiny_sd3
from harness.toyworld import scenes, text
from harness.toyworld.dataset import build_world_datasets
from methods import questions as Q
from methods.np_edit import NPEditConfig


def world_vocab() -> list[str]:
    cfg = scenes.WorldConfig()
    words = set(text.vocabulary(cfg))
    for s in NPEditConfig().noop_instructions:
        words |= set(text.words(s))
    return sorted(words)


def critic_vocab() -> list[str]:
    words = set(world_vocab())
    for tmpl in (Q.EDIT_VERIFICATION, Q.IDENTITY_PRESERVATION, Q.REMOVAL, Q.CUSTOMIZATION_CONTEXT, Q.CUSTOMIZATION_IDENTITY):
        words |= set(text.words(tmpl.replace("{instruction}", "").replace("{object}", "")))
    return sorted(words | {"yes", "no"})


def build(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    sd3 = root / "sd3"
    if not sd3.exists():
        save_tiny_sd3(sd3, vocab=world_vocab(), image_size=32, patch_size=4, text_max_length=48)
    llava = root / "llava"
    if not llava.exists():
        save_tiny_llava(llava, vocab=critic_vocab(), image_size=32, patch_size=8)
    inst, pairs = build_world_datasets(root / "world", scenes.WorldConfig(), n_refs=120, seed=0, edits_per_ref=2,
                                       progress=False)
    return {"sd3": sd3, "llava": llava, "instructions": inst, "pairs": pairs}


def run_config(paths: dict[str, Path], method: dict, **sections) -> dict:
    cfg = {
        "method": method,
        "model": {"backbone": {"name": "sd3", "path": str(paths["sd3"])},
                  "critic": {"name": "llava", "path": str(paths["llava"])}},
        "data": {"path": str(paths["instructions"]), "paired_path": str(paths["pairs"]), "batch_size": 2},
        "train": {"steps": 4, "lr": 1e-3, "ckpt_every": 2, "log_every": 1},
        "eval": {"benchmarks": [{"name": "shapes_edit", "n_per_type": 1}]},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


_SHARED: dict[str, dict[str, Path]] = {}


def shared(tmp_path_factory) -> dict[str, Path]:
    """One tiny world per test session, for test modules that only read it."""
    if "paths" not in _SHARED:
        _SHARED["paths"] = build(tmp_path_factory.getbasetemp() / "tiny_world_shared")
    return _SHARED["paths"]
