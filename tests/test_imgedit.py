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
from benchmarks.imgedit import ImgEditBenchmark, ImgEditConfig, ImgEditUGEBenchmark, ImgEditUGEConfig
from benchmarks.judges.openai_api import OpenAIJudgeConfig
from tests.bench_fixtures import (
    FakeEditor, nearest_color, solid, write_code_with_prompts, write_imgedit_basic, write_imgedit_prompts, write_uge,
)
from tests.judge_server import ChatServer, reply

BASIC = {
    "10": {"id": "animal/000010.jpg", "prompt": "Add a red hat to the cat.", "edit_type": "add"},
    "11": {"id": "animal/000011.jpg", "prompt": "Add a ball next to the dog.", "edit_type": "add"},
    "20": {"id": "street/000020.jpg", "prompt": "Remove the parked car.", "edit_type": "remove"},
    "21": {"id": "street/000021.jpg", "prompt": "Remove the lamp post.", "edit_type": "remove"},
    "30": {"id": "mixed/000030.jpg", "prompt": "Add a dog and make the sky pink.", "edit_type": "compose"},
    "31": {"id": "mixed/000031.jpg", "prompt": "Replace the cup with a mug and remove the spoon.", "edit_type": "compose"},
}
SOURCE_COLOR = {"10": "red", "11": "green", "20": "blue", "21": "yellow", "30": "cyan", "31": "magenta"}
OUTPUT_COLOR = {"10": "orange", "11": "gray", "20": "white", "21": "black", "30": None, "31": "green"}  # 30: missing
# Criteria the judge gives, by sample; 21 gets only two criteria lines (unusable).
CRITERIA = {"10": (5, 4, 4), "11": (2, 2, 2), "20": (3, 3, 3), "21": (4, 4), "31": (4, 5, 3)}


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
    names = ["Prompt Compliance", "Visual Seamlessness", "Physical & Detail Fidelity"]
    return reply("Brief reasoning: test.\n" + "\n".join(f"{n}: {v}" for n, v in zip(names, CRITERIA[key])))


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
    with pytest.raises(BenchmarkDataError, match="6 source images not found under the image root .*elsewhere"):
        ImgEditBenchmark(ImgEditConfig(path=str(basic), image_root=str(tmp_path / "elsewhere"))).samples()


def test_generate_writes_the_public_layout(tmp_path, basic):
    b = ImgEditBenchmark(ImgEditConfig(path=str(basic)))
    editor = FakeEditor()
    b.generate(editor, tmp_path / "out", model_name="m", batch_size=4)
    assert sorted(p.name for p in (tmp_path / "out/m").iterdir()) == sorted(f"{k}.png" for k in BASIC)
    assert [ins for _, batch, _ in editor.seen for ins in batch] == [v["prompt"] for v in BASIC.values()]


def test_basic_score_equals_hand_computation(tmp_path, basic):
    prompts = write_imgedit_prompts(tmp_path / "prompts.json", ["add", "remove", "compose"])
    with ChatServer(criteria_reply) as server:
        judge = OpenAIJudgeConfig(model="gpt-4o", base_url=server.base_url, api_key_env="", image_format="png",
                                  parse_retries=1, concurrency=2)
        b = ImgEditBenchmark(ImgEditConfig(path=str(basic), prompts=str(prompts), judge=judge))
        write_outputs(b, tmp_path / "out", "m", OUTPUT_COLOR)
        (res,) = b.score(tmp_path / "out", model_name="m")
        assert len(server.requests) == 5 + 1  # five outputs, one retry of 21's unusable reply
        assert any(r.text == "TEST-PROMPT type=remove. Instruction: Remove the parked car.. Rate A, B, C from 1 to 5."
                   for r in server.requests)
    # By hand: per-sample mean rounded to 2 decimals (official step 1), per-type means, mean over types.
    s10, s11, s20, s31 = 4.33, 2.0, 3.0, 4.0  # (5+4+4)/3 -> 4.33
    add, remove, compose = (s10 + s11) / 2, s20, s31
    assert res.benchmark == "imgedit" and res.subset == "basic"
    assert_per_task(res.per_task, {"add": {"Score": add}, "remove": {"Score": remove}, "compose": {"Score": compose}})
    assert res.metrics["Score"] == pytest.approx((add + remove + compose) / 3)
    assert list(res.per_task) == ["add", "remove", "compose"]  # the paper's column order (Add before Remove)
    assert res.counts["remove"] == {"n": 2, "scored": 1, "failed": 1, "missing": 0}
    assert res.counts["compose"] == {"n": 2, "scored": 1, "failed": 0, "missing": 1}
    assert res.meta["prompts"] == "official" and res.meta["scorer"] == "imgedit"
    assert res.meta["judge_params"]["image_format"] == "png" and res.meta["type_labels"]["compose"] == "Hybrid"
    assert res.meta["matches_public_counts"] is False
    rows = {json.loads(l)["id"]: json.loads(l) for l in (tmp_path / "out/m/imgedit_basic_samples.jsonl").read_text().splitlines()}
    assert rows["10"]["criteria"] == {"Prompt Compliance": 5, "Visual Seamlessness": 4, "Physical & Detail Fidelity": 4}
    assert rows["21"]["status"] == "failed" and "expected 3" in rows["21"]["error"]


def test_basic_with_the_viescore_scorer(tmp_path, basic):
    sc = {"10": (8, 6), "11": (5, 9), "20": (7, 7), "21": (2, 9), "31": (10, 4)}
    pq = {"orange": (6, 9), "gray": (4, 4), "white": (8, 10), "black": (3, 5), "green": (7, 8)}

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
        write_outputs(b, tmp_path / "out", "m", OUTPUT_COLOR)
        (res,) = b.score(tmp_path / "out", model_name="m")
    g = math.sqrt
    add = {"SC": (6 + 5) / 2, "PQ": (6 + 4) / 2, "Overall": (g(6 * 6) + g(5 * 4)) / 2}
    remove = {"SC": (7 + 2) / 2, "PQ": (8 + 3) / 2, "Overall": (g(7 * 8) + g(2 * 3)) / 2}
    compose = {"SC": 4, "PQ": 7, "Overall": g(4 * 7)}
    assert res.subset == "basic_viescore" and res.meta["prompts"] == "unofficial"
    assert_per_task(res.per_task, {"add": add, "remove": remove, "compose": compose})
    assert res.metrics["Overall"] == pytest.approx((add["Overall"] + remove["Overall"] + compose["Overall"]) / 3)


UGE = {
    "1": {"id": "000029784.jpg", "prompt": "Remove the lemon slice inside the glass."},
    "2": {"id": "000065904.jpg", "prompt": "Remove the person in the front passenger seat."},
    "3": {"id": "000066341.jpg", "prompt": "Remove the small tomato in the center."},
    "4": {"id": "000068077.jpg", "prompt": "Remove the chair far from the camera."},
}
UGE_REPLY = {"1": "Brief reasoning: done well. Score: 4.", "2": "Brief reasoning: partial.\nScore: 2 (Fair)",
             "3": "Brief reasoning: I cannot judge this."}


def test_uge_score_equals_hand_computation(tmp_path):
    src = write_uge(tmp_path / "UGE", UGE, {"1": "red", "2": "green", "3": "blue", "4": "yellow"})
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
        assert sorted(p.name for p in (tmp_path / "out/m/uge").glob("*.png")) == ["1.png", "2.png", "3.png", "4.png"]
        (tmp_path / "out/m/uge/4.png").unlink()
        (res,) = b.score(tmp_path / "out", model_name="m")
        assert server.requests[0].text.startswith("UGE-TEST Editing Instruction: ")
    assert not marker.exists()
    assert res.benchmark == "imgedit_uge" and res.metrics["Score"] == pytest.approx((4 + 2) / 2)
    assert res.counts == {"uge": {"n": 4, "scored": 2, "failed": 1, "missing": 1}}
    assert res.meta["prompts"] == "official" and res.meta["complete"] is False
