"""Re-scoring a finished run under another evaluation setting (python -m harness.evaluate --run RUN
eval.*=...): a new eval folder, the old one and its result kept, result.json holding both."""
import json
import shutil

import pytest
import torch

from harness import config as C
from harness.edit import load_editor
from harness.evaluate import main
from harness.registry import BENCHMARKS
from harness.train import prepare_run_dir, run
from reports.collect import collect
from tests import tiny_world

BENCH = {"name": "shapes_edit", "n_per_type": 1, "edit_types": ["color", "remove"], "lpips": False}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny SFT run trained 2 steps and scored with its own sampler (Euler, 2 steps, guidance 4.5)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    paths = tiny_world.shared(tmp_path_factory)
    data = tiny_world.run_config(paths, {"name": "sft", "warmup_steps": 0}, train={"steps": 2, "device": "cpu"},
                                 eval={"benchmarks": [BENCH], "steps": 2})
    data["model"]["critic"] = None
    cfg = C.load_run_config(None, data=data)
    rd = prepare_run_dir(cfg, tmp_path_factory.mktemp("rescore") / "runs", "sweep")
    run(rd.path, progress=False)
    yield rd
    torch.set_num_threads(n)


def pngs(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_rescoring_writes_a_new_folder_and_keeps_the_old(finished, capsys):
    rd = finished
    [old] = rd.read_result()["results"]
    assert old["meta"]["sampling"] == {"sampler": "euler", "steps": 2, "guidance": 4.5}
    assert old["meta"]["eval_seed"] == 0
    old_dir = rd.eval_dir / old["meta"]["eval_dir"]
    old_pngs = pngs(old_dir)
    assert len(old_pngs) == 2

    args = ["--run", str(rd.path), "--benchmark", "shapes_edit", "--device", "cpu",
            "eval.sampler=few_step", "eval.steps=3", "eval.guidance=1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    results = rd.read_result()["results"]
    assert len(results) == 2 and results[0] == old  # the old result is kept as it was
    new = results[1]
    assert new["meta"]["sampling"] == {"sampler": "few_step", "steps": 3, "guidance": 1.0}
    assert new["meta"]["eval_seed"] == 0 and new["meta"]["benchmark_config"] == old["meta"]["benchmark_config"]
    new_dir = rd.eval_dir / new["meta"]["eval_dir"]
    assert new_dir != old_dir and sorted(p.name for p in rd.eval_dir.iterdir()) == sorted([old_dir.name, new_dir.name])
    assert pngs(old_dir) == old_pngs  # the old outputs are untouched
    assert "few_step, 3 steps, guidance 1, eval seed 0" in printed and str(new_dir) in printed

    # the new numbers are those of the exported editor sampled that way, scored independently
    editor = load_editor(rd.path, device="cpu")
    editor.sampling = type(editor.sampling)("few_step", 3, 1.0)
    bench = BENCHMARKS.get("shapes_edit").build(C.build_section(BENCHMARKS, BENCH, "test", "benchmark"))
    bench.generate(editor, new_dir.parent / "independent", seed=0, progress=False)
    assert pngs(new_dir / "model") == pngs(new_dir.parent / "independent" / "model")
    [ref] = bench.score(new_dir.parent / "independent")
    assert new["metrics"] == ref.metrics
    assert pngs(new_dir) != pngs(old_dir)  # another sampler: other images
    shutil.rmtree(new_dir.parent / "independent")

    # the same setting again replaces its own result (outputs reused), another eval seed adds a third
    stamp = {p: p.stat().st_mtime_ns for p in new_dir.rglob("*.png")}
    assert main(args) == 0
    results = rd.read_result()["results"]
    assert len(results) == 2 and results[1]["metrics"] == new["metrics"]
    assert {p: p.stat().st_mtime_ns for p in new_dir.rglob("*.png")} == stamp
    assert main([*args, "eval.seed=5"]) == 0
    results = rd.read_result()["results"]
    assert len(results) == 3 and results[2]["meta"]["eval_seed"] == 5
    assert len(list(rd.eval_dir.iterdir())) == 3

    # the report's table holds one row per result, its setting in the eval.* columns (from the results,
    # not the config: config.yaml still says eval.sampler 'method')
    df = collect(rd.path.parent)
    o = df[(df.metric == "O") & (df.task == "all")]
    got = sorted(zip(o["eval.sampler"], o["eval.steps"], o["eval.guidance"], o["eval.seed"]))
    assert got == [("euler", 2, 4.5, 0), ("few_step", 3, 1.0, 0), ("few_step", 3, 1.0, 5)]


def test_rescoring_errors_name_the_key(finished, capsys):
    rd = finished
    before = json.loads(rd.result_path.read_text())
    assert main(["--run", str(rd.path), "--benchmark", "shapes_edit", "eval.sampler=ddim"]) == 2
    assert "key 'eval.sampler': 'ddim' is not allowed; allowed: 'method', 'few_step', 'euler'" in capsys.readouterr().err
    assert main(["--run", str(rd.path), "--benchmark", "shapes_edit", "eval.benchmarks=[]"]) == 2
    assert "'eval.benchmarks': not an evaluation option; allowed: eval.sampler" in capsys.readouterr().err
    assert main(["--run", str(rd.path), "--benchmark", "shapes_edit", "eval.steps=-1"]) == 2
    assert "key 'eval.steps': got -1; allowed: an integer >= 0" in capsys.readouterr().err
    assert json.loads(rd.result_path.read_text()) == before


def test_a_sweeps_rescore_scores_each_setting_once(finished, tmp_path):
    """rescore_run (what a sweep's `rescore:` does after training): the run's own setting and a setting
    already scored are skipped; a new one gives the numbers harness.evaluate gives, once."""
    from harness.evaluate import rescore_run
    from harness.runstore import RunDir

    rd = RunDir(shutil.copytree(finished.path, tmp_path / finished.id))
    before = rd.read_result()["results"]
    assert rescore_run(rd, {"sampler": "euler", "steps": 2, "guidance": 4.5}, device="cpu") == []  # its own
    assert rd.read_result()["results"] == before

    setting = {"sampler": "few_step", "steps": 2, "guidance": 1.0}
    [new] = rescore_run(rd, setting, device="cpu")
    assert new.meta["sampling"] == setting
    assert len(rd.read_result()["results"]) == len(before) + 1
    stamp = {p: p.stat().st_mtime_ns for p in rd.eval_dir.rglob("*")}
    assert rescore_run(rd, setting, device="cpu") == []  # scored already: nothing loaded, nothing written
    assert {p: p.stat().st_mtime_ns for p in rd.eval_dir.rglob("*")} == stamp

    other = RunDir(shutil.copytree(finished.path, tmp_path / "by-hand"))
    assert main(["--run", str(other.path), "--benchmark", "shapes_edit", "--device", "cpu",
                 "eval.sampler=few_step", "eval.steps=2", "eval.guidance=1"]) == 0
    by_hand = [r for r in other.read_result()["results"] if r["meta"]["sampling"] == setting]
    assert [r["metrics"] for r in by_hand] == [new.metrics]


@pytest.mark.parametrize("entry, expected", [
    ({"eval.sampler": "heun"}, r"rescore\[0\]: key 'eval.sampler': 'heun' is not allowed"),
    ({"sampler": "euler"}, "not evaluation options"),
    ({"eval.steps": "many"}, r"rescore\[0\]: key 'eval.steps'"),
    ([], "expected a mapping"),
])
def test_a_bad_rescore_entry_is_refused_naming_it(entry, expected):
    from harness.sweep import rescore_setting

    with pytest.raises((C.ConfigError, ValueError), match=expected):
        rescore_setting(entry, "rescore[0]")


def test_a_sweeps_rescore_goes_on_past_a_run_that_cannot_be_scored(finished, tmp_path):
    """harness.sweep.rescore scores every done run under each setting, counts a run whose editor is
    gone as failed (naming it) without stopping the others, and leaves runs not done alone."""
    import io

    from harness.runstore import RunDir
    from harness.sweep import PlannedRun, Sweep, SweepConfig, rescore

    def copy(name):
        return RunDir(shutil.copytree(finished.path, tmp_path / name))

    good, broken, undone = copy("good"), copy("broken"), copy("undone")
    (broken.model_dir / "editor.json").unlink()
    undone.result_path.unlink()  # a run is done when its result.json exists
    undone.set_status("failed")
    before = {rd.path.name: sorted(p.relative_to(rd.path) for p in rd.path.rglob("*")) for rd in (broken, undone)}
    sweep = Sweep(tmp_path / "sweep.yaml", SweepConfig(name="s", rescore=[
        {"eval.sampler": "few_step", "eval.steps": 2, "eval.guidance": 1.0}]), tmp_path)
    planned = [PlannedRun({}, None, rd.path.name, rd) for rd in (broken, good, undone)]
    out = io.StringIO()
    assert rescore(sweep, planned, out=out) == 1
    log = out.getvalue()
    assert "rescore broken" in log and "error" in log
    assert "rescore good shapes_edit/" in log
    assert "undone" not in log
    assert [r["meta"]["sampling"] for r in good.read_result()["results"]][-1] == {
        "sampler": "few_step", "steps": 2, "guidance": 1.0}
    assert {rd.path.name: sorted(p.relative_to(rd.path) for p in rd.path.rglob("*")) for rd in (broken, undone)} == before
