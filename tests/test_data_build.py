"""The instruction-dataset builder (App. D) against a canned OpenAI-compatible VLM on loopback: the format
it writes, the prompts it sends, resume after a real kill with no request asked twice, unreadable images
named, malformed and failing replies retried then counted (never invented), the preflight before any
work, the customization branch, the sources it reads, and a toy NP-Edit run trained on what it built."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from benchmarks.judges.base import ReplyParseError
from harness.data.__main__ import main
from harness.data.instructions import read_instructions
from harness.data.prompts import load_prompts, parse_proposals, parse_validity, PromptFileError
from tests.canned_vlm import INSTRUCTIONS, CannedVLM, asked_types, default_validity, stage_of
from tests.judge_server import ChatServer, Recorded, error, malformed, reply

REPO = Path(__file__).resolve().parents[1]
CFG = str(REPO / "configs" / "data" / "qwen2.5-vl-32b.yaml")
COLORS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 160, 0)}


def shape_image(color: str, size: int = 40) -> Image.Image:
    im = Image.new("RGB", (size, size + 8), (255, 255, 255))
    ImageDraw.Draw(im).ellipse((8, 8, size - 8, size - 8), fill=COLORS[color])
    return im


def image_color(rec: Recorded) -> str:
    """The colour of the shape in the (last) image of a request."""
    px = rec.images[-1].getpixel((rec.images[-1].width // 2, rec.images[-1].height // 2 - 4))
    return next(c for c, v in COLORS.items() if v == px)


def folder(root: Path, colors=("red", "blue", "green"), caption: dict[str, str] | None = None) -> Path:
    d = root / "corpus"
    d.mkdir(parents=True, exist_ok=True)
    for c in colors:
        shape_image(c).save(d / f"{c}.png")
    for c, text in (caption or {}).items():
        (d / f"{c}.txt").write_text(text)
    return d


def vlm_args(server: ChatServer, concurrency: int = 2) -> list[str]:
    return ["--vlm", CFG, f"vlm.base_url={server.base_url}", "vlm.max_retries=1", "vlm.backoff_s=0",
            "vlm.timeout_s=20", f"vlm.concurrency={concurrency}"]


def build(images: Path, out: Path, server: ChatServer, *extra: str, concurrency: int = 2) -> int:
    return main(["build", "--images", str(images), "--out", str(out), *extra, *vlm_args(server, concurrency)])


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "instructions.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# What it writes and sends


def test_build_writes_the_instruction_format_with_captions_provenance_and_the_prompts_of_app_d(tmp_path, capsys):
    images = folder(tmp_path, caption={"red": "a red ball on a white table"})
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg")
    vlm = CannedVLM()
    out = tmp_path / "ds"
    with ChatServer(vlm) as server:
        assert build(images, out, server, "--types", "color", "remove", "add", "--per-image", "3") == 0
        sent = server.judged
    recs = read_instructions(out)  # the loader of the format reads it
    P = load_prompts()
    # 3 readable images x 3 proposals, all valid; the broken file is skipped
    assert len(recs) == 9 and {r.edit_type for r in recs} == {"color", "remove", "add"}
    by_type = {r.edit_type: r for r in recs}
    assert by_type["remove"].object == INSTRUCTIONS["remove"][1]
    assert all(r.caption_edit == f"the image after: {r.instruction}" for r in recs)  # c^x is the validity reply's caption
    caps = {r.caption_ref for r in recs}
    assert caps == {"a red ball on a white table", "a red circle on a white background"}  # corpus caption, else the VLM's
    assert all((out / r.image).is_file() for r in recs)
    assert len({r.image for r in recs}) == 3
    prov = rows(out)[0]["provenance"]
    assert prov["vlm"] == "Qwen2.5-VL-32B-Instruct" and prov["prompt_version"] == P.version
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["count"] == 9 and meta["per_type"] == {"add": 3, "color": 3, "remove": 3}
    assert meta["builder"]["prompt_version"] == P.version
    report = json.loads((out / "build_report.json").read_text())
    assert [u["source"] for u in report["unreadable"]] == ["broken.jpg"]
    assert "broken.jpg" in capsys.readouterr().out  # named in the summary too
    # the requests: 2 captions (blue, green), 3 proposals, 9 validity questions, each with its system message
    stages = [stage_of(r) for r in sent]
    assert sorted(stages) == sorted(["caption"] * 2 + ["proposal"] * 3 + ["validity"] * 9)
    proposal = next(r for r in sent if stage_of(r) == "proposal")
    assert proposal.system == P.text("proposal", "system")
    assert asked_types(proposal) == ["color", "add", "remove"]  # only the asked types, in the paper's names
    assert "Now write 3" in proposal.text and "never place the new object" in proposal.text
    validity = [r for r in sent if stage_of(r) == "validity" and image_color(r) == "red"]
    assert all("Original caption: a red ball on a white table" in r.text for r in validity)
    assert validity[0].system == P.text("validity", "system")
    assert all(len(r.images) == 1 for r in sent)


def test_invalid_verdicts_are_dropped_and_counted(tmp_path):
    def validity(rec):
        if "Edit instruction: add" in rec.text:
            return reply("Validity: invalid\nReasoning: there is no room.\nEdited image caption: NA")
        return default_validity(rec)

    out = tmp_path / "ds"
    with ChatServer(CannedVLM(validity=validity)) as server:
        assert build(folder(tmp_path), out, server, "--types", "color", "add", "--per-image", "2") == 0
    recs = read_instructions(out)
    assert {r.edit_type for r in recs} == {"color"} and len(recs) == 3
    summary = json.loads((out / "dataset.json").read_text())["summary"]
    assert summary["rejected_invalid"] == 3 and summary["proposals"] == 6


def test_malformed_replies_are_retried_then_counted_and_nothing_is_invented(tmp_path):
    """Blue's proposals are never parsable (asked 1 + parse_retries times, then counted); green's first
    validity reply is malformed and its second is fine (kept); red's validity answers 'valid' without a
    caption for 'add' (unparsable: no c^x is made up) and the server fails red's color question (500)."""
    calls = {"green_validity": 0}

    def proposal(rec):
        if image_color(rec) == "blue":
            return reply("Sure! Here are some great ideas for this picture.")
        return reply("- Instruction: make the red circle blue\n- Type: local color change\n- Object: circle\n"
                     "- Instruction: add a green square at the top left\n- Type: add\n- Object: square")

    def validity(rec):
        color = image_color(rec)
        if color == "green":
            calls["green_validity"] += 1
            if calls["green_validity"] == 1:
                return malformed()  # not JSON at all: a transport-level retry
        if color == "red" and "Edit instruction: add" in rec.text:
            return reply("Validity: valid\nReasoning: fine.\nEdited image caption: NA")
        if color == "red":
            return error(500)
        return default_validity(rec)

    vlm = CannedVLM(proposal=proposal, validity=validity)
    out = tmp_path / "ds"
    with ChatServer(vlm) as server:
        assert build(folder(tmp_path), out, server, "--types", "color", "add", "--per-image", "2", concurrency=1) == 0
        sent = server.judged
    recs = read_instructions(out)
    src = {r["provenance"]["source"] for r in rows(out)}
    assert src == {"green.png"} and len(recs) == 2  # blue: no proposals; red: both candidates failed
    blue = [r for r in sent if stage_of(r) == "proposal" and image_color(r) == "blue"]
    assert len(blue) == 3  # parse_retries: 2 -> asked three times
    red_add = [r for r in sent if stage_of(r) == "validity" and image_color(r) == "red" and "Edit instruction: add" in r.text]
    assert len(red_add) == 3
    red_color = [r for r in sent if stage_of(r) == "validity" and image_color(r) == "red" and "Edit instruction: make" in r.text]
    assert len(red_color) == 2  # vlm.max_retries=1: two HTTP requests, then failed
    s = json.loads((out / "dataset.json").read_text())["summary"]
    assert s["failed_proposal_unparsable"] == 1 and s["failed_validity_unparsable"] == 1
    assert s["failed_validity_request"] == 1 and s["records"] == 2
    failed = json.loads((out / "build_report.json").read_text())["failed_requests"]
    assert sorted((f["source"], f["stage"], f["kind"]) for f in failed) == [
        ("blue.png", "proposal", "unparsable"), ("red.png", "validity", "request"), ("red.png", "validity", "unparsable")]
    # a rerun asks nothing again (failures are cached) unless asked to retry them
    n = len(server.requests)
    with ChatServer(CannedVLM()) as fixed:
        assert build(folder(tmp_path), out, fixed, "--types", "color", "add", "--per-image", "2") == 0
        assert len(fixed.judged) == 0
        assert build(folder(tmp_path), out, fixed, "--types", "color", "add", "--per-image", "2", "--retry-failed") == 0
        assert len(fixed.judged) == 1 + 2 + 2  # blue's proposal (then its 2 validities), red's 2 validities
    assert n > 0 and len(read_instructions(out)) == 6


def test_duplicate_images_are_asked_about_once(tmp_path):
    images = folder(tmp_path, colors=("red", "blue"))
    (images / "red_copy.png").write_bytes((images / "red.png").read_bytes())
    out = tmp_path / "ds"
    with ChatServer(CannedVLM()) as server:
        assert build(images, out, server, "--types", "color", "--per-image", "1") == 0
        assert sum(stage_of(r) == "proposal" for r in server.judged) == 2
    s = json.loads((out / "dataset.json").read_text())["summary"]
    assert s["duplicate_images"] == 1 and len(read_instructions(out)) == 2


# ---------------------------------------------------------------------------------------------
# Resume after a kill


def _key(rec: Recorded) -> str:
    return json.dumps(rec.body["messages"], sort_keys=True)


def test_a_killed_build_resumes_with_zero_repeated_calls_and_equals_an_uninterrupted_one(tmp_path):
    images = folder(tmp_path, colors=("red", "blue", "green"))
    args = ["--types", "color", "add", "remove", "--per-image", "3"]
    # uninterrupted, in a folder of its own
    with ChatServer(CannedVLM()) as server:
        assert build(images, tmp_path / "whole", server, *args, concurrency=1) == 0
        whole = [_key(r) for r in server.judged]
    assert len(whole) == 3 * (1 + 1 + 3)  # caption, proposal, 3 validity questions per image

    kill_at = 7  # SIGKILL the build when its 7th request arrives (the 7th is never answered)
    proc: dict[str, subprocess.Popen] = {}
    canned = CannedVLM()

    def killer(rec):
        if len([r for r in server.requests if not r.is_preflight]) == kill_at:
            os.kill(proc["p"].pid, signal.SIGKILL)
        return canned(rec)

    out = tmp_path / "resumed"
    cmd = [sys.executable, "-m", "harness.data", "build", "--images", str(images), "--out", str(out), *args]
    with ChatServer(killer) as server:
        proc["p"] = subprocess.Popen(cmd + vlm_args(server, concurrency=1), cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        _, err = proc["p"].communicate(timeout=300)
        assert proc["p"].returncode == -signal.SIGKILL, err.decode()[-2000:]
        first = [_key(r) for r in server.judged]
    assert len(first) == kill_at and not (out / "instructions.jsonl").exists()
    answered = set(first[:-1])
    with ChatServer(CannedVLM()) as server:
        assert build(images, out, server, *args, concurrency=1) == 0
        second = [_key(r) for r in server.judged]
        assert not answered & set(second)  # no request answered before the kill is asked again
        assert len(second) == len(whole) - len(answered)
        assert build(images, out, server, *args, concurrency=1) == 0  # finished: nothing at all, not even a preflight
        assert len(server.judged) == len(second) and server.preflights == 1
    assert (out / "instructions.jsonl").read_text() == (tmp_path / "whole" / "instructions.jsonl").read_text()
    a, b = (json.loads((d / "dataset.json").read_text())["summary"] for d in (out, tmp_path / "whole"))
    assert {k: v for k, v in a.items() if not k.startswith("vlm")} == {k: v for k, v in b.items() if not k.startswith("vlm")}


# ---------------------------------------------------------------------------------------------
# Preflight, dry run, bad input


def test_preflight_stops_a_build_before_any_work_with_one_line(tmp_path, monkeypatch, capsys):
    images = folder(tmp_path)
    with ChatServer(CannedVLM(), key="sk-right-key-123456") as server:
        monkeypatch.delenv("VLLM_TEST_KEY", raising=False)
        rc = main(["build", "--images", str(images), "--out", str(tmp_path / "a"), *vlm_args(server),
                   "vlm.api_key_env=VLLM_TEST_KEY"])
        err = capsys.readouterr().err
        assert rc == 2 and "vlm.api_key_env: environment variable VLLM_TEST_KEY is not set" in err
        monkeypatch.setenv("VLLM_TEST_KEY", "sk-wrong-key-000000")
        rc = main(["build", "--images", str(images), "--out", str(tmp_path / "b"), *vlm_args(server),
                   "vlm.api_key_env=VLLM_TEST_KEY"])
        err = capsys.readouterr().err
        assert rc == 2 and "rejected" in err and "sk-wrong-key" not in err and len(err.strip().splitlines()) == 1
        assert server.judged == []
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written before the preflight passes
    with ChatServer(CannedVLM(), models={"other-model"}) as server:
        rc = main(["build", "--images", str(images), "--out", str(tmp_path / "c"), *vlm_args(server)])
        assert rc == 2 and "no model 'Qwen2.5-VL-32B-Instruct'" in capsys.readouterr().err
        assert server.judged == []


def test_dry_run_asks_nothing_and_bad_options_name_the_key(tmp_path, capsys):
    images = folder(tmp_path)
    with ChatServer(CannedVLM()) as server:
        assert main(["build", "--images", str(images), "--out", str(tmp_path / "ds"), "--dry-run", *vlm_args(server)]) == 0
        out = capsys.readouterr().out
        assert "Qwen2.5-VL-32B-Instruct" in out and "3 images" in out and "version" in out
        assert server.requests == []
        assert main(["build", "--images", str(images), "--out", str(tmp_path / "ds"), "--types", "colour",
                     *vlm_args(server)]) == 2
        assert "--types: unknown ['colour']" in capsys.readouterr().err
        assert main(["build", "--images", str(images), "--out", str(tmp_path / "ds"), *vlm_args(server),
                     "vlm.temperature=hot"]) == 2
        assert "vlm.temperature" in capsys.readouterr().err
        (tmp_path / "taken").mkdir()
        (tmp_path / "taken" / "notes.txt").write_text("mine")
        assert main(["build", "--images", str(images), "--out", str(tmp_path / "taken"), *vlm_args(server)]) == 2
        assert "not a dataset build folder" in capsys.readouterr().err
        assert server.judged == []


def test_prompt_file_errors_name_the_key(tmp_path):
    import yaml

    raw = yaml.safe_load(load_prompts().path.read_text())
    raw["validity"]["user"] = raw["validity"]["user"].replace("{instruction}", "the instruction")
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(PromptFileError, match=r"'validity.user' must contain \['\{instruction\}'\]"):
        load_prompts(bad)
    raw = yaml.safe_load(load_prompts().path.read_text())
    raw["proposal"]["good_examples"]["colour"] = ["x"]
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(PromptFileError, match="proposal.good_examples"):
        load_prompts(bad)


def test_reply_parsers_read_what_vlms_write_and_refuse_what_they_cannot_trust():
    P = load_prompts()
    reply_text = ("1. **Instruction:** make the sofa red\n   **Type:** local color change\n   **Object:** sofa\n"
                  "2. - Instruction: remove the lamp\n   - Type: remove\n   - Object: lamp\n"
                  "3. - Instruction: make it a painting\n   - Type: style\n"
                  "4. - Instruction: make the sofa red\n   - Type: color\n")
    got = parse_proposals(reply_text, ["color", "remove"], P.aliases, 4)
    assert [(p.edit_type, p.instruction, p.object) for p in got.items] == [
        ("color", "make the sofa red", "sofa"), ("remove", "remove the lamp", "lamp")]
    assert got.off_type == 1 and got.duplicates == 1
    with pytest.raises(ReplyParseError):
        parse_proposals("I cannot help with that.", ["color"], P.aliases, 4)
    assert parse_validity("- Validity: **invalid**\n- Reasoning: no lamp\n- Edited image caption: NA").valid is False
    assert parse_validity("Validity: valid\nReasoning: ok\nEdited image caption: A red sofa.").caption == "A red sofa."
    for bad in ("Validity: valid\nEdited image caption: NA", "Looks good to me!", "Validity: maybe"):
        with pytest.raises(ReplyParseError):
            parse_validity(bad)


# ---------------------------------------------------------------------------------------------
# Customization and sources


def test_customization_branch_sends_the_example_first_and_counts_what_it_rejects(tmp_path):
    import yaml

    raw = yaml.safe_load(load_prompts().path.read_text())
    shape_image("green", 64).save(tmp_path / "example.png")
    raw["customization"]["example_image"] = "example.png"
    pfile = tmp_path / "prompts.yaml"
    pfile.write_text(yaml.safe_dump(raw))

    def prominence(rec):
        if image_color(rec) == "blue":
            return reply("Output: False\nReasoning: a scene.\nObject Name: NA")
        return reply("Output: True\nReasoning: one object.\nObject Name: red circle")

    def backgrounds(rec):
        return reply("None") if image_color(rec) == "green" else reply("1. on a blue background\n2. in a box\n3. on a shelf")

    out = tmp_path / "ds"
    with ChatServer(CannedVLM(prominence=prominence, backgrounds=backgrounds)) as server:
        assert build(folder(tmp_path), out, server, "--types", "customization", "--prompts", str(pfile)) == 0
        checks = [r for r in server.judged if stage_of(r) == "prominence"]
        assert len(checks) == 3 and all(len(r.images) == 2 for r in checks)
        assert all(image_color(r) in COLORS and r.images[0].size == (64, 72) for r in checks)  # the example comes first
        assert not any(stage_of(r) == "proposal" for r in server.judged)
    recs = read_instructions(out)
    assert len(recs) == 3 and {r.edit_type for r in recs} == {"customization"}
    assert recs[0].instruction == "Generate the main object shown in the first image in a different setting and pose: on a blue background"
    assert recs[0].caption_edit == "a red circle on a blue background" and recs[0].object == "red circle"
    s = json.loads((out / "dataset.json").read_text())["summary"]
    assert s["customization_not_prominent"] == 1 and s["customization_scene_not_object"] == 1


def test_builds_from_a_jsonl_list_and_from_parquet_with_caption_columns(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "list"
    d.mkdir()
    shape_image("red").save(d / "a.png")
    shape_image("blue").save(d / "b.png")
    (d / "list.jsonl").write_text(json.dumps({"file": "a.png", "text": "a red ball"}) + "\n"
                                  + json.dumps({"file": "b.png", "text": ""}) + "\n"
                                  + json.dumps({"file": "missing.png", "text": "gone"}) + "\n")
    buf = io.BytesIO()
    shape_image("green").save(buf, format="PNG")
    pq.write_table(pa.table({"img": [{"bytes": buf.getvalue(), "path": "g.png"}], "cap": ["a green ball"]}),
                   tmp_path / "rows.parquet")
    with ChatServer(CannedVLM()) as server:
        assert main(["build", "--images", str(d / "list.jsonl"), "--out", str(tmp_path / "a"), "--image-column", "file",
                     "--caption-column", "text", "--types", "color", "--per-image", "1", *vlm_args(server)]) == 0
        assert sum(stage_of(r) == "caption" for r in server.judged) == 1  # only b.png has no caption
        assert main(["build", "--images", str(tmp_path / "rows.parquet"), "--out", str(tmp_path / "b"),
                     "--image-column", "img", "--caption-column", "cap", "--types", "color", "--per-image", "1",
                     *vlm_args(server)]) == 0
        assert main(["build", "--images", str(d / "list.jsonl"), "--out", str(tmp_path / "c"), "--image-column", "path",
                     *vlm_args(server)]) == 2
    a = read_instructions(tmp_path / "a")
    assert [r.caption_ref for r in a] == ["a red ball", "a red circle on a white background"]
    unreadable = json.loads((tmp_path / "a" / "build_report.json").read_text())["unreadable"]
    assert len(unreadable) == 1 and unreadable[0]["source"].endswith("missing.png")
    assert [r.caption_ref for r in read_instructions(tmp_path / "b")] == ["a green ball"]


# ---------------------------------------------------------------------------------------------
# End to end: the built dataset trains NP-Edit


def test_the_built_dataset_trains_a_toy_np_edit_run(tmp_path, tmp_path_factory):
    from harness import config as C
    from harness.train import prepare_run_dir, run
    from tests import tiny_world

    out = tmp_path / "ds"
    images = folder(tmp_path, colors=("red", "blue", "green", "red"))
    with ChatServer(CannedVLM()) as server:
        assert build(images, out, server, "--types", "color", "add", "remove", "--per-image", "3") == 0
    paths = tiny_world.shared(tmp_path_factory)
    cfg = C.load_run_config(None, data=tiny_world.run_config(
        paths, {"name": "np_edit", "warmup_steps": 1, "single_step_steps": 1, "n_aux": 1},
        data={"path": str(out), "fraction": 1.0}, train={"steps": 2, "ckpt_every": 2}, eval={"benchmarks": []}))
    rd = prepare_run_dir(cfg, tmp_path / "runs", "t")
    run(rd.path)
    metrics = rd.read_metrics()
    assert [m["step"] for m in metrics] == [1, 2]
    assert (rd.model_dir / "denoiser.safetensors").is_file()


def test_builds_from_a_datasets_save_to_disk_folder_with_an_empty_image_cell_named(tmp_path):
    import datasets

    feats = datasets.Features({"img": datasets.Image(), "text": datasets.Value("string")})
    train = datasets.Dataset.from_dict({"img": [shape_image("red"), None, shape_image("blue")],
                                        "text": ["a red ball", "nothing", ""]}, features=feats)
    test = datasets.Dataset.from_dict({"img": [shape_image("green")], "text": ["a green ball"]}, features=feats)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "hf"))
    with ChatServer(CannedVLM()) as server:
        common = ["--image-column", "img", "--caption-column", "text", "--types", "color", "--per-image", "1",
                  *vlm_args(server)]
        assert main(["build", "--images", str(tmp_path / "hf"), "--out", str(tmp_path / "a"), *common]) == 0
        assert sum(stage_of(r) == "caption" for r in server.judged) == 1  # the blue row has an empty caption
        assert main(["build", "--images", str(tmp_path / "hf"), "--out", str(tmp_path / "b"), "--split", "test", *common]) == 0
        assert main(["build", "--images", str(tmp_path / "hf"), "--out", str(tmp_path / "c"), "--split", "val", *common]) == 2
    assert [r.caption_ref for r in read_instructions(tmp_path / "a")] == ["a red ball", "a red circle on a white background"]
    unreadable = json.loads((tmp_path / "a" / "build_report.json").read_text())["unreadable"]
    assert [u["source"] for u in unreadable] == ["hf:row 1"]
    assert [r.caption_ref for r in read_instructions(tmp_path / "b")] == ["a green ball"]


def test_requests_run_concurrently_up_to_the_limit(tmp_path):
    import threading
    import time

    lock, now, peak = threading.Lock(), [0], [0]

    def slow(step):
        def answer(rec):
            with lock:
                now[0] += 1
                peak[0] = max(peak[0], now[0])
            time.sleep(0.05)
            with lock:
                now[0] -= 1
            return step(rec)
        return answer

    from tests.canned_vlm import default_caption, default_proposal

    vlm = CannedVLM(caption=slow(default_caption), proposal=slow(default_proposal), validity=slow(default_validity))
    images = folder(tmp_path, colors=("red", "blue", "green"))
    for i, c in enumerate(("red", "blue", "green")):  # six distinct images
        shape_image(c, size=44).save(images / f"{c}-{i}.png")
    with ChatServer(vlm) as server:
        assert build(images, tmp_path / "ds", server, "--types", "color", "--per-image", "1", concurrency=3) == 0
    assert len(read_instructions(tmp_path / "ds")) == 6
    assert 2 <= peak[0] <= 3  # images asked about at once, never more than vlm.concurrency
