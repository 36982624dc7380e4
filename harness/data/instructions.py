"""The instruction dataset format, shared by real data and the built-in world.

A dataset is a folder:

    dataset.json          {"format": "np-edit-instructions/1", "name": ..., "count": N, "edit_types": [...]}
    instructions.jsonl    one record per line (InstructionRecord)
    images/...            the reference images y, paths relative to the folder

A paired dataset (for supervised baselines and for scoring only) is a folder with `pairs.jsonl`
(PairedRecord) and its images; NP-Edit never reads it.
"""
from __future__ import annotations

import hashlib
import json
import os
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
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: cannot read this image: {e}") from None


# ---------------------------------------------------------------------------------------------
# The image check at open: every image's header read once, then remembered while the file is unchanged


def image_problem(path: Path) -> str:
    """'' when `path` is an image whose header reads, else what is wrong with it."""
    try:
        with Image.open(path) as im:
            w, h = im.size
        return "" if w > 0 and h > 0 else f"image of size {w}x{h}"
    except FileNotFoundError:
        return "file not found"
    except IsADirectoryError:
        return "a folder, not an image"
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return f"not a readable image ({e})"


def _check_cache(folder: Path) -> Path:
    from harness.toyworld.assets import cache_root

    return cache_root() / "image-check" / (hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16] + ".json")


def check_images(folder: str | Path, rels: list[str]) -> dict[str, str]:
    """{rel: problem} for the images of a dataset whose header cannot be read. Files that passed
    before and are unchanged since (size and mtime) are not read again: the passes are cached
    per dataset under the harness cache (NPEDIT_CACHE, default ~/.cache/np-edit)."""
    folder = Path(folder)
    cache = _check_cache(folder)
    try:
        passed = json.loads(cache.read_text())
    except (OSError, json.JSONDecodeError):
        passed = {}
    bad: dict[str, str] = {}
    updated = dict(passed)
    for rel in dict.fromkeys(rels):
        path = folder / rel
        try:
            st = os.stat(path)
        except OSError:
            bad[rel] = "file not found"
            updated.pop(rel, None)
            continue
        stamp = [st.st_size, st.st_mtime_ns]
        if passed.get(rel) == stamp:
            continue
        problem = image_problem(path)
        if problem:
            bad[rel] = problem
            updated.pop(rel, None)
        else:
            updated[rel] = stamp
    if updated != passed:
        try:
            from harness.runstore import atomic_write_json

            atomic_write_json(cache, updated)
        except OSError:  # a read-only cache only costs the next open its header reads
            pass
    return bad


def record_images(record: InstructionRecord | PairedRecord) -> list[str]:
    return [record.image, record.target] if isinstance(record, PairedRecord) else [record.image]


def usable_records(folder: str | Path, records: list, *, bad_images: str = "error") -> tuple[list, int]:
    """The records whose images all read, and how many were left out. With bad_images='error' a bad
    image is an error naming it (and how many more there are)."""
    folder = Path(folder)
    bad = check_images(folder, [rel for r in records for rel in record_images(r)])
    if not bad:
        return records, 0
    if bad_images == "error":
        rel, problem = next(iter(bad.items()))
        more = f" (and {len(bad) - 1} more bad images)" if len(bad) > 1 else ""
        raise DatasetError(f"{folder / rel}: {problem}{more}; allowed: readable images "
                           f"(PNG, JPEG, WebP, ...), or data.bad_images=skip to leave out the records that use one")
    kept = [r for r in records if not any(rel in bad for rel in record_images(r))]
    return kept, len(records) - len(kept)
