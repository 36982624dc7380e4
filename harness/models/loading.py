"""Loading the parts of a diffusers pipeline folder (local or hub) and preparing trainable copies,
shared by the SD3 and FLUX backbones."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn


def read_json(path: str, name: str, revision: str | None) -> dict | None:
    """A JSON file of a local folder or hub repo; None when it does not exist."""
    local = Path(path)
    if local.is_dir():
        f = local / name
        return json.loads(f.read_text()) if f.exists() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(path, name, revision=revision)).read_text())
    except EntryNotFoundError:
        return None
    except Exception as e:  # offline, unknown repo, no access: say which path failed
        raise ValueError(f"backbone.path: {path!r} is not a local folder and cannot be read from the hub ({type(e).__name__}: {e})") from e


def pipeline_components(path: str, revision: str | None, required: Sequence[str]) -> set[str]:
    """The component folders of a pipeline (from model_index.json, or the local subfolders); checks `required`."""
    if not path:
        raise ValueError("backbone.path: empty; set it to a diffusers pipeline folder or hub id")
    if Path(path).exists() and not Path(path).is_dir():
        raise ValueError(f"backbone.path: {path} is a file; expected a diffusers folder with transformer/")
    index = read_json(path, "model_index.json", revision)
    if index is not None:
        present = {k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None}
    elif Path(path).is_dir():
        present = {p.name for p in Path(path).iterdir() if p.is_dir()}
    else:
        raise ValueError(f"backbone.path: {path}: no model_index.json (not a local folder or diffusers hub repo)")
    for name in required:
        if name not in present:
            raise ValueError(f"backbone.path: {path} has no {name}/ (found: {', '.join(sorted(present)) or 'nothing'})")
    return present


def component_loader(path: str, revision: str | None) -> Callable[..., Any]:
    """load(cls, subfolder, dtype=None, dtype_kw='dtype') with errors that name the folder."""

    def load(cls: Any, sub: str, dtype: torch.dtype | None = None, dtype_kw: str = "dtype") -> Any:
        kw: dict[str, Any] = {"subfolder": sub, "revision": revision}
        if dtype is not None:
            kw[dtype_kw] = dtype
        try:
            return cls.from_pretrained(path, **kw)
        except (OSError, ValueError) as e:
            raise ValueError(f"backbone.path: cannot load {sub}/ of {path} as {cls.__name__}: {e}") from e

    return load


def make_trainable(tr: nn.Module, *, lora_rank: int, lora_alpha: float, lora_targets: list[str], use_lora: bool,
                   dtype: torch.dtype) -> None:
    """LoRA adapter (only its weights trainable, in float32) or full fine-tuning in `dtype`."""
    if use_lora:
        if lora_rank <= 0:
            raise ValueError("make_denoiser(lora=True) needs backbone.lora_rank > 0")
        from peft import LoraConfig

        tr.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_alpha or lora_rank, target_modules=list(lora_targets),
                                  init_lora_weights=True))
        for name, p in tr.named_parameters():
            p.requires_grad_("lora_" in name)
            if "lora_" in name:
                p.data = p.data.float()
    else:
        if tr.dtype != dtype:
            tr.to(dtype)
        tr.requires_grad_(True)
