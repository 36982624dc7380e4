"""Statistics of an instruction (or paired) dataset, and a contact sheet of random samples per edit type.

    python -m harness.data stats DATASET [--out DIR] [--per-type 6] [--seed 0] [--fractions 0.01 0.5 1]

Prints and writes DIR/stats.json (default DIR: DATASET/stats): records and reference images per edit
type, caption and instruction lengths in words (c^y, c^x, c), image sizes, and the size of the seeded
data.fraction subsets a run would train on (the same function the trainer uses; the subsets of one
seed are nested); and DIR/contact_sheet.png: a row per edit type of random references with their
instruction (and, for paired data, the target beside each).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import textwrap
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from benchmarks.common import show_progress
from harness.data.instructions import DatasetError, read_instructions, read_pairs
from harness.runstore import atomic_path, atomic_write_json

THUMB = 128
TEXT_H = 46


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="an instruction dataset (instructions.jsonl) or a paired one (pairs.jsonl)")
    p.add_argument("--out", metavar="DIR", help="where stats.json and contact_sheet.png go (default: DATASET/stats)")
    p.add_argument("--per-type", type=int, default=6, help="samples per edit type on the contact sheet")
    p.add_argument("--seed", type=int, default=0, help="seed of the contact sheet's samples and of the subsets")
    p.add_argument("--fractions", type=float, nargs="*", default=[0.01, 0.5, 1.0],
                   help="data.fraction values whose subsets to count (with --seed as the run's seed)")
    p.add_argument("--max-images", type=int, default=0, help="read the sizes of at most N reference images (0: all)")


def _lengths(texts: list[str]) -> dict[str, Any]:
    n = [len(t.split()) for t in texts]
    if not n:
        return {"count": 0}
    return {"count": len(n), "empty": sum(1 for x in n if x == 0), "mean": round(statistics.fmean(n), 2),
            "median": statistics.median(n), "min": min(n), "max": max(n)}


def image_sizes(folder: Path, rels: list[str], progress: bool) -> tuple[dict[str, Any], list[dict[str, str]]]:
    sizes: list[tuple[int, int]] = []
    bad = []
    for rel in tqdm(rels, desc="image sizes", unit="img", disable=not show_progress(progress)):
        try:
            with Image.open(folder / rel) as im:
                sizes.append(im.size)
        except Exception as e:  # missing or not an image
            bad.append({"image": rel, "error": f"{type(e).__name__}: {e}"})
    if not sizes:
        return {"count": 0}, bad
    w, h = [s[0] for s in sizes], [s[1] for s in sizes]
    common = Counter(f"{a}x{b}" for a, b in sizes).most_common(5)
    return {"count": len(sizes), "width": {"min": min(w), "median": statistics.median(w), "max": max(w)},
            "height": {"min": min(h), "median": statistics.median(h), "max": max(h)},
            "most_common": dict(common)}, bad


def subsets(records: list, fractions: list[float], seed: int) -> list[dict[str, Any]]:
    from harness.data.sampling import subset_by_reference

    out = []
    for f in sorted(fractions):
        sub = subset_by_reference(records, f, seed)
        out.append({"fraction": f, "references": len({r.image for r in sub}), "records": len(sub)})
    return out


def _thumb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB, THUMB))
    except Exception:  # an unreadable image shows as grey
        im = Image.new("RGB", (THUMB, THUMB), (128, 128, 128))
    cell = Image.new("RGB", (THUMB, THUMB), (255, 255, 255))
    cell.paste(im, ((THUMB - im.width) // 2, (THUMB - im.height) // 2))
    return cell


def contact_sheet(folder: Path, by_type: dict[str, list], k: int, seed: int, paired: bool) -> Image.Image:
    """A row per edit type: k random records (reference, and target for paired data) with their instruction."""
    font = ImageFont.load_default()
    rng = random.Random(seed)
    types = sorted(by_type)
    cell_w = THUMB * (2 if paired else 1) + 8
    label_w = 110
    sheet = Image.new("RGB", (label_w + k * cell_w, max(1, len(types)) * (THUMB + TEXT_H + 8)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, t in enumerate(types):
        y = row * (THUMB + TEXT_H + 8) + 4
        draw.text((4, y + THUMB // 2), f"{t}\n({len(by_type[t])})", fill=(0, 0, 0), font=font)
        picks = rng.sample(by_type[t], min(k, len(by_type[t])))
        for col, r in enumerate(picks):
            x = label_w + col * cell_w
            sheet.paste(_thumb(folder / r.image), (x, y))
            if paired:
                sheet.paste(_thumb(folder / r.target), (x + THUMB, y))
            lines = textwrap.wrap(r.instruction, width=(cell_w - 8) // 6)[:3]
            draw.text((x, y + THUMB + 2), "\n".join(lines), fill=(0, 0, 0), font=font)
    return sheet


def compute(folder: Path, *, per_type: int = 6, seed: int = 0, fractions: list[float] = (0.01, 0.5, 1.0),
            max_images: int = 0, progress: bool = True) -> tuple[dict[str, Any], Image.Image]:
    paired = (folder / "pairs.jsonl").is_file() and not (folder / "instructions.jsonl").is_file()
    records = read_pairs(folder) if paired else read_instructions(folder)
    if not records:
        raise DatasetError(f"{folder}: the dataset has no records")
    by_type: dict[str, list] = defaultdict(list)
    refs_by_type: dict[str, set] = defaultdict(set)
    for r in records:
        by_type[r.edit_type].append(r)
        refs_by_type[r.edit_type].add(r.image)
    refs = sorted({r.image for r in records})
    sample = refs
    if max_images and len(refs) > max_images:
        sample = sorted(random.Random(seed).sample(refs, max_images))
    sizes, bad = image_sizes(folder, sample, progress)
    stats = {
        "dataset": str(folder), "kind": "paired" if paired else "instructions", "records": len(records),
        "references": len(refs),
        "per_type": {t: {"records": len(by_type[t]), "references": len(refs_by_type[t])} for t in sorted(by_type)},
        "words": {"instruction": _lengths([r.instruction for r in records]),
                  "caption_ref": _lengths([r.caption_ref for r in records]),
                  "caption_edit": _lengths([r.caption_edit for r in records])},
        "image_sizes": sizes, "unreadable_images": bad,
        "subsets": {"seed": seed, "by_fraction": subsets(records, list(fractions), seed)} if fractions else {},
    }
    return stats, contact_sheet(folder, by_type, per_type, seed, paired)


def describe(s: dict[str, Any]) -> str:
    lines = [f"{s['dataset']}: {s['records']} records on {s['references']} reference images ({s['kind']})",
             f"  {'edit type':<14}{'records':>9}{'references':>12}"]
    lines += [f"  {t:<14}{v['records']:>9}{v['references']:>12}" for t, v in s["per_type"].items()]
    for k, name in (("instruction", "instruction c"), ("caption_ref", "caption c^y"), ("caption_edit", "caption c^x")):
        w = s["words"][k]
        lines.append(f"  words in {name:<14} mean {w.get('mean', 0)}, median {w.get('median', 0)}, "
                     f"min {w.get('min', 0)}, max {w.get('max', 0)}, empty {w.get('empty', 0)}")
    z = s["image_sizes"]
    if z.get("count"):
        lines.append(f"  image sizes ({z['count']} read): width {z['width']['min']}-{z['width']['max']} "
                     f"(median {z['width']['median']}), height {z['height']['min']}-{z['height']['max']} "
                     f"(median {z['height']['median']}); most common {', '.join(z['most_common'])}")
    if s["unreadable_images"]:
        lines.append(f"  unreadable images: {len(s['unreadable_images'])} (named in stats.json)")
    if s["subsets"]:
        lines.append(f"  data.fraction subsets (seed {s['subsets']['seed']}; nested): " + ", ".join(
            f"{x['fraction']:g} -> {x['references']} refs / {x['records']} records" for x in s["subsets"]["by_fraction"]))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    folder = Path(args.dataset)
    out = Path(args.out) if args.out else folder / "stats"
    s, sheet = compute(folder, per_type=args.per_type, seed=args.seed, fractions=args.fractions,
                       max_images=args.max_images, progress=sys.stderr.isatty())
    atomic_write_json(out / "stats.json", s)
    with atomic_path(out / "contact_sheet.png") as tmp:
        sheet.save(tmp, format="PNG")
    print(describe(s))
    print(f"  written: {out / 'stats.json'}, {out / 'contact_sheet.png'}")
    return 0
