"""GEdit-Bench: loading both public formats, generation (layout, resume, shards) and scoring
against a loopback judge, with the expected numbers computed by hand from the judge's replies."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import BenchmarkDataError
from benchmarks.gedit import GEditBenchmark, GEditConfig
from benchmarks.judges.openai_api import OpenAIJudgeConfig
from harness.config import ConfigError, build_section
from harness.registry import BENCHMARKS
from tests.bench_fixtures import (
    VIE_TEST_CONSTANTS, FakeEditor, gedit_rows, nearest_color, solid, write_code_with_prompts, write_gedit,
)
from tests.judge_server import ChatServer, reply

SECRET = "sk-gedit-test-SECRET-7731"


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gedit")
    return {"disk": write_gedit(root, "disk"), "parquet": write_gedit(root, "parquet")}


def bench(path: Path, **kw) -> GEditBenchmark:
    return GEditBenchmark(GEditConfig(path=str(path), **kw))


def test_saved_dataset_and_parquet_give_the_same_samples(data_dir):
    a, b = bench(data_dir["disk"]).samples(), bench(data_dir["parquet"]).samples()
    assert [(s.id, s.instruction, s.task, s.meta["intersection"]) for s in a] == \
           [(s.id, s.instruction, s.task, s.meta["intersection"]) for s in b]
    assert len(a) == 7 and {s.task for s in a} == {"color_alter", "subject-add", "tone_transfer"}
    assert a[0].id == "color_alter/en/" + "a" * 32
    cn = bench(data_dir["disk"], language="cn").samples()
    assert [s.instruction for s in cn] == ["指令 cccc"]
    inter = bench(data_dir["parquet"], subset="intersection").samples()
    assert [s.meta["key"][0] for s in inter] == ["a", "d", "e", "1"]
    assert [s.meta["key"][0] for s in bench(data_dir["disk"], limit=1).samples()] == ["a", "d", "0"]


def test_bad_data_errors_name_the_file(tmp_path, data_dir):
    with pytest.raises(BenchmarkDataError, match="nowhere: not found"):
        bench(tmp_path / "nowhere").samples()
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkDataError, match="empty: expected a folder saved with save_to_disk"):
        bench(tmp_path / "empty").samples()
    import datasets

    ds = datasets.load_from_disk(str(data_dir["disk"])).remove_columns("Intersection_exist")
    ds.save_to_disk(str(tmp_path / "no_inter"))
    with pytest.raises(BenchmarkDataError, match=r"no_inter: missing columns \['Intersection_exist'\]"):
        bench(tmp_path / "no_inter").samples()


def test_config_through_the_registry():
    cfg = build_section(BENCHMARKS, {"name": "gedit", "path": "/data/gedit", "judge": {"name": "openai_api", "model": "gpt-4o"}},
                        "<test>", "eval.benchmarks[0]")
    assert isinstance(cfg, GEditConfig) and cfg.judge.model == "gpt-4o" and cfg.language == "en"
    assert isinstance(BENCHMARKS.get("gedit").build(cfg), GEditBenchmark)
    with pytest.raises(ConfigError, match="gedit.path must point"):
        build_section(BENCHMARKS, {"name": "gedit"}, "<test>", "eval.benchmarks[0]")
    with pytest.raises(ConfigError, match="'full'.*allowed: 'fullset', 'intersection'"):
        build_section(BENCHMARKS, {"name": "gedit", "path": "x", "subset": "full"}, "<test>", "b")


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_generate_layout_resume_and_shards(tmp_path, data_dir):
    b = bench(data_dir["disk"])
    editor = FakeEditor()
    b.generate(editor, tmp_path / "full", model_name="m", batch_size=3, seed=5)
    out = files(tmp_path / "full")
    keys = [s.meta["key"] for s in b.samples()]
    assert sorted(out) == sorted([f"m/fullset/{s.task}/en/{s.meta['key']}.png" for s in b.samples()] +
                                 [f"m/fullset/{s.task}/en/{s.meta['key']}_SRCIMG.png" for s in b.samples()])
    assert editor.calls == 3 and [seed for _, _, seed in editor.seen] == [5, 6, 7]
    assert editor.seen[0][0] == [(80, 60)] * 3  # the editor sees input_image_raw by default
    src = tmp_path / "full/m/fullset/color_alter/en" / f"{keys[0]}_SRCIMG.png"
    with Image.open(src) as im:
        assert im.size == (40, 30) and nearest_color(im) == "red"  # the judge's source: input_image

    # Two shards of a job array write exactly the files of one run.
    for i in range(2):
        b.generate(FakeEditor(), tmp_path / "sharded", model_name="m", batch_size=3, seed=5, shard=(i, 2))
    assert files(tmp_path / "sharded") == out

    # A run that crashes after one batch, resumed, ends with the same files and skips finished batches.
    with pytest.raises(RuntimeError, match="simulated crash"):
        b.generate(FakeEditor(fail_after=1), tmp_path / "resumed", model_name="m", batch_size=3, seed=5)
    resumed = FakeEditor()
    b.generate(resumed, tmp_path / "resumed", model_name="m", batch_size=3, seed=5)
    assert resumed.calls == 2 and files(tmp_path / "resumed") == out
    again = FakeEditor()
    b.generate(again, tmp_path / "full", model_name="m", batch_size=3, seed=5)
    assert again.calls == 0


# Replies of the judge in the scoring test: SC by the sample's instruction, PQ by the edited image's colour.
SC_REPLY = {"a": (9, 7), "b": (4, 8), "d": (10, 6), "f": None, "0": (2, 5), "1": (8, 8)}  # None: never parsable
PQ_REPLY = {"orange": (8, 6), "gray": (5, 9), "blue": (10, 10), "red": (3, 7), "green": (6, 6), "yellow": (9, 4)}
OUTPUT_COLOR = {"a": "orange", "b": "gray", "d": "blue", "e": None, "f": "red", "0": "green", "1": "yellow"}  # e: missing


def judge_server() -> ChatServer:
    def responder(req):
        if len(req.images) == 1:  # PQ: the edited image alone
            s = PQ_REPLY[nearest_color(req.images[0])]
            return reply(f'{{"score": [{s[0]}, {s[1]}], "reasoning": "pq"}}')
        assert req.images[0].size == req.images[1].size == (40, 30)  # edited resized to the source size
        key = next(r["key"][0] for r in gedit_rows() if r["instruction"] in req.text)
        s = SC_REPLY[key]
        return reply("no idea, sorry" if s is None else f'Output:\n{{"score": [{s[0]}, {s[1]}], "reasoning": "sc"}}')
    return ChatServer(responder)


def write_outputs(b: GEditBenchmark, out: Path, model: str) -> None:
    for s in b.samples():
        color = OUTPUT_COLOR[s.meta["key"][0]]
        if color:
            p = b.output_path(out, model, s)
            p.parent.mkdir(parents=True, exist_ok=True)
            solid(color, (24, 24)).save(p)


def test_score_equals_hand_computation_and_counts_failures(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("GEDIT_TEST_KEY", SECRET)
    marker = tmp_path / "executed"
    module = write_code_with_prompts(tmp_path / "Step1X-Edit/GEdit-Bench/viescore/vie_prompts.py", VIE_TEST_CONSTANTS, marker)
    out = tmp_path / "outputs"
    with judge_server() as server:
        judge = OpenAIJudgeConfig(model="test-judge", base_url=server.base_url, api_key_env="GEDIT_TEST_KEY",
                                  backoff_s=0.01, max_retries=1, parse_retries=1, concurrency=3)
        b = bench(data_dir["parquet"], judge=judge, prompts=str(module.parent.parent))
        write_outputs(b, out, "m")
        stray = out / "m/fullset/subject-add/en"
        solid("red").save(stray / ("e" * 32 + ".jpg"))  # e's output in the wrong format: e stays missing
        solid("red").save(stray / ("d" * 32 + "_SRCIMG.png"))  # the judge's source, written by generate: ours
        solid("red").save(out / "m/fullset/subject-add/cn.png")  # outside the scanned layout: not an output
        full, inter = b.score(out, model_name="m")
        n_requests = len(server.requests)
        assert len(server.judged) == 6 * 2 + 1  # 6 outputs x (SC, PQ), plus one retry of the unparsable SC reply
        assert server.preflights == 1 and server.requests[0].is_preflight  # checked endpoint, key, model first
        assert full.meta["judge_calls"] == n_requests == 14 and full.meta["judge_preflight_calls"] == 1
        assert all(r.text.startswith("TEST-CONTEXT") for r in server.judged)  # the official module's text
        assert any("TEST-TIE-SC instruction: instruction for color_alter aaaa" in r.text for r in server.requests)
        again = bench(data_dir["parquet"], judge=judge, prompts=str(module)).score(out, model_name="m")
        assert len(server.requests) == n_requests  # the rerun is served from the cache: no call, no preflight
        assert again[0].meta["judge_calls"] == 0 and again[0].meta["judge_cache_hits"] == 12
    assert [r.to_dict()["metrics"] for r in again] == [full.metrics, inter.metrics]
    assert not marker.exists()

    # By hand: SC = min(SC reply), PQ = min(PQ reply), O = sqrt(SC * PQ); e is missing, f failed.
    a, b_, d, z, o = (7, 6), (4, 5), (6, 10), (2, 6), (8, 4)  # (SC, PQ) of a, b, d, 0, 1
    g = lambda sp: math.sqrt(sp[0] * sp[1])  # noqa: E731
    expected_tasks = {
        "color_alter": {"SC": (7 + 4) / 2, "PQ": (6 + 5) / 2, "Overall": (g(a) + g(b_)) / 2},
        "subject-add": {"SC": 6.0, "PQ": 10.0, "Overall": g(d)},
        "tone_transfer": {"SC": (2 + 8) / 2, "PQ": (6 + 4) / 2, "Overall": (g(z) + g(o)) / 2},
    }
    assert full.subset == "fullset" and full.per_task.keys() == expected_tasks.keys()
    for t, row in expected_tasks.items():
        assert full.per_task[t] == pytest.approx(row)
    for m in ("SC", "PQ", "Overall"):
        assert full.metrics[m] == pytest.approx(sum(r[m] for r in expected_tasks.values()) / 3)
    assert full.metrics["Overall"] != pytest.approx(math.sqrt(full.metrics["SC"] * full.metrics["PQ"]))
    assert full.counts == {
        "color_alter": {"n": 2, "scored": 2, "failed": 0, "missing": 0},
        "subject-add": {"n": 3, "scored": 1, "failed": 1, "missing": 1},
        "tone_transfer": {"n": 2, "scored": 2, "failed": 0, "missing": 0},
    }
    # Intersection rows: a, d, e (missing), 1.
    assert inter.subset == "intersection"
    assert inter.metrics["SC"] == pytest.approx((7 + 6 + 8) / 3)
    assert inter.metrics["Overall"] == pytest.approx((g(a) + g(d) + g(o)) / 3)
    assert inter.counts["subject-add"] == {"n": 2, "scored": 1, "failed": 0, "missing": 1}

    meta = full.meta
    assert meta["complete"] is False and (meta["n"], meta["scored"], meta["failed"], meta["missing"]) == (7, 5, 1, 1)
    assert meta["missing_outputs"] == ["fullset/subject-add/en/" + "e" * 32 + ".png"]
    assert meta["extra"] == 1 and meta["extra_outputs"] == ["fullset/subject-add/en/" + "e" * 32 + ".jpg"]
    assert meta["prompts"] == "official" and meta["prompts_path"] == str(module.resolve())
    assert meta["judge_model"] == "test-judge" and meta["judge_backend"] == "openai_api"
    assert meta["judge_model_versions"] == ["judge-test-2025-01-01"] and meta["language"] == "en"
    assert meta["judge_params"]["temperature"] == 0.0 and meta["date"]
    assert meta["matches_public_counts"] is False  # the fixture is not the public 606-sample set

    rows = [json.loads(l) for l in (out / "m/gedit_en_samples.jsonl").read_text().splitlines()]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(rows) == 7 and len(failed) == 1 and "unparsable" in failed[0]["error"]
    assert not any(SECRET in p.read_text(errors="ignore") for p in out.rglob("*") if p.suffix in (".json", ".jsonl"))
    assert SECRET not in json.dumps([full.to_dict(), inter.to_dict()])


def test_score_with_own_prompts_is_marked_unofficial(tmp_path, data_dir):
    with judge_server() as server:
        judge = OpenAIJudgeConfig(model="test-judge", base_url=server.base_url, api_key_env="", concurrency=2,
                                  parse_retries=0)
        b = bench(data_dir["disk"], judge=judge, subset="intersection")
        write_outputs(b, tmp_path, "m")
        (res,) = b.score(tmp_path, model_name="m")
    assert res.subset == "intersection" and res.meta["prompts"] == "unofficial" and res.meta["prompts_path"] is None
    assert res.metrics["SC"] == pytest.approx((7 + 6 + 8) / 3)


def test_score_with_a_local_judge_that_cannot_answer(tmp_path, data_dir):
    from benchmarks.judges.local_vlm import LocalVLMJudgeConfig
    from tests.bench_fixtures import tiny_llava

    judge = LocalVLMJudgeConfig(model=str(tiny_llava(tmp_path / "llava")), max_new_tokens=4, device="cpu")
    b = bench(data_dir["disk"], judge=judge, limit=1)
    write_outputs(b, tmp_path / "out", "m")
    full, inter = b.score(tmp_path / "out", model_name="m")
    assert full.metrics == {} and full.per_task == {}
    assert full.meta["failed"] == 3 and full.meta["scored"] == 0 and full.meta["complete"] is False
    assert full.meta["judge_backend"] == "local_vlm" and full.meta["judge_params"]["decoding"] == "greedy"


def test_public_count_check(data_dir):
    from benchmarks.base import Sample
    from benchmarks.gedit import PUBLIC_EN_COUNTS

    b = bench(data_dir["disk"])
    b._samples = [Sample(f"{t}/{i}", None, "x", t) for t, n in PUBLIC_EN_COUNTS.items() for i in range(n)]
    assert len(b._samples) == 606 and b.matches_public_counts() is True
    b._samples.pop()
    assert b.matches_public_counts() is False
    assert bench(data_dir["disk"], limit=3).matches_public_counts() is None
