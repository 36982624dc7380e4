"""Drawing training batches from an instruction (or paired) dataset.

Batches are a pure function of (seed, step, stream): resuming at a step draws exactly the batches an
uninterrupted run would have drawn, and the data position is the step itself.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from harness.data.instructions import (DatasetError, InstructionRecord, PairedRecord, load_image, read_instructions,
                                       read_pairs, usable_records)

# What a dataset opened without an explicit `bad_images` does with an unreadable image: the run's
# data.bad_images, set by the training loop around building its method (see `bad_images_policy`).
_BAD_IMAGES: ContextVar[str] = ContextVar("bad_images", default="error")


@contextmanager
def bad_images_policy(policy: str):
    token = _BAD_IMAGES.set(policy)
    try:
        yield
    finally:
        _BAD_IMAGES.reset(token)


def step_generator(seed: int, step: int, stream: str) -> torch.Generator:
    """A CPU generator seeded by (seed, step, stream), independent of everything drawn before."""
    h = hashlib.sha256(f"{seed}/{step}/{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


def to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """Resize the short side to `size` (bicubic), centre-crop, map to [-1, 1]: (3, size, size)."""
    w, h = img.size
    if (w, h) != (size, size):
        s = size / min(w, h)
        img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    arr = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy())
    return arr.permute(2, 0, 1).float() / 127.5 - 1.0


def to_pil(x: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> PIL."""
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


def type_distribution(types: list[str], probs: dict[str, float]) -> dict[str, float]:
    """Listed types get their probability; the others share the rest uniformly (App. E)."""
    listed = {t: p for t, p in probs.items() if t in types}
    rest = [t for t in types if t not in listed]
    remaining = 1.0 - sum(listed.values())
    out = dict(listed)
    if rest:
        out.update({t: remaining / len(rest) for t in rest})
    total = sum(out.values())
    if total <= 0:
        raise DatasetError(f"type probabilities {probs} leave nothing to sample among {types}")
    return {t: p / total for t, p in out.items()}


@dataclass
class Batch:
    records: list[Any]
    images: torch.Tensor  # (B, 3, S, S) references y in [-1, 1]
    targets: torch.Tensor | None = None  # paired data only


class _Images:
    """Reference images loaded on first use and kept (small worlds fit in memory; real sets stream)."""

    def __init__(self, folder: Path, size: int, cache: bool):
        self.folder, self.size, self.cache = folder, size, cache
        self._store: dict[str, torch.Tensor] = {}

    def __call__(self, rel: str) -> torch.Tensor:
        if rel in self._store:
            return self._store[rel]
        x = to_tensor(load_image(self.folder, rel), self.size)
        if self.cache:
            self._store[rel] = x
        return x


def subset_by_reference(records: list, fraction: float, seed: int) -> list:
    """A seeded subset of the unique reference images (the paper's data-scale axis); keeps their records."""
    if fraction >= 1.0:
        return records
    refs = sorted({r.image for r in records})
    g = torch.Generator().manual_seed(seed)
    keep_n = max(1, math.ceil(fraction * len(refs)))
    keep = {refs[i] for i in torch.randperm(len(refs), generator=g)[:keep_n].tolist()}
    return [r for r in records if r.image in keep]


class InstructionData:
    def __init__(self, folder: str | Path, *, image_size: int, fraction: float = 1.0, seed: int = 0,
                 edit_types: list[str] | None = None, type_probs: dict[str, float] | None = None,
                 cache_images: bool = True, paired: bool = False, bad_images: str | None = None):
        self.folder = Path(folder)
        records: list = read_pairs(self.folder) if paired else read_instructions(self.folder)
        records, self.n_skipped = usable_records(self.folder, records, bad_images=bad_images or _BAD_IMAGES.get())
        if self.n_skipped:
            warnings.warn(f"{self.folder}: left out {self.n_skipped} records whose images cannot be read "
                          f"(data.bad_images=skip)", stacklevel=2)
        if edit_types:
            unknown = sorted(set(edit_types) - {r.edit_type for r in records})
            if unknown:
                raise DatasetError(f"{self.folder}: data.edit_types {unknown} not in the dataset "
                                   f"(it has: {sorted({r.edit_type for r in records})})")
            records = [r for r in records if r.edit_type in edit_types]
        self.records = subset_by_reference(records, fraction, seed)
        if not self.records:
            raise DatasetError(f"{self.folder}: no records left to train on")
        self.by_type: dict[str, list] = {}
        for r in self.records:
            self.by_type.setdefault(r.edit_type, []).append(r)
        self.types = sorted(self.by_type)
        missing = sorted(set(type_probs or {}) - set(self.types))
        if missing and not edit_types:
            warnings.warn(f"{self.folder}: data.type_probs names types the data lacks: {missing}", stacklevel=2)
        self.probs = type_distribution(self.types, type_probs or {})
        self.seed = seed
        self.paired = paired
        self.images = _Images(self.folder, image_size, cache_images)

    @property
    def n_references(self) -> int:
        return len({r.image for r in self.records})

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        p = torch.tensor([self.probs[t] for t in self.types])
        type_idx = torch.multinomial(p, n, replacement=True, generator=generator).tolist()
        recs = []
        for ti in type_idx:
            pool = self.by_type[self.types[ti]]
            recs.append(pool[int(torch.randint(len(pool), (1,), generator=generator))])
        images = torch.stack([self.images(r.image) for r in recs])
        targets = torch.stack([self.images(r.target) for r in recs]) if self.paired else None
        return Batch(recs, images, targets)

    def batch(self, step: int, n: int, stream: str = "main") -> Batch:
        return self.sample(n, step_generator(self.seed, step, f"data/{stream}"))


__all__ = ["Batch", "InstructionData", "bad_images_policy", "InstructionRecord", "PairedRecord", "step_generator", "subset_by_reference",
           "to_pil", "to_tensor", "type_distribution"]
