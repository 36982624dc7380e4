"""Writing an instruction (or paired) dataset in the format of harness.data.instructions, atomically.

Images are stored by content (`images/<2 hex>/<16 hex>.<ext>`), so a rerun finds what an earlier run
stored and a reference shared by several records is stored once. The record file is written in one
rename and dataset.json last, so a folder whose dataset.json matches its record count is complete.
Records carry a `provenance` object (the loaders read only the format's own keys).
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from harness.data.instructions import FORMAT, PAIRED_FORMAT, InstructionRecord, PairedRecord
from harness.runstore import atomic_path, atomic_write_json

INSTRUCTION_KEYS = tuple(f.name for f in fields(InstructionRecord))
PAIRED_KEYS = tuple(f.name for f in fields(PairedRecord))


def store_image(folder: Path, sub: str, digest: str, suffix: str, data: bytes | None = None,
                src: Path | None = None, link: bool = False) -> str:
    """Store an image under `folder/sub/` by its digest (bytes `data`, or a copy or hard link of `src`);
    the relative path. An image already stored is left as it is."""
    rel = f"{sub}/{digest[:2]}/{digest[:16]}{suffix}"
    dst = folder / rel
    if dst.exists():
        return rel
    with atomic_path(dst) as tmp:
        if data is not None:
            tmp.write_bytes(data)
        elif link:
            tmp.unlink()
            try:
                os.link(src, tmp)  # type: ignore[arg-type]
            except OSError:  # another filesystem: copy
                shutil.copyfile(src, tmp)  # type: ignore[arg-type]
        else:
            shutil.copyfile(src, tmp)  # type: ignore[arg-type]
    return rel


def instruction_row(rec: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    return {**asdict(InstructionRecord(**{k: rec[k] for k in INSTRUCTION_KEYS if k in rec})), "provenance": provenance}


def paired_row(rec: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    return {**asdict(PairedRecord(**{k: rec[k] for k in PAIRED_KEYS if k in rec})), "provenance": provenance}


def write_dataset(folder: Path, rows: Iterable[dict[str, Any]], *, paired: bool = False, name: str = "",
                  meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stream `rows` (from instruction_row / paired_row) into the record file, then dataset.json; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    types: Counter = Counter()
    n = 0
    with atomic_path(folder / ("pairs.jsonl" if paired else "instructions.jsonl")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                types[row["edit_type"]] += 1
                n += 1
    info = {"format": PAIRED_FORMAT if paired else FORMAT, "name": name, "count": n, "edit_types": sorted(types),
            "per_type": dict(sorted(types.items())), **(meta or {})}
    atomic_write_json(folder / "dataset.json", info)
    return info


def read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
