r"""Importers of public editing datasets: instruction data for NP-Edit (targets dropped) and, where the
source has targets, paired data for the SFT baseline, both in the harness's format.

    python -m harness.data import pico-banana sft.jsonl --images ROOT --out DATASET
    python -m harness.data import gpt-image-edit ROOT --out DATASET
    python -m harness.data import generic rows.jsonl|.csv|.parquet|DATASETS_DIR --out DATASET \
        --image-column image --instruction-column instruction (--type-column edit_type | --edit-type color) \
        [--target-column edited] [--caption-ref-column c] [--caption-edit-column c] [--object-column o]

Writes DATASET/ (instructions.jsonl, images/) and, with targets, DATASET-pairs/ (pairs.jsonl, images/,
targets/; --pairs-out to choose). Train with data.path=DATASET and data.paired_path=DATASET-pairs.

pico-banana (apple/pico-banana-400k, README and map_openimage_url_to_local.py): a JSONL manifest
(sft.jsonl; preference.jsonl reads the same), one object per line with `open_image_input_url`, `text`
(the Gemini-written instruction), `summarized_text` (the short one; --instruction-key summarized_text),
`output_image` (the edited image, relative to the release's root, e.g. images/positive-edit/1.png) and
`edit_type` (one of the 35 operations of the dataset paper's Table 1). The source images are Open Images
files the dataset does not ship: the dataset's map_openimage_url_to_local.py adds `local_input_image`,
which this importer reads (absolute, or relative to --images ROOT). Multi-turn records (`files: [...]`)
are not single edits and are refused.

gpt-image-edit (UCSC-VLAA/GPT-Image-Edit-1.5M, dataset card): per-source folders gpt-edit/{hqedit,
omniedit,ultraedit} (the layout nupurkmr9/npedit's scripts/download_datasets.sh extracts), and metadata
records with `dataset_source` (hqedit | omniedit | ultraedit), `task` (the source's task name, e.g. edit,
addition, add), `input` and `output` (image paths relative to the source folder, e.g. input/<id>.png),
`instruction`, `instruction_type` (original | rewrite | complex) and `input_description` (a description
of the input image: c^y); OmniEdit adds `instruction_original`. SRC is a metadata file (.json list or
.jsonl) or a folder holding them; the card does not fix where they lie, so a folder is searched for
.json/.jsonl files whose records have these keys, and image paths are resolved against --images, else
the metadata file's folder and its parents.

Edit types are mapped to the paper's eleven (harness.data.edit_types): the table of each format below,
then --map SOURCE=TYPE (or SOURCE=drop) to override it; records of an unmapped type are counted per
source type and left out. A removal needs the removed object (App. E asks "does the image have
{object}"): taken from the source when it has one, else read from the instruction ("remove the red car
from ..." -> "red car"), else the record is counted and left out.

Captions: NP-Edit needs c^y (the identity warmup) and c^x (the DMD teacher's text). Where the source has
none (pico-banana has neither, GPT-Image-Edit has no c^x), --vlm CONFIG writes them with the builder's
steps: c^y with the caption prompt, c^x with App. D's validity question (a record judged invalid is
dropped and counted). Without --vlm they are left empty and counted, with a warning.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.data import sources
from harness.data.edit_types import EDIT_TYPES, alias_table, normalize, parse_type, removed_object
from harness.data.parallel import ordered_map
from harness.data.writer import instruction_row, paired_row, store_image, write_dataset
from harness.runstore import atomic_write_json

REPORT = "import_report.json"


class ImportError_(ValueError):  # noqa: N801 (ImportError is a builtin)
    pass


# ---------------------------------------------------------------------------------------------
# Edit-type tables

# pico-banana-400k: the 35 operations of Table 1 of its paper (arXiv 2510.19808), keyed by normalize().
# The manifest spells a few of them differently (e.g. "Photo to cartoon/sketch/comic"); normalize() makes
# punctuation, arrows and case irrelevant, and both spellings seen in public code are listed.
_PICO = {
    "Change overall color tone (warm ↔ cool)": None,  # global tone, not the paper's local color change
    "Add film grain or vintage filter": "style",
    "Add a new object to the scene": "add",
    "Remove an existing object": "remove",
    "Replace one object category with another": "replace",
    "Change an object's attribute (e.g., color/material)": None,  # color or texture: see _pico_attribute
    "Relocate an object (change its position/spatial relation)": None,
    "Change the size/shape/orientation of an object": "adjust",
    "Add new scene context/background": "background",
    "Apply seasonal transformation (summer ↔ winter)": None,
    "Change weather conditions (sunny/rainy/snowy)": None,
    "Adjust global lighting (e.g., golden hour, fluorescent)": None,
    "Adjust global lighting (golden hour/fluorescent)": None,
    "Strong artistic style transfer (e.g., Van Gogh/anime/etc.)": "style",
    "Photo → cartoon/sketch/comic": "style",
    "Photo to cartoon/sketch/comic": "style",
    "Modern ↔ historical style/look": "style",
    "Replace text in signs/posters/billboards": "text",
    "Add new (handwritten/printed/etc.) text": "text",
    "Change font style or color of visible text (if present)": "text",
    "Change font style or color of visible text if there is text": "text",
    "Translate written text into other languages": "text",
    "Add/Remove/Replace accessories (glasses, hats, jewelry, masks)": None,
    "Clothing edit (change color/outfit)": None,
    "Pose tweak (minor plausible change)": "action",
    "Modify expressions (smile, frown, neutral)": None,
    "Change age/gender": None,
    "Convert person to 2D anime/manga style (identity-preserving)": "style",
    "Convert person to Pixar/Disney-like 3D cartoon look": "style",
    "Convert person to Western comic cel-shaded style": "style",
    "Line-art ink sketch of the person": "style",
    "Sticker-ify the person (bold outline, white border)": "style",
    "Caricature with mild feature exaggeration (keep identity)": "style",
    "Funko-Pop–style toy figure of the person": "style",
    "LEGO-minifigure rendition of the person": "style",
    "\u201cSimpsonize\u201d the person (yellow-skin cartoon style)": "style",
    "Zoom in": None,
    "Outpainting (extend canvas beyond boundaries)": None,
}
PICO_TYPES = {normalize(k): v for k, v in _PICO.items()}
_ATTRIBUTE = normalize("Change an object's attribute (e.g., color/material)")
_COLOR_WORDS = re.compile(r"\b(colou?r|red|orange|yellow|green|blue|purple|violet|pink|brown|black|white|gr[ae]y|gold(en)?|"
                          r"silver|beige|teal|turquoise|navy|maroon|crimson|scarlet|magenta|cyan)\b", re.I)
_MATERIAL_WORDS = re.compile(r"\b(material|texture|wood(en)?|metal(lic)?|marble|glass|leather|fabric|velvet|denim|"
                             r"stone|brick|plastic|ceramic|porcelain|chrome|copper|bronze|steel|wool(len)?|silk|"
                             r"concrete|rubber|fur|knitted|woven)\b", re.I)


def _pico_attribute(instruction: str) -> str | None:
    """pico-banana's 'attribute (color/material)' operation is the paper's color or texture edit: the one
    its instruction's words name (colour words only -> color, material words only -> texture), else unmapped."""
    color, material = bool(_COLOR_WORDS.search(instruction)), bool(_MATERIAL_WORDS.search(instruction))
    return "color" if color and not material else "texture" if material and not color else None


# GPT-Image-Edit-1.5M `task` values: the card names "edit", "addition", "add"; the others are the
# sources' own task names (OmniEdit's seven tasks, UltraEdit's), matched by the words they contain.
_GPT_WORDS = (  # first match wins: 'background_swap' is a background edit, not a replacement
    (("remov", "delet", "eras"), "remove"),
    (("background", "bg"), "background"),
    (("swap", "replac"), "replace"),
    (("addition", "add", "insert"), "add"),
    (("style",), "style"),
    (("colour", "color"), "color"),
    (("texture", "material"), "texture"),
    (("text",), "text"),
    (("action", "motion", "pose"), "action"),
    (("shape", "size", "adjust"), "adjust"),
)


def gpt_task_type(task: str) -> str | None:
    words = normalize(task).split()
    for keys, t in _GPT_WORDS:
        if any(w.startswith(k) for w in words for k in keys):
            return t
    return None  # 'edit', 'generate' (HQ-Edit has no per-record type), attribute/environment changes, ...


# ---------------------------------------------------------------------------------------------
# Records of a source


@dataclass
class Cell:
    """An image of a source record: a file, or bytes (read lazily)."""

    name: str
    path: Path | None = None
    read: Callable[[], bytes] | None = None
    suffix: str = ""

    def bytes(self) -> bytes:
        return self.path.read_bytes() if self.path is not None else self.read()  # type: ignore[misc]


@dataclass
class SourceRecord:
    name: str  # where it is in the source (file:line)
    source_id: str
    ref: Cell
    instruction: str
    source_type: str
    edit_type: str | None = None  # the format's own mapping (before --map)
    target: Cell | None = None
    caption_ref: str = ""
    caption_edit: str = ""
    object: str = ""
    skip: str = ""  # a reason this record cannot be imported (counted and named)


def _cell(value: Any, base: Path, where: str) -> Cell:
    if isinstance(value, str):
        p = Path(value)
        p = p if p.is_absolute() else base / p
        return Cell(str(p), path=p, suffix=p.suffix.lower())
    read, suffix, name = sources.image_reader(value, base, where)
    return Cell(name, read=read, suffix=suffix)


def _why(e: BaseException) -> str:
    return "file not found" if isinstance(e, FileNotFoundError) else sources.unreadable(e)


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:80] or hashlib.sha256(text.encode()).hexdigest()[:16]


def pico_records(src: Path, images: Path | None, instruction_key: str, split: str | None) -> tuple[int, Iterator[SourceRecord]]:
    rows = sources.open_rows(src, split)
    root = images or src.parent

    def it() -> Iterator[SourceRecord]:
        for name, row in rows:
            if "files" in row and "output_image" not in row:
                raise ImportError_(f"{src}: {name}: a multi-turn record (files: [...]); import the single-turn "
                                   "manifest (sft.jsonl or preference.jsonl)")
            missing = [k for k in ("output_image", "edit_type", instruction_key) if not row.get(k)]
            if missing:
                raise ImportError_(f"{src}: {name}: missing keys {missing} (a pico-banana record has open_image_input_url, "
                                   "text, summarized_text, output_image, edit_type)")
            out = str(row["output_image"])
            rec = SourceRecord(name, _safe_id(out.rsplit(".", 1)[0]), Cell(""), str(row[instruction_key]),
                               str(row["edit_type"]), target=_cell(out, root, name))
            t = normalize(rec.source_type)
            rec.edit_type = _pico_attribute(rec.instruction) if t == _ATTRIBUTE else PICO_TYPES.get(t)
            local = row.get("local_input_image")
            if not local:
                rec.skip = ("no local_input_image: map open_image_input_url to your Open Images copy with the "
                            "dataset's map_openimage_url_to_local.py")
            else:
                rec.ref = _cell(str(local), root, name)
            yield rec

    return rows.count, it()


_GPT_KEYS = {"input", "output", "instruction"}


def _metadata_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    found = []
    for p in sorted(list(src.rglob("*.json")) + list(src.rglob("*.jsonl"))):
        try:
            rows = sources.open_rows(p)
            first = next(iter(rows), None)
        except (sources.SourceError, UnicodeDecodeError, OSError):
            continue
        if first is not None and _GPT_KEYS <= first[1].keys():
            found.append(p)
    if not found:
        raise ImportError_(f"{src}: no GPT-Image-Edit metadata (.json/.jsonl records with keys "
                           f"{sorted(_GPT_KEYS)}) under it; pass the metadata file as SRC")
    return found


def _image_root(meta: Path, first: dict[str, Any], images: Path | None, top: Path) -> Path:
    if images is not None:
        return images
    for d in [meta.parent, *meta.parents]:
        if (d / str(first["input"])).exists():
            return d
        if d == top or d == d.parent:
            break
    return meta.parent


def gpt_records(src: Path, images: Path | None, split: str | None) -> tuple[int, Iterator[SourceRecord]]:
    metas = _metadata_files(src)
    opened = [(m, sources.open_rows(m, split)) for m in metas]
    top = src if src.is_dir() else src.parent

    def it() -> Iterator[SourceRecord]:
        for meta, rows in opened:
            root: Path | None = None
            for name, row in rows:
                missing = sorted(_GPT_KEYS - row.keys())
                if missing:
                    raise ImportError_(f"{meta}: {name}: missing keys {missing} (a GPT-Image-Edit record has dataset_source, "
                                       "task, input, output, instruction, instruction_type, input_description)")
                root = root or _image_root(meta, row, images, top)
                source = str(row.get("dataset_source") or "")
                task = str(row.get("task") or "")
                sid = str(row.get("id") or f"{meta.stem}-{Path(str(row['output'])).stem}")
                yield SourceRecord(f"{meta.name}:{name}", _safe_id(f"{source}-{sid}"), _cell(row["input"], root, name),
                                   str(row["instruction"]), f"{source}/{task}" if source else task,
                                   gpt_task_type(task), target=_cell(row["output"], root, name),
                                   caption_ref=str(row.get("input_description") or ""))

    return sum(r.count for _, r in opened), it()


@dataclass
class GenericColumns:
    image: str = "image"
    instruction: str = "instruction"
    type: str | None = None
    edit_type: str | None = None  # one type for every row when there is no type column
    target: str | None = None
    caption_ref: str | None = None
    caption_edit: str | None = None
    object: str | None = None
    id: str | None = None


def generic_records(src: Path, cols: GenericColumns, split: str | None) -> tuple[int, Iterator[SourceRecord]]:
    if not cols.type and not cols.edit_type:
        raise ImportError_("generic import: give --type-column (a column of edit types) or --edit-type TYPE "
                           f"(one of {', '.join(EDIT_TYPES)}) for every row")
    rows = sources.open_rows(src, split)
    sources.require_columns(rows, src, {"--image-column": cols.image, "--instruction-column": cols.instruction,
                                        "--type-column": cols.type, "--target-column": cols.target,
                                        "--caption-ref-column": cols.caption_ref, "--caption-edit-column": cols.caption_edit,
                                        "--object-column": cols.object, "--id-column": cols.id})
    aliases = alias_table()

    def text(row: dict[str, Any], col: str | None) -> str:
        v = row.get(col) if col else None
        return "" if v is None else str(v).strip()

    def it() -> Iterator[SourceRecord]:
        for name, row in rows:
            source_type = text(row, cols.type) if cols.type else str(cols.edit_type)
            target = row.get(cols.target) if cols.target else None
            yield SourceRecord(name, _safe_id(text(row, cols.id) or f"{src.stem}-{name}"),
                               _cell(row.get(cols.image), rows.base, name), text(row, cols.instruction), source_type,
                               parse_type(source_type, aliases),
                               target=_cell(target, rows.base, name) if target not in (None, "") else None,
                               caption_ref=text(row, cols.caption_ref), caption_edit=text(row, cols.caption_edit),
                               object=text(row, cols.object))

    return rows.count, it()


# ---------------------------------------------------------------------------------------------
# Import


@dataclass
class ImportOptions:
    format: str
    src: Path
    out: Path
    pairs_out: Path | None = None
    images: Path | None = None
    type_map: dict[str, str | None] = field(default_factory=dict)  # source type (normalised) -> type | None (drop)
    instruction_key: str = "text"
    columns: GenericColumns = field(default_factory=GenericColumns)
    link: bool = False
    limit: int = 0
    split: str | None = None
    name: str = ""
    workers: int = 4
    pairs: bool = True  # False: targets are neither read nor written (e.g. pico-banana without its edited images)


def parse_map(items: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for it in items:
        if "=" not in it:
            raise ImportError_(f"--map {it!r}: expected SOURCE_TYPE=TYPE (TYPE one of {', '.join(EDIT_TYPES)}, or drop)")
        k, v = it.rsplit("=", 1)
        v = v.strip()
        if v != "drop" and v not in EDIT_TYPES:
            raise ImportError_(f"--map {it!r}: unknown type {v!r} (allowed: {', '.join(EDIT_TYPES)}, drop)")
        out[normalize(k)] = None if v == "drop" else v
    return out


def records(opts: ImportOptions) -> tuple[int, Iterator[SourceRecord]]:
    if opts.format == "pico-banana":
        if opts.instruction_key not in ("text", "summarized_text"):
            raise ImportError_(f"--instruction-key {opts.instruction_key!r}: pico-banana has text | summarized_text")
        return pico_records(opts.src, opts.images, opts.instruction_key, opts.split)
    if opts.format == "gpt-image-edit":
        return gpt_records(opts.src, opts.images, opts.split)
    if opts.format == "generic":
        return generic_records(opts.src, opts.columns, opts.split)
    raise ImportError_(f"unknown format {opts.format!r} (allowed: {', '.join(FORMATS)})")


FORMATS = ("pico-banana", "gpt-image-edit", "generic")


@dataclass
class _Done:
    """One source record after import: the rows to write (or why not) and its counts."""

    name: str
    inst: dict[str, Any] | None = None
    pair: dict[str, Any] | None = None
    counts: Counter = field(default_factory=Counter)
    problem: dict[str, str] | None = None  # for the report


class Importer:
    def __init__(self, opts: ImportOptions, vlm: Any = None, prompts: Any = None, *, progress: bool = True):
        self.opts, self.vlm, self.P, self.progress = opts, vlm, prompts, progress
        self.pairs_out = opts.pairs_out or opts.out.with_name(opts.out.name + "-pairs")

    def edit_type(self, rec: SourceRecord) -> str | None:
        key = normalize(rec.source_type)
        tail = normalize(rec.source_type.rsplit("/", 1)[-1])  # gpt-image-edit: 'omniedit/addition' or just 'addition'
        for k in (key, tail):
            if k in self.opts.type_map:
                return self.opts.type_map[k]
        return rec.edit_type

    def _read(self, cell: Cell) -> tuple[bytes, str, str]:
        """(bytes, digest, suffix) of a readable image; raises on a missing, truncated or foreign file."""
        data = cell.bytes()
        sources.decode(data)  # the whole image decodes
        return data, hashlib.sha256(data).hexdigest(), sources.image_suffix(data, cell.suffix)

    def _store(self, cell: Cell, read: tuple[bytes, str, str], folder: Path, sub: str) -> str:
        data, digest, suffix = read
        link = self.opts.link and cell.path is not None
        return store_image(folder, sub, digest, suffix, data=None if link else data, src=cell.path, link=link)

    def one(self, rec: SourceRecord) -> _Done:
        d = _Done(rec.name)
        if rec.skip:
            d.counts["skipped_no_source_image"] += 1
            d.problem = {"source": rec.name, "problem": rec.skip}
            return d
        t = self.edit_type(rec)
        if t is None:
            d.counts[f"unmapped::{rec.source_type}"] += 1
            return d
        obj = rec.object
        if t == "remove" and not obj:
            obj = removed_object(rec.instruction)
            if not obj:
                d.counts["remove_without_object"] += 1
                d.problem = {"source": rec.name, "problem": f"removal without a readable object: {rec.instruction[:80]!r}"}
                return d
        try:
            ref = self._read(rec.ref)
        except Exception as e:  # a missing or damaged file
            d.counts["unreadable"] += 1
            d.problem = {"source": rec.name, "problem": f"reference image {rec.ref.name}: {_why(e)}"}
            return d
        cap_ref, cap_edit = rec.caption_ref, rec.caption_edit
        if self.vlm is not None and (not cap_ref or not cap_edit):
            from harness.data.annotate import caption, check
            from harness.data.build import for_vlm

            image = for_vlm(sources.decode(ref[0]), 1024)
            if not cap_ref:
                v = caption(self.vlm, self.P, image)
                if not v.ok:
                    return self._failed(d, rec, "caption", v)
                cap_ref = v.value
                d.counts["captions_ref_from_vlm"] += 1
            if not cap_edit:
                v = check(self.vlm, self.P, image, t, rec.instruction, cap_ref)
                if not v.ok:
                    return self._failed(d, rec, "validity", v)
                if not v.value.valid:
                    d.counts["rejected_invalid"] += 1
                    return d
                cap_edit = v.value.caption
                d.counts["captions_edit_from_vlm"] += 1
        d.counts["caption_ref_missing"] += not cap_ref
        d.counts["caption_edit_missing"] += not cap_edit
        base = {"id": rec.source_id, "instruction": rec.instruction, "edit_type": t, "caption_ref": cap_ref,
                "caption_edit": cap_edit, "object": obj}
        d.inst = {**base, "image": self._store(rec.ref, ref, self.opts.out, "images")}
        d.counts["records"] += 1
        d.counts[f"type::{t}"] += 1
        if rec.target is not None and self.opts.pairs:
            try:
                target = self._read(rec.target)
                pref = self._store(rec.ref, ref, self.pairs_out, "images")
                ptgt = self._store(rec.target, target, self.pairs_out, "targets")
            except Exception as e:
                d.counts["unreadable_target"] += 1
                d.problem = {"source": rec.name, "problem": f"target image {rec.target.name}: {_why(e)}"}
                return d
            d.pair = {**base, "image": pref, "target": ptgt}
            d.counts["pairs"] += 1
        return d

    def _failed(self, d: _Done, rec: SourceRecord, stage: str, v: Any) -> _Done:
        from harness.data.annotate import failure_kind

        kind = failure_kind(v)
        d.counts[f"failed_{stage}_{kind}"] += 1
        d.problem = {"source": rec.name, "problem": f"{stage} request failed ({kind}): {v.error}"}
        return d

    def run(self) -> dict[str, Any]:
        total, recs = records(self.opts)
        if self.opts.limit:
            total = min(total, self.opts.limit)
        workers = self.vlm.concurrency if self.vlm is not None else self.opts.workers
        done = ordered_map(self.one, recs, total=total, workers=workers, desc=f"import {self.opts.format}",
                           progress=self.progress)
        counts: Counter = Counter()
        for d in done:
            counts.update(d.counts)
        ids: Counter = Counter(d.inst["id"] for d in done if d.inst)
        seen: Counter = Counter()

        def unique(row: dict[str, Any]) -> dict[str, Any]:  # ids repeated in the source get a suffix
            i = row["id"]
            seen[i] += 1
            return row if ids[i] == 1 else {**row, "id": f"{i}-{seen[i]}"}

        prov = {"source": self.opts.format, "source_path": str(self.opts.src)}
        if self.vlm is not None:
            prov.update({"vlm": self.vlm.model, "prompt_version": self.P.version})
        meta = {"importer": {"format": self.opts.format, "src": str(self.opts.src),
                             "type_map": {k: v for k, v in self.opts.type_map.items()},
                             **({"vlm": self.vlm.model, "prompt_version": self.P.version} if self.vlm else {})}}
        info = write_dataset(self.opts.out, (instruction_row(unique(d.inst), {**prov, "row": d.name}) for d in done if d.inst),
                             name=self.opts.name or self.opts.out.name, meta=meta)
        if any(d.pair for d in done):
            seen.clear()
            pinfo = write_dataset(self.pairs_out, (paired_row(unique(d.pair), {**prov, "row": d.name}) for d in done if d.pair),
                                  paired=True, name=(self.opts.name or self.opts.out.name) + "-pairs", meta=meta)
        else:
            pinfo = None
        summary = {
            "rows": len(done),
            "records": counts["records"], "pairs": counts["pairs"],
            "per_type": {k[len("type::"):]: v for k, v in sorted(counts.items()) if k.startswith("type::")},
            "unmapped": {k[len("unmapped::"):]: v for k, v in sorted(counts.items()) if k.startswith("unmapped::")},
            **{k: v for k, v in sorted(counts.items()) if "::" not in k and k not in ("records", "pairs")},
        }
        if self.vlm is not None:
            summary["vlm"] = self.vlm.stats()
        problems = [d.problem for d in done if d.problem]
        atomic_write_json(self.opts.out / REPORT, {"summary": summary, "problems": problems})
        info["summary"] = summary
        atomic_write_json(self.opts.out / "dataset.json", info)
        return {"instructions": info, "pairs": pinfo, "pairs_out": str(self.pairs_out) if pinfo else None}


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=FORMATS, help="the source's public format")
    p.add_argument("src", help="pico-banana: the JSONL manifest; gpt-image-edit: a metadata file or a folder holding "
                               "them; generic: a .jsonl/.json/.csv/.parquet file, a folder of parquet, a `datasets` folder")
    p.add_argument("--out", required=True, metavar="DATASET", help="the instruction dataset folder to write")
    p.add_argument("--pairs-out", metavar="DIR", help="the paired dataset folder (default: DATASET-pairs)")
    p.add_argument("--images", metavar="ROOT", help="the folder relative image paths start from (pico-banana: where "
                   "output_image and local_input_image resolve; default: beside SRC)")
    p.add_argument("--map", action="append", default=[], metavar="SOURCE=TYPE",
                   help="map a source edit type to one of the paper's (or 'drop'); repeatable, overrides the built-in table")
    p.add_argument("--instruction-key", default="text", help="pico-banana: text (default) or summarized_text")
    p.add_argument("--image-column", default="image", help="generic: the reference image column")
    p.add_argument("--instruction-column", default="instruction", help="generic: the instruction column")
    p.add_argument("--type-column", help="generic: the edit-type column")
    p.add_argument("--edit-type", choices=EDIT_TYPES, help="generic: one edit type for every row (no type column)")
    p.add_argument("--target-column", help="generic: the edited image column (paired data)")
    p.add_argument("--caption-ref-column", help="generic: c^y, the reference's caption")
    p.add_argument("--caption-edit-column", help="generic: c^x, the edited image's caption")
    p.add_argument("--object-column", help="generic: the object the edit is about (needed by removals)")
    p.add_argument("--id-column", help="generic: a record id column")
    p.add_argument("--split", help="the split of a `datasets` DatasetDict (default: train)")
    p.add_argument("--no-pairs", action="store_true", help="instruction data only: do not read the targets nor write "
                   "DATASET-pairs (e.g. pico-banana's sources without its edited images, as nupurkmr9/npedit downloads it)")
    p.add_argument("--link", action="store_true", help="hard-link image files into the datasets instead of copying "
                   "(copies across filesystems)")
    p.add_argument("--limit", type=int, default=0, help="only the first N records (0: all)")
    p.add_argument("--workers", type=int, default=4, help="threads reading images (with --vlm: vlm.concurrency)")
    p.add_argument("--name", default="", help="the dataset's name (default: the folder's)")


def options(args: argparse.Namespace) -> ImportOptions:
    cols = GenericColumns(image=args.image_column, instruction=args.instruction_column, type=args.type_column,
                          edit_type=args.edit_type, target=args.target_column, caption_ref=args.caption_ref_column,
                          caption_edit=args.caption_edit_column, object=args.object_column, id=args.id_column)
    return ImportOptions(format=args.format, src=Path(args.src), out=Path(args.out),
                         pairs_out=Path(args.pairs_out) if args.pairs_out else None,
                         images=Path(args.images) if args.images else None, type_map=parse_map(args.map),
                         instruction_key=args.instruction_key, columns=cols, link=args.link, limit=args.limit,
                         split=args.split, name=args.name, workers=args.workers, pairs=not args.no_pairs)


def check_out(folder: Path, kind: str) -> None:
    meta = folder / "dataset.json"
    if folder.is_dir() and any(folder.iterdir()):
        try:
            earlier = json.loads(meta.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            earlier = None
        if not earlier or "importer" not in earlier:
            raise ImportError_(f"{kind} {folder}: not empty and not an earlier import; choose a new folder")


def describe(result: dict[str, Any], out: Path) -> str:
    s = result["instructions"]["summary"]
    per_type = ", ".join(f"{t} {n}" for t, n in s["per_type"].items()) or "none"
    lines = [f"imported {out}: {s['records']} records of {s['rows']} rows ({per_type})"]
    if result["pairs"]:
        lines.append(f"  paired data for SFT: {result['pairs_out']} ({s['pairs']} pairs)")
    if s["unmapped"]:
        lines.append(f"  left out, type not one of the paper's ({sum(s['unmapped'].values())}; --map SOURCE=TYPE to keep): "
                     + ", ".join(f"{k} {v}" for k, v in s["unmapped"].items()))
    for key, what in (("unreadable", "unreadable reference images"), ("unreadable_target", "unreadable targets (pair left out)"),
                      ("skipped_no_source_image", "records without a local source image"),
                      ("remove_without_object", "removals without a readable object"),
                      ("rejected_invalid", "rejected as invalid by the VLM")):
        if s.get(key):
            lines.append(f"  {what}: {s[key]} (named in {out / REPORT})")
    failed = {k: v for k, v in s.items() if k.startswith("failed_") and v}
    if failed:
        lines.append("  failed VLM requests (counted, records left out): " + ", ".join(f"{k[7:]} {v}" for k, v in failed.items()))
    for key, what in (("caption_ref_missing", "c^y (caption_ref)"), ("caption_edit_missing", "c^x (caption_edit)")):
        if s.get(key):
            lines.append(f"  warning: {s[key]} records have no {what}; NP-Edit conditions on it (pass --vlm CONFIG to write them)")
    return "\n".join(lines)


def main(args: argparse.Namespace, make_vlm: Callable | None) -> int:
    import sys

    opts = options(args)
    check_out(opts.out, "--out")
    vlm = P = None
    if make_vlm is not None:
        from harness.data.prompts import load_prompts

        P = load_prompts(args.prompts)
        cfg, vlm = make_vlm(args, opts.out)
    importer = Importer(opts, vlm, P, progress=sys.stderr.isatty())
    check_out(importer.pairs_out, "--pairs-out")
    if args.dry_run:
        total, _ = records(opts)
        print(f"source:   {opts.format} {opts.src} ({total} records{f', first {opts.limit}' if opts.limit else ''})")
        print(f"out:      {opts.out} (instructions), {importer.pairs_out} (pairs, when the source has targets)")
        if opts.type_map:
            print(f"--map:    {opts.type_map}")
        if vlm is not None:
            print(f"vlm:      {vlm.model} at {vlm.cfg.base_url}; prompts {P.path} (version {P.version})")
        return 0
    if vlm is not None:
        vlm.preflight()
    result = importer.run()
    print(describe(result, opts.out))
    print(f"train on it: data.path={opts.out}" + (f" data.paired_path={result['pairs_out']}" if result["pairs"] else ""))
    return 0
