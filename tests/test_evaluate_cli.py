"""harness.evaluate as a user runs it: scoring a folder of any model's edits (--outputs), a judge
configured by parts that compose, --dry-run, and the preflight that stops a bad judge before any
generation or training (and is skipped, with every other call, when all replies are cached)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from harness import config as C
from harness.evaluate import compose_judge, main, resolve_benchmark
from tests.bench_fixtures import FakeEditor, solid, write_imgedit_basic, write_imgedit_prompts
from tests.judge_server import ChatServer, free_port_url, reply
from tests.test_imgedit import BASIC, OUTPUT_COLOR, REPLIES, SOURCE_COLOR

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-cli-test-3f9a-SECRET-never-on-disk"
JUDGES = sorted((REPO / "configs/judges").glob("*.yaml"))


def responder(req):
    key = next((k for k, v in BASIC.items() if v["prompt"] in req.text), None)
    return reply(REPLIES.get(key, "Prompt Compliance: 1"))  # 30 (no output in the fixture) and VIEScore questions


@pytest.fixture
def imgedit(tmp_path):
    data = write_imgedit_basic(tmp_path / "Basic", BASIC, SOURCE_COLOR)
    prompts = write_imgedit_prompts(tmp_path / "prompts.json", ["add", "remove", "compose"])
    return {"path": str(data), "prompts": str(prompts)}


def edits_folder(root: Path) -> Path:
    """Another model's edits in ImgEdit's public layout: {key}.png, flat; 30 missing, two stray files."""
    folder = root / "flux-kontext"
    folder.mkdir(parents=True)
    for key, color in OUTPUT_COLOR.items():
        if color:
            solid(color, (24, 24)).save(folder / f"{key}.png")
    solid("red").save(folder / "30.jpg")
    solid("red").save(folder / "99.png")
    return folder


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_outputs_folder_is_scored_as_the_official_scripts_and_a_rerun_makes_no_call(tmp_path, imgedit, monkeypatch, capsys):
    monkeypatch.setenv("CLI_JUDGE_KEY", SECRET)
    folder = edits_folder(tmp_path)
    before = tree(folder)
    with ChatServer(responder, key=SECRET, models={"gpt-4o"}) as server:
        args = ["--outputs", str(folder), "--benchmark", "imgedit", f"path={imgedit['path']}", f"prompts={imgedit['prompts']}",
                f"judge.base_url={server.base_url}", "judge.api_key_env=CLI_JUDGE_KEY", "judge.parse_retries=0"]
        assert main(args) == 0
        n = len(server.requests)
        assert n == 1 + 9 and server.requests[0].is_preflight  # the preflight, then one question per output
        # only base_url and the key's variable were overridden: ImgEdit's own judge (gpt-4o, PNG) stayed
        assert {r.body["model"] for r in server.requests} == {"gpt-4o"}
        assert all(u.startswith("data:image/png;base64,") for r in server.judged for u in r.image_urls)
        out = capsys.readouterr()
        assert "imgedit/basic: Score=2.977" in out.out  # (3.44 + 3.71 + 1.78) / 3, see test_imgedit
        assert "missing 1 output(s): 30.png" in out.err and "extra 2 file(s), not scored: 30.jpg, 99.png" in out.err

        monkeypatch.delenv("CLI_JUDGE_KEY")  # a cached evaluation needs no key, no preflight, no call
        assert main(args) == 0
        assert len(server.requests) == n
    assert tree(folder) == before  # nothing written into the outputs folder
    out_dir = tmp_path / "flux-kontext_eval"
    res = json.loads((out_dir / "result.json").read_text())
    (r,) = res["results"]
    assert res["outputs"] == str(folder.resolve()) and r["benchmark"] == "imgedit" and r["subset"] == "basic"
    assert r["per_task"] == {"add": {"Score": 3.44}, "remove": {"Score": 3.71}, "compose": {"Score": 1.78}}
    assert r["metrics"]["Score"] == pytest.approx((3.44 + 3.71 + 1.78) / 3)
    assert r["meta"]["judge_calls"] == 0 and r["meta"]["judge_cache_hits"] == 9 and r["meta"]["model_name"] == "flux-kontext"
    assert r["meta"]["missing_outputs"] == ["30.png"] and r["meta"]["extra_outputs"] == ["30.jpg", "99.png"]
    assert r["counts"]["compose"] == {"n": 5, "scored": 3, "failed": 1, "missing": 1}
    assert (out_dir / "imgedit_basic_samples.jsonl").is_file() and (out_dir / ".judge_cache").is_dir()
    assert not any(SECRET in p.read_text(errors="ignore") for p in out_dir.rglob("*") if p.is_file())


def test_results_go_to_out_and_other_benchmarks_results_are_kept(tmp_path, imgedit, capsys):
    folder = edits_folder(tmp_path)
    out = tmp_path / "scores"
    with ChatServer(responder) as server:
        common = ["--outputs", str(folder), "--out", str(out), "--benchmark", "imgedit", f"path={imgedit['path']}",
                  f"judge.base_url={server.base_url}", "judge.api_key_env=", "judge.parse_retries=0", "judge.max_retries=0"]
        assert main([*common, f"prompts={imgedit['prompts']}"]) == 0
        assert main([*common, "scorer=viescore"]) == 0  # (the replies are not VIEScore's: all counted failed)
    subsets = [r["subset"] for r in json.loads((out / "result.json").read_text())["results"]]
    assert subsets == ["basic", "basic_viescore"] and not (tmp_path / "flux-kontext_eval").exists()
    other = tmp_path / "qwen-image-edit"
    other.mkdir()
    assert main(["--outputs", str(other), "--out", str(out), "--benchmark", "imgedit", f"path={imgedit['path']}"]) == 2
    assert "holds the results of another outputs folder" in capsys.readouterr().err


def test_a_folder_without_any_output_is_an_error_naming_what_was_expected(tmp_path, imgedit, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--outputs", str(empty), "--benchmark", "imgedit", f"path={imgedit['path']}", "judge.api_key_env="]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "none of the 10 outputs" in err and str(empty / "10.png") in err
    assert main(["--outputs", str(tmp_path / "nowhere"), "--benchmark", "imgedit", f"path={imgedit['path']}"]) == 2
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("problem, expected", [
    ("missing key", r"judge.api_key_env: environment variable CLI_UNSET_KEY is not set"),
    ("wrong key", r"the key in \$CLI_WRONG_KEY was rejected \(HTTP 401.*check judge.api_key_env"),
    ("unknown model", r"no model 'gpt-4o-typo' there \(HTTP 404.*check judge.model"),
    ("unreachable", r"cannot reach the endpoint .*check judge.base_url"),
])
def test_a_judge_that_cannot_work_is_one_line_and_exit_2(tmp_path, imgedit, monkeypatch, capsys, problem, expected):
    monkeypatch.setenv("CLI_JUDGE_KEY", SECRET)
    monkeypatch.setenv("CLI_WRONG_KEY", "sk-wrong-key-also-SECRET-0042")
    monkeypatch.delenv("CLI_UNSET_KEY", raising=False)
    folder = edits_folder(tmp_path)
    with ChatServer(responder, key=SECRET, models={"gpt-4o"}) as server:
        url = free_port_url() if problem == "unreachable" else server.base_url
        key_env = {"missing key": "CLI_UNSET_KEY", "wrong key": "CLI_WRONG_KEY"}.get(problem, "CLI_JUDGE_KEY")
        model = "gpt-4o-typo" if problem == "unknown model" else "gpt-4o"
        rc = main(["--outputs", str(folder), "--benchmark", "imgedit", f"path={imgedit['path']}", f"judge.base_url={url}",
                   f"judge.api_key_env={key_env}", f"judge.model={model}", "judge.backoff_s=0.01"])
        assert not server.judged  # nothing was judged: the preflight stopped it, once for all 8 workers
        assert server.preflights == (1 if problem in ("wrong key", "unknown model") else 0)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert re.search(expected, err), err
    assert SECRET not in err and "sk-wrong-key" not in err and "Traceback" not in err


def test_judge_overrides_compose_with_the_benchmarks_own_judge(tmp_path):
    imgedit = resolve_benchmark("imgedit", ["path=x", "judge.model=gpt-4.1"]).judge
    assert (imgedit.name, imgedit.model, imgedit.image_format) == ("openai_api", "gpt-4.1", "png")  # PNG kept
    gedit = resolve_benchmark("gedit", ["path=x", "judge.passes=3"]).judge
    assert (gedit.model, gedit.image_format, gedit.passes) == ("gpt-4.1", "jpeg", 3)
    # a judge file, then command-line keys on top of it
    qwen = resolve_benchmark("imgedit", ["path=x", "judge.concurrency=2"],
                             str(REPO / "configs/judges/qwen2.5-vl-72b-awq.yaml")).judge
    assert (qwen.model, qwen.base_url, qwen.api_key_env, qwen.images_first, qwen.concurrency) == \
           ("Qwen2.5-VL-72B-Instruct-AWQ", "http://localhost:8000/v1", "", True, 2)
    gpt4o = resolve_benchmark("gedit", ["path=x"], str(REPO / "configs/judges/gpt-4o.yaml")).judge
    assert (gpt4o.model, gpt4o.image_format, gpt4o.max_tokens) == ("gpt-4o", "png", 0)
    # another backend starts from its own defaults; null removes the judge
    local = resolve_benchmark("gedit", ["path=x", "judge.name=local_vlm", f"judge.model={tmp_path}"]).judge
    assert local.name == "local_vlm" and local.model == str(tmp_path) and local.seed == 42
    assert resolve_benchmark("dreambooth", ["path=x", "judge=null", "metrics=[dino]"]).judge is None
    assert compose_judge({"name": "a", "x": 1, "y": 2}, {"y": 3}, {"name": "a", "z": 4}) == {"name": "a", "x": 1, "y": 3, "z": 4}
    with pytest.raises(C.ConfigError, match="benchmark 'shapes_edit' has no judge"):
        resolve_benchmark("shapes_edit", ["judge.model=gpt-4.1"])
    with pytest.raises(C.ConfigError, match=r"key 'benchmark.judge.modle': unknown key; allowed keys here: .*model"):
        resolve_benchmark("imgedit", ["path=x", "judge.modle=gpt-4.1"])
    (tmp_path / "bad.yaml").write_text("model: gpt-4.1\n")
    with pytest.raises(C.ConfigError, match=r"bad.yaml: a judge config needs 'name'"):
        resolve_benchmark("imgedit", ["path=x"], str(tmp_path / "bad.yaml"))


@pytest.mark.parametrize("file", JUDGES, ids=[f.stem for f in JUDGES])
def test_shipped_judge_configs_load_and_say_how_to_serve_them(file):
    judge = resolve_benchmark("gedit", ["path=x"], str(file)).judge
    header = file.read_text().split("\nname:")[0]
    assert judge.temperature == 0.0 and judge.seed == 42 and "python -m harness.evaluate" in header
    if judge.base_url.startswith("http://localhost"):
        (serve,) = [line for line in header.splitlines() if "vllm serve" in line]
        assert f"--served-model-name {judge.model} " in serve and "--limit-mm-per-prompt" in serve
        assert judge.api_key_env == ""
    else:
        assert judge.api_key_env == "OPENAI_API_KEY" and judge.model in ("gpt-4.1", "gpt-4o")
    assert len(JUDGES) == 4


def test_dry_run_prints_the_resolved_benchmark_and_judge_and_calls_nothing(tmp_path, capsys):
    folder = tmp_path / "edits"
    assert main(["--outputs", str(folder), "--benchmark", "imgedit", "path=/data/Basic", "judge.model=gpt-4.1",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# benchmark imgedit, judge openai_api gpt-4.1\n")
    assert f"# results: {tmp_path / 'edits_eval' / 'result.json'}" in out
    shown = yaml.safe_load(out)
    assert shown["judge"]["model"] == "gpt-4.1" and shown["judge"]["image_format"] == "png" and shown["path"] == "/data/Basic"
    assert not folder.exists() and not (tmp_path / "edits_eval").exists()


# ---------------------------------------------------------------------------------------------
# --run and harness.train: the preflight comes before any generation or training


def toy_run(tmp_path: Path, benchmarks: list[dict]) -> Path:
    cfg = C.load_run_config(REPO / "configs/toy/np_edit.yaml", {"eval.benchmarks": benchmarks})
    rd = tmp_path / "runs/train" / C.config_hash(cfg)
    rd.mkdir(parents=True)
    (rd / "config.yaml").write_text(C.dump_yaml(cfg))
    return rd


def test_run_mode_preflights_before_generation_and_a_rerun_makes_no_call(tmp_path, imgedit, monkeypatch, capsys):
    import harness.edit

    editors = []
    monkeypatch.setattr(harness.edit, "load_editor", lambda path, device="auto": editors.append(FakeEditor()) or editors[-1])
    monkeypatch.setenv("CLI_JUDGE_KEY", SECRET)
    rd = toy_run(tmp_path, [{"name": "shapes_edit"}])
    with ChatServer(responder, key=SECRET, models={"gpt-4o"}) as server:
        common = ["--run", str(rd), "--benchmark", "imgedit", f"path={imgedit['path']}", f"prompts={imgedit['prompts']}",
                  f"judge.base_url={server.base_url}", "judge.parse_retries=0", "judge.max_retries=0"]
        assert main([*common, "judge.model=gpt-4.1", "--dry-run"]) == 0
        shown = capsys.readouterr().out
        assert shown.startswith("# benchmark imgedit, judge openai_api gpt-4.1\n") and f"# run: {rd}" in shown
        assert yaml.safe_load(shown)["judge"]["image_format"] == "png" and not server.requests and editors == []
        assert main([*common, "judge.api_key_env=CLI_UNSET_KEY"]) == 2  # no key: stopped before loading the editor
        assert editors == [] and not (rd / "eval").exists() and server.requests == []
        assert "CLI_UNSET_KEY is not set" in capsys.readouterr().err

        assert main([*common, "judge.api_key_env=CLI_JUDGE_KEY"]) == 0
        assert len(editors) == 1 and editors[0].calls > 0
        assert server.preflights == 2 and len(server.judged) == 10  # before generation, and before scoring
        n = len(server.requests)
        assert main([*common, "judge.api_key_env=CLI_JUDGE_KEY"]) == 0  # outputs and replies cached
        assert len(server.requests) == n and editors[-1].calls == 0
    (r,) = [r for r in json.loads((rd / "result.json").read_text())["results"] if r["benchmark"] == "imgedit"]
    assert r["meta"]["judge_calls"] == 0 and r["meta"]["judge_cache_hits"] == 10


def test_train_preflights_the_judges_before_the_run_folder_exists(tmp_path, imgedit, monkeypatch, capsys):
    from harness.train import main as train_main

    monkeypatch.setenv("CLI_JUDGE_KEY", SECRET)
    with ChatServer(responder, key="the-servers-own-key-0000") as server:
        judge = {"name": "openai_api", "model": "gpt-4o", "base_url": server.base_url, "api_key_env": "CLI_JUDGE_KEY"}
        bench = json.dumps([{"name": "shapes_edit"}, {"name": "imgedit", "path": imgedit["path"], "judge": judge}])
        runs = tmp_path / "runs"
        rc = train_main([str(REPO / "configs/toy/np_edit.yaml"), f"eval.benchmarks={bench}", "--runs-dir", str(runs)])
        err = capsys.readouterr().err
        assert rc == 2 and "was rejected (HTTP 401" in err and SECRET not in err
        assert server.preflights == 1 and not server.judged and not runs.exists()

        # a finished run is not redone, so its judge is not asked either
        cfg = C.load_run_config(REPO / "configs/toy/np_edit.yaml", [f"eval.benchmarks={bench}"])
        done = runs / "train" / C.config_hash(cfg)
        done.mkdir(parents=True)
        (done / "config.yaml").write_text(C.dump_yaml(cfg))
        (done / "result.json").write_text(json.dumps({"run_id": done.name, "results": []}))
        assert train_main([str(REPO / "configs/toy/np_edit.yaml"), f"eval.benchmarks={bench}", "--runs-dir", str(runs)]) == 0
        assert len(server.requests) == 1
