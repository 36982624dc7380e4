"""Sweeps with `seeds:`: every run once per training seed, each its own resumable run, and references
between runs of the sweep resolved per seed."""
import io
import json

import pytest
import yaml
from safetensors.torch import load_file

from harness import config as C
from harness import sweep as S
from tests.helpers import fit_sweep, write_yaml


def final_w(rd) -> list[float]:
    return load_file(str(rd.model_dir / "w.safetensors"))["w"].tolist()


def seeded(tmp_path, seeds, **kw):
    path = fit_sweep(tmp_path, **kw)
    raw = yaml.safe_load(path.read_text())
    raw["seeds"] = seeds
    return write_yaml(path, raw), raw


def test_seeds_expand_every_run_into_distinct_resumable_runs(tmp_path, capsys):
    marker = tmp_path / "FAIL"
    marker.write_text("")
    path, _ = seeded(tmp_path, [0, 1, 2], grid={"method.lr": [0.05, 0.1]},
                     overrides={"method.fail_at_step": 7, "method.fail_if_file": str(marker)})
    sw = S.load_sweep(path, tmp_path / "runs")
    planned = S.expand(sw)
    assert [(p.config.method.lr, p.config.seed) for p in planned] == [
        (0.05, 0), (0.05, 1), (0.05, 2), (0.1, 0), (0.1, 1), (0.1, 2)]
    assert len({p.run_id for p in planned}) == 6
    assert [p.overrides for p in planned][:2] == [{"seed": 0, "method.lr": 0.05}, {"seed": 1, "method.lr": 0.05}]
    # the seed is part of what --dry-run shows for each run
    assert S.main([str(path), "--dry-run", "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "6 runs" in out and "todo: 6" in out
    for p in planned:
        line = next(x for x in out.splitlines() if x.startswith(p.run_id))
        assert f"seed={p.config.seed} method.lr={p.config.method.lr}" in line

    # every seed's run fails at step 7 (after its step-5 checkpoint); the retry resumes each one
    S.launch(sw, planned, cluster="debug", out=io.StringIO(), progress=False)
    assert [S.run_state(p.dir) for p in planned] == ["failed"] * 6
    marker.unlink()
    S.launch(sw, planned, cluster="debug", retry=True, out=io.StringIO(), progress=False)
    assert [S.run_state(p.dir) for p in planned] == ["done"] * 6
    for p in planned:
        assert [r["step"] for r in p.dir.read_metrics()] == list(range(1, 21))
        assert len((p.dir.path / "starts.log").read_text().splitlines()) == 2
    # the seeds give different runs; the resumed runs end where uninterrupted ones do
    assert len({tuple(final_w(p.dir)) for p in planned}) == 6
    clean = S.load_sweep(path, tmp_path / "clean")
    clean_planned = S.expand(clean)
    S.launch(clean, clean_planned, cluster="debug", out=io.StringIO(), progress=False)
    assert [p.run_id for p in clean_planned] == [p.run_id for p in planned]
    for a, b in zip(planned, clean_planned):
        assert final_w(a.dir) == final_w(b.dir)
    # a rerun does nothing
    assert S.launch(sw, S.expand(S.load_sweep(path, tmp_path / "runs")), cluster="debug", out=io.StringIO(),
                    progress=False) == []


def test_references_resolve_to_the_run_of_the_same_seed(tmp_path):
    path, raw = seeded(tmp_path, [0, 1], grid={})
    raw["runs"] = [{"name": "sft"}, {"name": "sft_ours", "train.init_from": "@sft", "method.lr": 0.01}]
    write_yaml(path, raw)
    sw = S.load_sweep(path, tmp_path / "runs")
    planned = S.expand(sw)
    by = {(p.config.name, p.config.seed): p for p in planned}
    assert sorted(by) == [("sft", 0), ("sft", 1), ("sft_ours", 0), ("sft_ours", 1)]
    for seed in (0, 1):
        assert by["sft_ours", seed].config.train.init_from == "@" + by["sft", seed].run_id
    assert by["sft", 0].run_id != by["sft", 1].run_id
    S.launch(sw, planned, cluster="debug", out=io.StringIO(), progress=False)
    assert all(S.run_state(p.dir) == "done" for p in planned)
    for seed in (0, 1):  # each sft_ours run really started from its own seed's sft weights
        started = json.loads((by["sft_ours", seed].dir.path / "init_w.json").read_text())
        assert started == final_w(by["sft", seed].dir)
    assert final_w(by["sft", 0].dir) != final_w(by["sft", 1].dir)


def test_seeds_errors_name_the_file_and_key(tmp_path):
    path, raw = seeded(tmp_path, [0, 1, 0], grid={"method.lr": [0.1]})
    with pytest.raises(C.ConfigError, match=r"s\.yaml: key 'seeds': 0 listed twice"):
        S.expand(S.load_sweep(path))
    raw["seeds"] = [0, 1]
    raw["zip"] = [{"seed": [3, 4], "method.dim": [2, 3]}]
    write_yaml(path, raw)
    with pytest.raises(C.ConfigError, match=r"s\.yaml: key 'seeds' expands every run per seed, but the run "
                                            r"method\.lr=0\.1 seed=3 .*sets 'seed'"):
        S.expand(S.load_sweep(path))
    del raw["zip"]
    raw["overrides"] = {"seed": 5}
    write_yaml(path, raw)
    with pytest.raises(C.ConfigError, match=r"but overrides sets 'seed' too"):
        S.expand(S.load_sweep(path))
    del raw["overrides"]
    write_yaml(path, raw)
    with pytest.raises(C.ConfigError, match=r"but the command line sets 'seed' too"):
        S.expand(S.load_sweep(path, cli_overrides=["seed=3"]))
    raw["seeds"] = ["a"]
    write_yaml(path, raw)
    with pytest.raises(C.ConfigError, match=r"'seeds\[0\]'"):
        S.load_sweep(path)
