"""`python -m harness.data stats`: counts per edit type, word lengths, image sizes and the contact sheet of a
dataset, and the data.fraction subsets the data-scale table trains on (seeded, nested)."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from harness.data.__main__ import main
from harness.data.instructions import InstructionRecord, PairedRecord, write_instructions, write_pairs
from harness.data.sampling import InstructionData, subset_by_reference
from harness.data.stats import TEXT_H, THUMB

RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 160, 20)


def image(folder: Path, rel: str, color, size) -> str:
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(folder / rel)
    return rel


def small_dataset(folder: Path) -> Path:
    a = image(folder, "images/a.png", RED, (64, 48))
    b = image(folder, "images/b.png", RED, (32, 32))
    c = image(folder, "images/c.png", BLUE, (64, 48))
    (folder / "images" / "gone.png").write_bytes(b"not a png")
    recs = [
        InstructionRecord("1", a, "make the ball blue", "color", "a red ball", "a blue ball"),
        InstructionRecord("2", b, "make it green", "color", "a red square on grass", ""),
        InstructionRecord("3", c, "add a hat on top of the ball", "add", "a blue ball", "a blue ball with a hat"),
        InstructionRecord("4", "images/gone.png", "add a cat", "add", "grass", "grass with a cat"),
    ]
    write_instructions(folder, recs, name="small")
    return folder


def test_stats_counts_types_words_and_sizes_and_draws_a_sheet_row_per_type(tmp_path, capsys):
    ds = small_dataset(tmp_path / "ds")
    assert main(["stats", str(ds), "--per-type", "2", "--fractions", "0.5", "1"]) == 0
    s = json.loads((ds / "stats" / "stats.json").read_text())
    assert s["records"] == 4 and s["references"] == 4
    assert s["per_type"] == {"add": {"records": 2, "references": 2}, "color": {"records": 2, "references": 2}}
    # instruction words 4, 3, 8, 3; c^y words 3, 5, 3, 1; c^x words 3, 0, 6, 4
    assert s["words"]["instruction"] == {"count": 4, "empty": 0, "mean": 4.5, "median": 3.5, "min": 3, "max": 8}
    assert s["words"]["caption_ref"]["mean"] == 3.0 and s["words"]["caption_ref"]["min"] == 1
    assert s["words"]["caption_edit"]["empty"] == 1 and s["words"]["caption_edit"]["max"] == 6
    z = s["image_sizes"]
    assert z["count"] == 3 and z["width"] == {"min": 32, "median": 64, "max": 64} and z["most_common"] == {"64x48": 2, "32x32": 1}
    assert [u["image"] for u in s["unreadable_images"]] == ["images/gone.png"]
    assert [(x["fraction"], x["references"]) for x in s["subsets"]["by_fraction"]] == [(0.5, 2), (1.0, 4)]
    out = capsys.readouterr().out
    assert "unreadable images: 1" in out and "color" in out
    sheet = Image.open(ds / "stats" / "contact_sheet.png")
    row_h = THUMB + TEXT_H + 8
    assert sheet.size == (110 + 2 * (THUMB + 8), 2 * row_h)
    # row 0 is 'add' (c, blue, and the unreadable one drawn grey); row 1 'color' holds only red references
    row1 = {sheet.getpixel((110 + k * (THUMB + 8) + THUMB // 2, row_h + 4 + THUMB // 2)) for k in range(2)}
    assert row1 == {RED}
    row0 = {sheet.getpixel((110 + k * (THUMB + 8) + THUMB // 2, 4 + THUMB // 2)) for k in range(2)}
    assert row0 == {BLUE, (128, 128, 128)}


def test_stats_of_paired_data_shows_the_target_beside_the_reference(tmp_path):
    ds = tmp_path / "pairs"
    ref = image(ds, "images/r.png", RED, (40, 40))
    tgt = image(ds, "targets/t.png", GREEN, (40, 40))
    write_pairs(ds, [PairedRecord("1", ref, "make it green", tgt, "color")])
    assert main(["stats", str(ds), "--out", str(tmp_path / "st"), "--per-type", "1"]) == 0
    s = json.loads((tmp_path / "st" / "stats.json").read_text())
    assert s["kind"] == "paired" and s["per_type"] == {"color": {"records": 1, "references": 1}}
    sheet = Image.open(tmp_path / "st" / "contact_sheet.png")
    assert sheet.getpixel((110 + THUMB // 2, 4 + THUMB // 2)) == RED
    assert sheet.getpixel((110 + THUMB + THUMB // 2, 4 + THUMB // 2)) == GREEN


def test_stats_of_a_folder_that_is_no_dataset_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["stats", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "instructions.jsonl: file not found" in err


def test_data_fraction_subsets_are_seeded_and_nested_by_reference_image(tmp_path):
    # 300 reference images with two records each: a subset keeps whole references, the 1% inside the 50%
    recs = [InstructionRecord(f"{i}-{j}", f"images/{i:03d}.png", "make it red", "color", "a", "b")
            for i in range(300) for j in range(2)]
    refs = {f: {r.image for r in subset_by_reference(recs, f, seed=7)} for f in (0.01, 0.1, 0.5, 1.0)}
    assert [len(refs[f]) for f in (0.01, 0.1, 0.5, 1.0)] == [3, 30, 150, 300]
    assert refs[0.01] <= refs[0.1] <= refs[0.5] <= refs[1.0]
    assert all(len(subset_by_reference(recs, f, seed=7)) == 2 * len(refs[f]) for f in refs)  # both records of a kept image
    assert refs[0.5] == {r.image for r in subset_by_reference(list(reversed(recs)), 0.5, seed=7)}  # not the file order
    assert refs[0.5] != {r.image for r in subset_by_reference(recs, 0.5, seed=8)}
    # the trainer's loader draws the same subset from a dataset on disk
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    for i in range(300):  # the loader reads every image before it trains
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(ds / f"images/{i:03d}.png")
    write_instructions(ds, recs)
    data = InstructionData(ds, image_size=8, fraction=0.1, seed=7)
    assert {r.image for r in data.records} == refs[0.1]
