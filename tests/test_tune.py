import io

import pytest
import yaml

from harness import tune as T
from tests.helpers import FIT_BASE, write_yaml


def tune_file(tmp_path, trials=4):
    write_yaml(tmp_path / "base.yaml", {**FIT_BASE, "train": {**FIT_BASE["train"], "steps": 15}})
    return write_yaml(tmp_path / "tune.yaml", {
        "name": "t", "base": "base.yaml", "trials": trials, "batch": 2, "seed": 0,
        "overrides": {"eval.benchmarks": [{"name": "fit_eval", "split": "val"}]},
        "params": {"method.lr": {"type": "float", "low": 0.001, "high": 0.5, "log": True}},
        "objective": {"benchmark": "fit_eval", "subset": "val", "metric": "err", "direction": "minimize"},
        "launcher": {"cluster": "debug"},
    })


def test_search_finds_a_better_lr_and_resumes_without_retraining(tmp_path):
    path = tune_file(tmp_path)
    tuner = T.Tuner(path, tmp_path / "runs", out=io.StringIO())
    study = tuner.run()[""]
    values = [t.value for t in study.trials]
    assert len(values) == 4 and all(v is not None for v in values)
    assert study.best_value == min(values)
    starts = {d.name: (d / "starts.log").read_text() for d in (tmp_path / "runs" / "t").iterdir() if d.is_dir() and (d / "starts.log").exists()}
    assert len(starts) == 4

    more = T.Tuner(path, tmp_path / "runs", out=io.StringIO()).run(trials=6)[""]  # continue the same study
    assert len(more.trials) == 6
    again = {d.name: (d / "starts.log").read_text() for d in (tmp_path / "runs" / "t").iterdir() if d.name in starts}
    assert again == starts  # earlier trials were not trained again



def test_trials_left_running_by_a_killed_search_are_finished_on_rerun(tmp_path):
    path = tune_file(tmp_path, trials=3)
    tuner = T.Tuner(path, tmp_path / "runs", out=io.StringIO())
    study = tuner.study(tuner.cfg.all_variants()[0])
    (_, p), = tuner.cfg.params.items()
    asked = study.ask()
    lr = T.suggest(asked, "method.lr", p)  # drawn, then the search was killed before its run was scored
    study.ask()  # asked, killed before its params were drawn
    done = T.Tuner(path, tmp_path / "runs", out=io.StringIO()).run()[""]
    states = {t.number: t.state.name for t in done.trials}
    assert states[asked.number] == "COMPLETE" and done.trials[asked.number].params == {"method.lr": lr}
    assert states[1] == "FAIL"
    assert sum(s == "COMPLETE" for s in states.values()) == 2  # 3 finished trials in all: 2 scored, 1 failed

def test_bad_search_space_is_reported(tmp_path):
    path = tune_file(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["params"]["method.lr"]["log"] = True
    raw["params"]["method.lr"]["low"] = 0.0
    write_yaml(path, raw)
    with pytest.raises(Exception, match="log-scaled parameters need low > 0"):
        T.Tuner(path, tmp_path / "runs")


def variants_file(tmp_path, split="val", trials=3):
    write_yaml(tmp_path / "base.yaml", {**FIT_BASE, "train": {**FIT_BASE["train"], "steps": 10}})
    return write_yaml(tmp_path / "tune.yaml", {
        "name": "tv", "base": "base.yaml", "trials": trials, "batch": 2, "seed": 0,
        "overrides": {"eval.benchmarks": [{"name": "fit_eval", "split": split}]},
        "params": {"method.lr": {"type": "float", "low": 0.001, "high": 0.5, "log": True},
                   "method.noise": {"type": "float", "low": 0.01, "high": 0.2}},
        "variants": [{"name": "slow", "set": {"method.name": "fit"}},
                     {"name": "fast", "set": {"method.name": "fit_fast"}, "params": ["method.noise"]}],
        "objective": {"benchmark": "fit_eval", "subset": "val", "metric": "err", "direction": "minimize"},
        "launcher": {"cluster": "debug"},
    })


def test_every_variant_gets_the_same_budget_over_its_own_knobs_on_the_validation_split(tmp_path):
    path = variants_file(tmp_path)
    studies = T.Tuner(path, tmp_path / "runs", out=io.StringIO()).run()
    assert sorted(studies) == ["fast", "slow"]
    assert [len(studies[v].trials) for v in ("slow", "fast")] == [3, 3]
    assert all(set(t.params) == {"method.lr", "method.noise"} for t in studies["slow"].trials)
    assert all(set(t.params) == {"method.noise"} for t in studies["fast"].trials)
    root = tmp_path / "runs" / "tv"
    runs = [d for d in root.iterdir() if (d / "result.json").exists()]
    assert len(runs) == 6
    # every trial was scored, and only ever on the validation split
    logs = [(d / "scored_splits.log").read_text().split() for d in runs]
    assert all(log == ["val"] for log in logs), logs
    methods = sorted(yaml.safe_load((d / "config.yaml").read_text())["method"]["name"] for d in runs)
    assert methods == ["fit"] * 3 + ["fit_fast"] * 3

    out = yaml.safe_load(T.emit(T.Tuner(path, tmp_path / "runs"), studies, str(path)))
    assert out["tuning"]["trials_per_variant"] == 3 and out["tuning"]["completed"] == {"slow": 3, "fast": 3}
    best = {r["name"]: r for r in out["runs"]}
    assert best["fast"]["method.name"] == "fit_fast" and set(best["fast"]) == {"name", "method.name", "method.noise"}
    assert best["slow"]["method.lr"] == pytest.approx(studies["slow"].best_params["method.lr"], rel=1e-3)


def test_a_search_that_would_score_the_test_split_is_refused_before_any_run(tmp_path):
    path = variants_file(tmp_path, split="test")
    tuner = T.Tuner(path, tmp_path / "runs")
    with pytest.raises(Exception, match="split 'test'.*validation split only"):
        tuner.check()
    assert T.main([str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert not (tmp_path / "runs" / "tv").exists() or not any((tmp_path / "runs" / "tv").iterdir())


def test_trials_that_draw_the_same_values_share_one_run(tmp_path):
    path = tune_file(tmp_path, trials=2)
    raw = yaml.safe_load(path.read_text())
    raw["params"]["method.lr"] = {"type": "categorical", "choices": [0.1]}  # every trial draws the same
    write_yaml(path, raw)
    study = T.Tuner(path, tmp_path / "runs", out=io.StringIO()).run()[""]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert study.trials[0].value == study.trials[1].value
    assert len([d for d in (tmp_path / "runs" / "t").iterdir() if (d / "starts.log").exists()]) == 1
