"""ImgEdit-Bench Basic and UGE: loading the public json layouts, generation layout, and scoring against
a loopback judge with the expected numbers computed by hand from its replies."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import BenchmarkDataError
from benchmarks.imgedit import (
    ImgEditBenchmark, ImgEditConfig, ImgEditUGEBenchmark, ImgEditUGEConfig, official_line_scores, official_sample_score,
    official_type_score,
)
from benchmarks.judges.base import ReplyParseError
from benchmarks.judges.openai_api import OpenAIJudgeConfig
from tests.bench_fixtures import (
    FakeEditor, nearest_color, solid, write_code_with_prompts, write_imgedit_basic, write_imgedit_prompts, write_uge,
)
from tests.judge_server import ChatServer, reply

BASIC = {
    "10": {"id": "animal/000010.jpg", "prompt": "Add a red hat to the cat.", "edit_type": "add"},
    "11": {"id": "animal/000011.jpg", "prompt": "Add a ball next to the dog.", "edit_type": "add"},
    "12": {"id": "animal/000012.jpg", "prompt": "Add a bird on the fence.", "edit_type": "add"},
    "20": {"id": "street/000020.jpg", "prompt": "Remove the parked car.", "edit_type": "remove"},
    "21": {"id": "street/000021.jpg", "prompt": "Remove the lamp post.", "edit_type": "remove"},
    "30": {"id": "mixed/000030.jpg", "prompt": "Add a dog and make the sky pink.", "edit_type": "compose"},
    "31": {"id": "mixed/000031.jpg", "prompt": "Replace the cup with a mug and remove the spoon.", "edit_type": "compose"},
    "32": {"id": "mixed/000032.jpg", "prompt": "Remove the hat and add a scarf.", "edit_type": "compose"},
    "33": {"id": "mixed/000033.jpg", "prompt": "Turn the car blue and add snow.", "edit_type": "compose"},
    "34": {"id": "mixed/000034.jpg", "prompt": "Add a moon and remove the clouds.", "edit_type": "compose"},
}
SOURCE_COLOR = {"10": "red", "11": "green", "12": "blue", "20": "yellow", "21": "cyan", "30": "magenta", "31": "white",
                "32": "black", "33": "orange", "34": "gray"}
OUTPUT_COLOR = {"10": "orange", "11": "gray", "12": "white", "20": "black", "21": "red", "30": None,  # 30: missing
                "31": "green", "32": "blue", "33": "yellow", "34": "cyan"}
# The judge's replies, written in the forms GPT-4o answers with, each chosen to exercise one rule of the
# official step1_get_avgscore.py: a line counts when `line.strip().split(': ')` has two parts, the second all digits.
REPLIES = {
    "10": "Brief reasoning: hat added cleanly.\nPrompt Compliance: 5\nVisual Seamlessness: 4\nPhysical & Detail Fidelity: 4",
    # a criterion written with its denominator ("4/5" is not all digits): it counts nothing
    "11": "Brief reasoning: ball is small.\nPrompt Compliance: 4/5\nVisual Seamlessness: 3\nPhysical & Detail Fidelity: 2",
    # markdown around the name still counts; around the value it does not
    "12": "Brief reasoning: bird added.\n**Prompt Compliance**: 4\nVisual Seamlessness: **5**\nPhysical & Detail Fidelity: 3",
    # a fourth line of the same form counts too
    "20": "Prompt Compliance: 3\nVisual Seamlessness: 3\nPhysical & Detail Fidelity: 2\nOverall: 3",
    # Windows line ends and indentation are fine (splitlines, strip)
    "21": "Brief reasoning: removed.\r\n  Prompt Compliance: 5\r\nVisual Seamlessness: 5\r\nPhysical & Detail Fidelity: 4",
    "31": "I cannot evaluate these images.",  # nothing counts: dropped by the official scripts, failed here
    "32": "Prompt Compliance: 2\nVisual Seamlessness: 2\nPhysical & Detail Fidelity: 1",
    "33": "Prompt Compliance: 3\nVisual Seamlessness: 2\nPhysical & Detail Fidelity: 2",
    "34": "Prompt Compliance: 2\nVisual Seamlessness: 1\nPhysical & Detail Fidelity: 1",
}


@pytest.fixture
def basic(tmp_path) -> Path:
    return write_imgedit_basic(tmp_path / "Basic", BASIC, SOURCE_COLOR)


def write_outputs(b, out: Path, model: str, colors: dict[str, str | None]) -> None:
    for s in b.samples():
        if colors[s.id]:
            p = b.output_path(out, model, s)
            p.parent.mkdir(parents=True, exist_ok=True)
            solid(colors[s.id], (24, 24)).save(p)


def assert_per_task(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for task, row in expected.items():
        assert actual[task] == pytest.approx(row), task


def criteria_reply(req):
    key = next(k for k, v in BASIC.items() if v["prompt"] in req.text)
    assert [nearest_color(im) for im in req.images] == [SOURCE_COLOR[key], OUTPUT_COLOR[key]]  # [original, edited]
    assert req.images[1].size == (24, 24)  # sent as is (the official ImgEdit script does not resize)
    return reply(REPLIES[key])


def test_load_basic_and_errors(tmp_path, basic):
    b = ImgEditBenchmark(ImgEditConfig(path=str(basic.parent)))
    assert [(s.id, s.task) for s in b.samples()] == [(k, v["edit_type"]) for k, v in BASIC.items()]
    assert [s.id for s in ImgEditBenchmark(ImgEditConfig(path=str(basic), limit=1)).samples()] == ["10", "20", "30"]
    with pytest.raises(BenchmarkDataError, match="nothing: file not found .*basic_edit.json"):
        ImgEditBenchmark(ImgEditConfig(path=str(tmp_path / "nothing"))).samples()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": {"id": "x.jpg", "prompt": "p"}}))
    with pytest.raises(BenchmarkDataError, match=r"bad.json: item '1' must be an object with string fields id, prompt, edit_type"):
        ImgEditBenchmark(ImgEditConfig(path=str(bad))).samples()
    with pytest.raises(BenchmarkDataError, match="10 source images not found under the image root .*elsewhere"):
        ImgEditBenchmark(ImgEditConfig(path=str(basic), image_root=str(tmp_path / "elsewhere"))).samples()


def test_generate_writes_the_public_layout(tmp_path, basic):
    b = ImgEditBenchmark(ImgEditConfig(path=str(basic)))
    editor = FakeEditor()
    b.generate(editor, tmp_path / "out", model_name="m", batch_size=4)
    assert sorted(p.name for p in (tmp_path / "out/m").iterdir()) == sorted(f"{k}.png" for k in BASIC)
    assert [ins for _, batch, _ in editor.seen for ins in batch] == [v["prompt"] for v in BASIC.values()]


def test_official_line_rule():
    """step1_get_avgscore.py's rule, line by line."""
    assert official_line_scores("Prompt Compliance: 4\nVisual Seamlessness: 3") == [("Prompt Compliance", 4),
                                                                                  ("Visual Seamlessness", 3)]
    for line in ["Prompt Compliance: 4/5", "Prompt Compliance: 4.", "Prompt Compliance: **4**", "Score: 3 (Acceptable)",
                 "Prompt Compliance:4", "Brief reasoning: fine. Score: 4", "Prompt Compliance: -1", "Score: 4 / 5"]:
        assert official_line_scores(line) == [], line
    assert official_line_scores("**Visual Seamlessness**: 5\n Overall: 7 ") == [("**Visual Seamlessness**", 5), ("Overall", 7)]
    assert official_sample_score("A: 5\nB: 4\nC: 4") == 4.33  # 13 / 3 = 4.333.. -> 4.33
    assert official_sample_score("A: 4/5\nB: 3\nC: 2") == 2.5  # the '4/5' line counts nothing: (3 + 2) / 2
    with pytest.raises(ReplyParseError, match="counts nothing"):
        official_sample_score("Brief reasoning: all good")
    assert official_type_score([4.33, 2.5, 3.5]) == 3.44  # 10.33 / 3 = 3.4433.. -> 3.44


def test_basic_score_follows_the_official_scripts(tmp_path, basic):
    prompts = write_imgedit_prompts(tmp_path / "prompts.json", ["add", "remove", "compose"])
    with ChatServer(criteria_reply) as server:
        judge = OpenAIJudgeConfig(model="gpt-4o", base_url=server.base_url, api_key_env="", image_format="png",
                                  parse_retries=1, concurrency=2)
        b = ImgEditBenchmark(ImgEditConfig(path=str(basic), prompts=str(prompts), judge=judge))
        write_outputs(b, tmp_path / "out", "m", OUTPUT_COLOR)
        solid("red").save(tmp_path / "out/m/30.jpg")  # 30's output as JPEG: the official script reads 30.png only
        solid("red").save(tmp_path / "out/m/99.png")  # a key basic_edit.json does not have
        (res,) = b.score(tmp_path / "out", model_name="m")
        assert len(server.judged) == 9 + 1 and server.preflights == 1  # nine outputs, one re-ask of 31's reply
        assert res.meta["judge_calls"] == len(server.requests) == 11
        assert any(r.text == "TEST-PROMPT type=remove. Instruction: Remove the parked car.. Rate A, B, C from 1 to 5."
                   for r in server.requests)

    # By hand, from the official rules. Step 1 (step1_get_avgscore.py), per sample: the mean of the lines that
    # count, rounded to 2 decimals.
    s10 = 4.33  # (5 + 4 + 4) / 3 = 4.333..
    s11 = 2.5   # "Prompt Compliance: 4/5" counts nothing: (3 + 2) / 2
    s12 = 3.5   # "**Prompt Compliance**: 4" counts, "Visual Seamlessness: **5**" does not: (4 + 3) / 2
    s20 = 2.75  # four lines count: (3 + 3 + 2 + 3) / 4
    s21 = 4.67  # (5 + 5 + 4) / 3 = 4.666..
    s32, s33, s34 = 1.67, 2.33, 1.33  # 5/3, 7/3, 4/3; 30 has no output, 31's reply counts nothing
    # Step 2 (step2_typescore.py), per type: the mean of the step-1 values, rounded to 2 decimals.
    add = 3.44      # (4.33 + 2.5 + 3.5) / 3 = 10.33 / 3 = 3.4433..
    remove = 3.71   # (2.75 + 4.67) / 2 = 7.42 / 2
    compose = 1.78  # (1.67 + 2.33 + 1.33) / 3 = 5.33 / 3 = 1.7766..
    assert (s10 + s11 + s12) / 3 != pytest.approx(add) and (s32 + s33 + s34) / 3 != pytest.approx(compose)
    assert res.benchmark == "imgedit" and res.subset == "basic"
    assert res.per_task == {"add": {"Score": add}, "remove": {"Score": remove}, "compose": {"Score": compose}}
    assert res.metrics["Score"] == pytest.approx((3.44 + 3.71 + 1.78) / 3)  # = 8.93 / 3 = 2.9766..
    assert list(res.per_task) == ["add", "remove", "compose"]  # the paper's column order (Add before Remove)
    assert res.counts["add"] == {"n": 3, "scored": 3, "failed": 0, "missing": 0}
    assert res.counts["remove"] == {"n": 2, "scored": 2, "failed": 0, "missing": 0}
    assert res.counts["compose"] == {"n": 5, "scored": 3, "failed": 1, "missing": 1}
    assert res.meta["prompts"] == "official" and res.meta["scorer"] == "imgedit"
    assert res.meta["judge_params"]["image_format"] == "png" and res.meta["type_labels"]["compose"] == "Hybrid"
    assert res.meta["matches_public_counts"] is False
    assert res.meta["off_protocol_replies"] == 3 and res.meta["off_protocol_ids"] == ["11", "12", "20"]
    assert res.meta["missing_outputs"] == ["30.png"] and res.meta["extra_outputs"] == ["30.jpg", "99.png"]
    assert res.meta["judge_model"] == "gpt-4o" and res.meta["judge_passes"] == 1 and len(res.meta["prompts_version"]) == 12
    rows = {json.loads(l)["id"]: json.loads(l) for l in (tmp_path / "out/m/imgedit_basic_samples.jsonl").read_text().splitlines()}
    assert rows["10"]["criteria"] == [["Prompt Compliance", 5], ["Visual Seamlessness", 4], ["Physical & Detail Fidelity", 4]]
    assert rows["11"]["Score"] == 2.5 and rows["11"]["off_protocol"] is True
    assert rows["31"]["status"] == "failed" and "counts nothing" in rows["31"]["error"]
    assert rows["30"] == {"id": "30", "task": "compose", "status": "missing", "expected": "30.png"}


def test_basic_with_the_viescore_scorer(tmp_path, basic):
    keep = {"10", "11", "20", "21", "30", "31"}
    sc = {"10": (8, 6), "11": (5, 9), "20": (7, 7), "21": (2, 9), "31": (10, 4)}
    pq = {"orange": (6, 9), "gray": (4, 4), "black": (8, 10), "red": (3, 5), "green": (7, 8)}

    def responder(req):
        if len(req.images) == 1:
            s = pq[nearest_color(req.images[0])]
        else:
            assert req.images[0].size == req.images[1].size == (36, 28)  # resized to the original, as VIEScore/GEdit
            s = sc[next(k for k, v in BASIC.items() if v["prompt"] in req.text)]
        return reply('{"score": [%d, %d], "reasoning": ""}' % s)

    with ChatServer(responder) as server:
        judge = OpenAIJudgeConfig(model="gpt-4.1", base_url=server.base_url, api_key_env="", concurrency=2)
        b = ImgEditBenchmark(ImgEditConfig(path=str(basic), scorer="viescore", judge=judge))
        write_outputs(b, tmp_path / "out", "m", {k: c if k in keep else None for k, c in OUTPUT_COLOR.items()})
        (res,) = b.score(tmp_path / "out", model_name="m")
    g = math.sqrt
    add = {"SC": (6 + 5) / 2, "PQ": (6 + 4) / 2, "Overall": (g(6 * 6) + g(5 * 4)) / 2}
    remove = {"SC": (7 + 2) / 2, "PQ": (8 + 3) / 2, "Overall": (g(7 * 8) + g(2 * 3)) / 2}
    compose = {"SC": 4, "PQ": 7, "Overall": g(4 * 7)}
    assert res.subset == "basic_viescore" and res.meta["prompts"] == "unofficial"
    assert res.counts["compose"] == {"n": 5, "scored": 1, "failed": 0, "missing": 4}
    assert_per_task(res.per_task, {"add": add, "remove": remove, "compose": compose})
    assert res.metrics["Overall"] == pytest.approx((add["Overall"] + remove["Overall"] + compose["Overall"]) / 3)


UGE = {
    "1": {"id": "000029784.jpg", "prompt": "Remove the lemon slice inside the glass."},
    "2": {"id": "000065904.jpg", "prompt": "Remove the person in the front passenger seat."},
    "3": {"id": "000066341.jpg", "prompt": "Remove the small tomato in the center."},
    "4": {"id": "000068077.jpg", "prompt": "Remove the chair far from the camera."},
    "5": {"id": "000070001.jpg", "prompt": "Make the left cup red."},
    "6": {"id": "000070002.jpg", "prompt": "Add a second lamp."},
}
UGE_REPLY = {
    "1": "Brief reasoning: done well. Score: 4.",  # one line with two ': ': counts nothing (dropped officially)
    "2": "Brief reasoning: partial.\nScore: 2",
    "3": "Brief reasoning: right object, clean.\nScore: 4",
    "4": "Brief reasoning: ok.\nScore: 3 (Acceptable)",  # '3 (Acceptable)' is not all digits: counts nothing
    "5": "Score: 4\nConfidence: 3",  # two lines count
}


def test_uge_score_follows_the_official_script(tmp_path):
    src = write_uge(tmp_path / "UGE", UGE, dict(zip(UGE, ["red", "green", "blue", "yellow", "cyan", "white"])))
    marker = tmp_path / "executed"
    module = write_code_with_prompts(tmp_path / "ImgEdit/Benchmark/UGE/UGE_bench.py",
                                     {"prompt": "UGE-TEST Editing Instruction: <edit_prompt>. Reply Score: N"}, marker)

    def responder(req):
        key = next(k for k, v in UGE.items() if v["prompt"] in req.text)
        return reply(UGE_REPLY[key])

    with ChatServer(responder) as server:
        judge = OpenAIJudgeConfig(model="gpt-4o", base_url=server.base_url, api_key_env="", parse_retries=0)
        b = ImgEditUGEBenchmark(ImgEditUGEConfig(path=str(src.parent), image_root=str(src.parent / "images"),
                                                 prompts=str(module.parent), judge=judge))
        b.generate(FakeEditor(), tmp_path / "out", model_name="m")
        assert sorted(p.name for p in (tmp_path / "out/m/uge").glob("*.png")) == [f"{k}.png" for k in UGE]
        (tmp_path / "out/m/uge/6.png").unlink()
        (res,) = b.score(tmp_path / "out", model_name="m")
        assert server.judged[0].text.startswith("UGE-TEST Editing Instruction: ")
    assert not marker.exists()
    # By hand (Benchmark/UGE/get_average_score.py): per sample the mean of the counted lines rounded to 2
    # decimals: 2 -> 2.0, 3 -> 4.0, 5 -> (4 + 3) / 2 = 3.5; 1 and 4 count nothing, 6 has no output.
    # Score: the mean over samples rounded to 2 decimals: (2.0 + 4.0 + 3.5) / 3 = 9.5 / 3 = 3.1666.. -> 3.17.
    assert res.benchmark == "imgedit_uge" and res.metrics["Score"] == 3.17 and res.per_task == {"uge": {"Score": 3.17}}
    assert res.counts == {"uge": {"n": 6, "scored": 3, "failed": 2, "missing": 1}}
    assert res.meta["prompts"] == "official" and res.meta["complete"] is False
    assert res.meta["off_protocol_ids"] == ["5"] and res.meta["missing_outputs"] == ["6.png"]
