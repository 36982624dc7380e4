"""Importers: pico-banana-400k, GPT-Image-Edit-1.5M and generic tables in their public formats, written as
instruction data (targets dropped) and paired data for SFT, types mapped to the paper's eleven with the
unmapped ones counted, bad rows named, and captions written by a VLM when asked."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.data.__main__ import main
from harness.data.importers import gpt_task_type, PICO_TYPES
from harness.data.edit_types import normalize
from harness.data.instructions import read_instructions, read_pairs
from harness.data.sampling import InstructionData
from tests import data_fixtures as F
from tests.canned_vlm import CannedVLM, default_validity, stage_of
from tests.judge_server import ChatServer, reply

REPO = Path(__file__).resolve().parents[1]


def meta(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text())


def report(folder: Path) -> dict:
    return json.loads((folder / "import_report.json").read_text())


def test_pico_banana_manifest_imports_as_instructions_and_pairs(tmp_path, capsys):
    manifest = F.pico_banana(tmp_path / "pico")
    out = tmp_path / "pb"
    assert main(["import", "pico-banana", str(manifest), "--images", str(tmp_path / "pico"), "--out", str(out)]) == 0
    recs = read_instructions(out)
    by_instr = {r.instruction: r for r in recs}
    assert [r.edit_type for r in recs] == ["remove", "color", "texture", "style", "style"]
    rm = by_instr["Remove the red flag and its white pole from the upper right of the image, seamlessly extending the sky."]
    assert rm.object == "red flag and its white pole"  # read from the instruction (App. E's removal question needs it)
    assert len({r.image for r in recs}) == 3  # one stored image per distinct source image
    assert all(r.caption_ref == "" and r.caption_edit == "" for r in recs)  # pico-banana has no captions
    assert not (out / "targets").exists() and "target" not in (out / "instructions.jsonl").read_text()
    pairs = read_pairs(out.with_name("pb-pairs"))
    assert len(pairs) == 4  # the style edit whose output did not download has no pair
    s = meta(out)["summary"]
    assert s["unmapped"] == {"Zoom in": 1} and s["skipped_no_source_image"] == 1 and s["unreadable"] == 1
    assert s["unreadable_target"] == 1 and s["caption_edit_missing"] == 5
    problems = [p["source"] for p in report(out)["problems"]]
    assert problems == ["sft.jsonl:4", "sft.jsonl:6", "sft.jsonl:7"]
    printed = capsys.readouterr().out
    assert "Zoom in 1" in printed and "warning: 5 records have no c^x" in printed
    # the paired data is what the SFT baseline reads: targets are the edited images
    data = InstructionData(out.with_name("pb-pairs"), image_size=16, paired=True)
    batch = data.batch(0, 4)
    assert batch.targets.shape == (4, 3, 16, 16)
    grey = (torch.tensor(F.RGB["grey"]).float() / 127.5 - 1).view(3, 1, 1)
    first = next(i for i, r in enumerate(batch.records) if r.edit_type == "remove")
    assert torch.allclose(batch.targets[first], grey.expand(3, 16, 16), atol=1e-4)  # 1.png is grey


def test_pico_banana_without_its_edited_images_imports_instructions_only(tmp_path, capsys):
    manifest = F.pico_banana(tmp_path / "pico")
    import shutil

    shutil.rmtree(tmp_path / "pico" / "images")  # only the Open Images sources were downloaded
    out = tmp_path / "pb"
    assert main(["import", "pico-banana", str(manifest), "--images", str(tmp_path / "pico"), "--out", str(out),
                 "--no-pairs"]) == 0
    assert [r.edit_type for r in read_instructions(out)] == ["remove", "color", "texture", "style", "style"]
    assert not out.with_name("pb-pairs").exists()
    s = meta(out)["summary"]
    assert s["pairs"] == 0 and "unreadable_target" not in s
    assert "paired data" not in capsys.readouterr().out


def test_pico_banana_types_cover_the_35_operations_and_multi_turn_is_refused(tmp_path, capsys):
    assert len({k for k in PICO_TYPES}) >= 35
    assert PICO_TYPES[normalize("Photo → cartoon/sketch/comic")] == "style"
    assert PICO_TYPES[normalize("“Simpsonize” the person (yellow-skin cartoon style)")] == "style"
    mt = tmp_path / "multi-turn.jsonl"
    mt.write_text(json.dumps({"files": [{"id": "original_input_image", "url": "https://x/y.jpg"}]}) + "\n")
    assert main(["import", "pico-banana", str(mt), "--out", str(tmp_path / "o")]) == 2
    assert "multi-turn record" in capsys.readouterr().err


def test_gpt_image_edit_metadata_imports_with_the_task_mapped_and_overridable(tmp_path):
    src = F.gpt_image_edit(tmp_path / "GPT-Image-Edit-1.5M")
    out = tmp_path / "gie"
    assert main(["import", "gpt-image-edit", str(src), "--out", str(out)]) == 0
    recs = read_instructions(out)
    assert sorted((r.id, r.edit_type) for r in recs) == [
        ("omniedit-omni_0000", "add"), ("omniedit-omni_0001", "remove"), ("omniedit-omni_0002", "replace"),
        ("omniedit-omni_0004", "style")]
    assert {r.id: r.caption_ref for r in recs}["omniedit-omni_0001"] == "a blue room"  # input_description is c^y
    assert {r.id: r.object for r in recs}["omniedit-omni_0001"] == "lamp"
    s = meta(out)["summary"]
    assert s["unmapped"] == {"hqedit/edit": 1, "omniedit/attribute_modification": 1}
    assert len(read_pairs(tmp_path / "gie-pairs")) == 4
    # --map overrides the table; a second import into the same folder replaces the first
    assert main(["import", "gpt-image-edit", str(src), "--out", str(out), "--map", "attribute_modification=texture",
                 "--map", "hqedit/edit=color"]) == 0
    types = {r.id: r.edit_type for r in read_instructions(out)}
    assert types["omniedit-omni_0003"] == "texture" and types["hqedit-hq_1"] == "color" and len(types) == 6
    assert gpt_task_type("background_swap") == "background" and gpt_task_type("object_swap") == "replace"
    assert gpt_task_type("edit") is None


def test_generic_csv_and_parquet_with_columns_named_on_the_command_line(tmp_path, capsys):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    csv = F.generic_csv(tmp_path)
    out = tmp_path / "g"
    args = ["import", "generic", str(csv), "--out", str(out), "--instruction-column", "instruction",
            "--type-column", "kind", "--target-column", "edited", "--caption-ref-column", "before",
            "--caption-edit-column", "after", "--object-column", "what"]
    assert main(args) == 0
    recs = read_instructions(out)
    assert [(r.edit_type, r.object, r.caption_ref, r.caption_edit) for r in recs] == [
        ("color", "", "a red ball", "a blue ball"), ("remove", "ball", "a red ball", "an empty table"),
        ("add", "hat", "a green ball", "a green ball with a hat")]
    assert meta(out)["summary"]["unmapped"] == {"zoom": 1}
    assert len(read_pairs(tmp_path / "g-pairs")) == 3
    # a column that is not there: one line naming it and the columns there are
    assert main(args[:-2] + ["--object-column", "obj"]) == 2
    err = capsys.readouterr().err
    assert "no column 'obj' (given by --object-column)" in err and "what" in err
    assert main(["import", "generic", str(csv), "--out", str(tmp_path / "h")]) == 2
    assert "--type-column" in capsys.readouterr().err
    assert main(["import", "generic", str(csv), "--out", str(tmp_path / "h"), "--edit-type", "color", "vlm.model=x"]) == 2
    assert "vlm.model=x: VLM settings apply only with --vlm CONFIG" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()
    # parquet with `datasets` Image cells (bytes), one type for every row
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), F.RGB["blue"]).save(buf, format="PNG")
    pq.write_table(pa.table({"img": [{"bytes": buf.getvalue(), "path": "x.png"}, {"bytes": b"junk", "path": "y.png"}],
                             "instruction": ["make it red", "make it green"]}), tmp_path / "rows.parquet")
    assert main(["import", "generic", str(tmp_path / "rows.parquet"), "--out", str(tmp_path / "p"),
                 "--image-column", "img", "--edit-type", "color"]) == 0
    assert [r.instruction for r in read_instructions(tmp_path / "p")] == ["make it red"]
    assert report(tmp_path / "p")["problems"][0]["source"] == "rows.parquet:1"
    assert not (tmp_path / "p-pairs").exists()


def test_missing_captions_are_written_by_the_vlm_and_invalid_edits_dropped(tmp_path):
    manifest = F.pico_banana(tmp_path / "pico")

    def validity(rec):
        if "Edit instruction: Make the car bright yellow." in rec.text:
            return reply("Validity: invalid\nReasoning: there is no car.\nEdited image caption: NA")
        return default_validity(rec)

    cfg = str(REPO / "configs" / "data" / "qwen2.5-vl-32b.yaml")
    out = tmp_path / "pb"
    with ChatServer(CannedVLM(validity=validity)) as server:
        args = ["import", "pico-banana", str(manifest), "--images", str(tmp_path / "pico"), "--out", str(out),
                "--vlm", cfg, f"vlm.base_url={server.base_url}", "vlm.max_retries=1", "vlm.backoff_s=0"]
        assert main(args) == 0
        stages = [stage_of(r) for r in server.judged]
        assert stages.count("validity") == 5 and 1 <= stages.count("caption") <= 5 and server.preflights == 1
        n = len(server.judged)
        assert main(args) == 0  # again: every reply comes from the cache
        assert len(server.judged) == n
    recs = read_instructions(out)
    assert len(recs) == 4 and "Make the car bright yellow." not in {r.instruction for r in recs}
    assert all(r.caption_ref == "a red circle on a white background" for r in recs)
    assert all(r.caption_edit == f"the image after: {r.instruction}" for r in recs)
    s = meta(out)["summary"]
    assert s["rejected_invalid"] == 1 and s.get("caption_edit_missing", 0) == 0
    assert all(r["provenance"]["vlm"] == "Qwen2.5-VL-32B-Instruct" for r in map(json.loads, (out / "instructions.jsonl").open()))


def test_import_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    csv = F.generic_csv(tmp_path)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("x")
    assert main(["import", "generic", str(csv), "--out", str(taken), "--edit-type", "color"]) == 2
    assert "not an earlier import" in capsys.readouterr().err
    assert (taken / "mine.txt").read_text() == "x"


def test_threads_writing_one_cache_entry_at_once_do_not_collide(tmp_path):
    # the importer's records share reference images, so two threads can ask (and cache) the same question at once
    from concurrent.futures import ThreadPoolExecutor

    from benchmarks.common import atomic_write_bytes

    path = tmp_path / "entry.json"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: atomic_write_bytes(path, b"%d" % (i % 8)), range(400)))
    assert path.read_bytes() in {b"%d" % i for i in range(8)}
    assert [p.name for p in tmp_path.iterdir()] == ["entry.json"]  # no temporary file left behind
