import io

import pytest
import yaml

from harness import tune as T
from tests.helpers import FIT_BASE, write_yaml


def tune_file(tmp_path, trials=4):
    write_yaml(tmp_path / "base.yaml", {**FIT_BASE, "train": {**FIT_BASE["train"], "steps": 15}})
    return write_yaml(tmp_path / "tune.yaml", {
        "name": "t", "base": "base.yaml", "trials": trials, "batch": 2, "seed": 0,
        "params": {"method.lr": {"type": "float", "low": 0.001, "high": 0.5, "log": True}},
        "objective": {"benchmark": "fit_eval", "metric": "err", "direction": "minimize"},
        "launcher": {"cluster": "debug"},
    })


def test_search_finds_a_better_lr_and_resumes_without_retraining(tmp_path):
    path = tune_file(tmp_path)
    tuner = T.Tuner(path, tmp_path / "runs", out=io.StringIO())
    study = tuner.run()
    values = [t.value for t in study.trials]
    assert len(values) == 4 and all(v is not None for v in values)
    assert study.best_value == min(values)
    starts = {d.name: (d / "starts.log").read_text() for d in (tmp_path / "runs" / "t").iterdir() if d.is_dir() and (d / "starts.log").exists()}
    assert len(starts) == 4

    more = T.Tuner(path, tmp_path / "runs", out=io.StringIO()).run(trials=6)  # continue the same study
    assert len(more.trials) == 6
    again = {d.name: (d / "starts.log").read_text() for d in (tmp_path / "runs" / "t").iterdir() if d.name in starts}
    assert again == starts  # earlier trials were not trained again


def test_bad_search_space_is_reported(tmp_path):
    path = tune_file(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["params"]["method.lr"]["log"] = True
    raw["params"]["method.lr"]["low"] = 0.0
    write_yaml(path, raw)
    with pytest.raises(Exception, match="log-scaled parameters need low > 0"):
        T.Tuner(path, tmp_path / "runs")
