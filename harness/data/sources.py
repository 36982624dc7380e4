"""Where reference images (and rows of public datasets) come from, read lazily so a corpus of millions
streams through in bounded memory.

    a folder of images       every *.jpg/.jpeg/.png/.webp/.bmp/.tif(f) under it, sorted; a caption beside
                             an image is the text file of the same name (cat.jpg -> cat.txt)
    a JSONL or CSV list      one row per image: the image path (relative to the list's folder) and an
                             optional caption, in the columns named on the command line
    parquet                  a .parquet file or a folder of them (read with pyarrow, batch by batch)
    a `datasets` folder      what Dataset.save_to_disk / DatasetDict.save_to_disk write (memory-mapped)

An image cell may be a path, raw bytes, a `datasets` Image cell ({"bytes": ..., "path": ...}) or a PIL image.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class SourceError(ValueError):
    """A source that cannot be read as asked (the message names the file, the key and what is allowed)."""


@dataclass
class SourceItem:
    name: str  # how reports name it: a path, or file:row
    read: Callable[[], bytes]  # the encoded image file
    caption: str | None = None  # the corpus caption (c^y), None when the corpus has none
    suffix: str = ""  # the image file's suffix when known ('.jpg')


# ---------------------------------------------------------------------------------------------
# Rows of tabular sources


@dataclass
class Rows:
    """Rows (dicts) of a JSONL/JSON/CSV/parquet/`datasets` source, streamed; `base` resolves relative paths."""

    kind: str
    count: int
    base: Path
    _iter: Callable[[], Iterator[tuple[str, dict[str, Any]]]]  # (row name, row)
    columns: list[str]

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return self._iter()


def _is_datasets_folder(p: Path) -> bool:
    return p.is_dir() and any((p / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))


def open_rows(src: str | Path, split: str | None = None) -> Rows:
    """The rows of a tabular source; SourceError when `src` is none of the kinds above."""
    src = Path(src)
    if not src.exists():
        raise SourceError(f"{src}: not found")
    if _is_datasets_folder(src):
        return _datasets_rows(src, split)
    if src.is_dir():
        files = sorted(src.rglob("*.parquet"))
        if not files:
            raise SourceError(f"{src}: a folder with neither parquet files nor a `datasets` save_to_disk layout "
                              "(dataset_info.json / dataset_dict.json)")
        return _parquet_rows(files, src)
    suffix = src.suffix.lower()
    if suffix == ".parquet":
        return _parquet_rows([src], src.parent)
    if suffix in (".jsonl", ".json"):
        return _json_rows(src)
    if suffix in (".csv", ".tsv"):
        return _csv_rows(src, "\t" if suffix == ".tsv" else ",")
    raise SourceError(f"{src}: unknown kind of file (allowed: .jsonl, .json, .csv, .tsv, .parquet, a folder of parquet "
                      "files, a `datasets` save_to_disk folder)")


def _json_rows(path: Path) -> Rows:
    text_head = path.read_text(encoding="utf-8", errors="replace")[:1].strip() if path.stat().st_size else ""
    if path.suffix.lower() == ".json" and text_head == "[":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SourceError(f"{path}: not valid JSON: {e}") from None
        if not all(isinstance(r, dict) for r in data):
            raise SourceError(f"{path}: expected a JSON list of objects")
        cols = sorted({k for r in data[:100] for k in r})
        return Rows("json", len(data), path.parent, lambda: ((f"{path.name}:{i}", r) for i, r in enumerate(data)), cols)

    def it() -> Iterator[tuple[str, dict[str, Any]]]:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SourceError(f"{path}:{lineno}: not valid JSON: {e}") from None
                if not isinstance(row, dict):
                    raise SourceError(f"{path}:{lineno}: expected a JSON object")
                yield f"{path.name}:{lineno}", row

    with open(path, encoding="utf-8") as f:
        count = sum(1 for line in f if line.strip())
    cols: list[str] = []
    for _, row in it():
        cols = sorted(row)
        break
    return Rows("jsonl", count, path.parent, it, cols)


def _csv_rows(path: Path, delimiter: str) -> Rows:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        cols = list(reader.fieldnames or [])
        count = sum(1 for _ in reader)

    def it() -> Iterator[tuple[str, dict[str, Any]]]:
        with open(path, encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.DictReader(f, delimiter=delimiter), 2):
                yield f"{path.name}:{i}", row

    return Rows("csv", count, path.parent, it, cols)


def _parquet_rows(files: list[Path], base: Path) -> Rows:
    import pyarrow.parquet as pq

    try:
        metas = [pq.ParquetFile(f) for f in files]
    except Exception as e:  # pyarrow raises its own error types for a damaged file
        raise SourceError(f"{files[0].parent}: cannot read parquet: {e}") from None
    count = sum(m.metadata.num_rows for m in metas)
    cols = list(metas[0].schema_arrow.names)

    def it() -> Iterator[tuple[str, dict[str, Any]]]:
        for f in files:
            i = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=256):
                for row in batch.to_pylist():
                    yield f"{f.name}:{i}", row
                    i += 1

    return Rows("parquet", count, base, it, cols)


def _datasets_rows(path: Path, split: str | None) -> Rows:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if split is None:
            split = "train" if "train" in ds else (splits[0] if len(splits) == 1 else None)
        if split not in ds:
            raise SourceError(f"{path}: --split {split!r} not in the dataset (it has: {', '.join(splits)})")
        ds = ds[split]
    elif split not in (None, "train"):
        raise SourceError(f"{path}: a single-split dataset; --split {split!r} does not apply")
    # image cells as stored ({"bytes", "path"}): nothing is decoded until an image is needed
    for name, feat in ds.features.items():
        if isinstance(feat, datasets.Image) and feat.decode:
            ds = ds.cast_column(name, datasets.Image(decode=False))

    def it() -> Iterator[tuple[str, dict[str, Any]]]:
        for i, row in enumerate(ds):
            yield f"row {i}", row

    return Rows("datasets", len(ds), path, it, list(ds.column_names))


def require_columns(rows: Rows, src: Path, needed: dict[str, str | None]) -> None:
    """Every `option -> column` asked for exists (columns are checked on the first rows for JSON)."""
    for option, col in needed.items():
        if col and rows.columns and col not in rows.columns:
            raise SourceError(f"{src}: no column {col!r} (given by {option}); the columns are: {', '.join(rows.columns)}")


# ---------------------------------------------------------------------------------------------
# Image cells


def image_reader(value: Any, base: Path, where: str) -> tuple[Callable[[], bytes], str, str]:
    """(read, suffix, name) for an image cell; SourceError for a cell that is no image at all."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes") is not None:
            data = value["bytes"]
            path = value.get("path") or ""
            return (lambda: data), Path(path).suffix.lower(), path or where
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
        return (lambda: data), "", where
    if isinstance(value, Image.Image):
        img = value

        def encode() -> bytes:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            return buf.getvalue()

        return encode, ".png", where
    if isinstance(value, str) and value.strip():
        p = Path(value)
        p = p if p.is_absolute() else base / p
        return p.read_bytes, p.suffix.lower(), str(p)
    raise SourceError(f"{where}: the image cell is {type(value).__name__} {str(value)[:60]!r} "
                      "(expected a path, bytes or a `datasets` Image)")


# ---------------------------------------------------------------------------------------------
# Reference images for the builder


@dataclass
class Source:
    kind: str
    count: int
    items: Callable[[], Iterator[SourceItem]]
    path: Path


def open_images(src: str | Path, *, image_column: str = "image", caption_column: str | None = "caption",
                split: str | None = None) -> Source:
    """The reference images of `src` (see the module docstring), in a fixed order."""
    src = Path(src)
    if not src.exists():
        raise SourceError(f"--images {src}: not found")
    if src.is_dir() and not _is_datasets_folder(src) and not any(src.rglob("*.parquet")):
        return _folder(src)
    rows = open_rows(src, split)
    require_columns(rows, src, {"--image-column": image_column})
    has_caption = bool(caption_column) and (not rows.columns or caption_column in rows.columns)

    def items() -> Iterator[SourceItem]:
        for name, row in rows:
            if image_column not in row:
                raise SourceError(f"{src}: {name}: no column {image_column!r} (--image-column)")
            try:
                read, suffix, where = image_reader(row[image_column], rows.base, f"{src.name}:{name}")
            except SourceError as e:  # an empty cell: this row's image is unreadable, the others still count
                read, suffix, where = _unreadable_cell(str(e)), "", f"{src.name}:{name}"
            cap = row.get(caption_column) if has_caption else None
            cap = str(cap).strip() if cap is not None and str(cap).strip() else None
            yield SourceItem(where, read, cap, suffix)

    return Source(rows.kind, rows.count, items, src)


def _unreadable_cell(why: str) -> Callable[[], bytes]:
    def read() -> bytes:
        raise OSError(why)

    return read


def _folder(src: Path) -> Source:
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SourceError(f"--images {src}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder")

    def items() -> Iterator[SourceItem]:
        for p in files:
            cap_path = p.with_suffix(".txt")
            cap = cap_path.read_text(encoding="utf-8", errors="replace").strip() if cap_path.is_file() else None
            yield SourceItem(str(p.relative_to(src)), p.read_bytes, cap or None, p.suffix.lower())

    return Source("folder", len(files), items, src)


def unreadable(e: BaseException) -> str:
    """Why an image could not be read, in one line."""
    if isinstance(e, Image.UnidentifiedImageError):
        return "not an image file PIL can read"
    return f"not a readable image: {type(e).__name__}: {e}"


def decode(data: bytes) -> Image.Image:
    """The RGB image of an encoded file; raises (OSError, ValueError, ...) when it is not a readable image."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert("RGB")


def image_suffix(data: bytes, suffix: str) -> str:
    """The file suffix to store an image under: its own, else the one its format implies."""
    if suffix in IMAGE_SUFFIXES:
        return ".jpg" if suffix == ".jpeg" else suffix
    with Image.open(io.BytesIO(data)) as im:
        fmt = (im.format or "PNG").lower()
    return {"jpeg": ".jpg", "tiff": ".tif"}.get(fmt, f".{fmt}")
