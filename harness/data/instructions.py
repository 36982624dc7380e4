"""The instruction dataset format, shared by real data and the built-in world.

A dataset is a folder:

    dataset.json          {"format": "np-edit-instructions/1", "name": ..., "count": N, "edit_types": [...]}
    instructions.jsonl    one record per line (InstructionRecord)
    images/...            the reference images y, paths relative to the folder

A paired dataset (for supervised baselines and for scoring only) is a folder with `pairs.jsonl`
(PairedRecord) and its images; NP-Edit never reads it.
"""
from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from PIL import Image

FORMAT = "np-edit-instructions/1"
PAIRED_FORMAT = "np-edit-pairs/1"


@dataclass
class InstructionRecord:
    id: str
    image: str  # reference image y, relative path
    instruction: str  # edit instruction c
    edit_type: str  # color | texture | adjust | add | remove | replace | background | style | action | text | customization
    caption_ref: str  # c^y: caption of the reference image
    caption_edit: str  # c^x: caption of the edited image
    object: str = ""  # the object the edit is about (used by the removal and customization questions)


@dataclass
class PairedRecord:
    id: str
    image: str
    instruction: str
    target: str  # the edited image x, relative path
    edit_type: str = ""
    caption_ref: str = ""
    caption_edit: str = ""
    object: str = ""


class DatasetError(ValueError):
    pass


def _read_jsonl(path: Path, cls: type) -> list:
    if not path.exists():
        raise DatasetError(f"{path}: file not found (expected one JSON record per line with keys: "
                           f"{', '.join(f.name for f in fields(cls))})")
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{lineno}: not valid JSON: {e}") from None
        if not isinstance(rec, dict):
            raise DatasetError(f"{path}:{lineno}: expected a JSON object")
        missing = sorted(required - rec.keys())
        if missing:
            raise DatasetError(f"{path}:{lineno}: missing keys {missing}")
        out.append(cls(**{k: v for k, v in rec.items() if k in names}))
    return out


def read_instructions(folder: str | Path) -> list[InstructionRecord]:
    return _read_jsonl(Path(folder) / "instructions.jsonl", InstructionRecord)


def read_pairs(folder: str | Path) -> list[PairedRecord]:
    return _read_jsonl(Path(folder) / "pairs.jsonl", PairedRecord)


def write_jsonl(path: Path, records: list) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))
    tmp.replace(path)


def write_instructions(folder: str | Path, records: list[InstructionRecord], name: str = "") -> None:
    folder = Path(folder)
    write_jsonl(folder / "instructions.jsonl", records)
    meta = {"format": FORMAT, "name": name, "count": len(records),
            "edit_types": sorted({r.edit_type for r in records})}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1))


def write_pairs(folder: str | Path, records: list[PairedRecord], name: str = "") -> None:
    folder = Path(folder)
    write_jsonl(folder / "pairs.jsonl", records)
    meta = {"format": PAIRED_FORMAT, "name": name, "count": len(records)}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1))


def load_image(folder: str | Path, rel: str) -> Image.Image:
    path = Path(folder) / rel
    if not path.exists():
        raise DatasetError(f"{path}: image not found (referenced by {Path(folder).name})")
    return Image.open(path).convert("RGB")
