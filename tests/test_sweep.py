import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness import config as C
from harness import sweep as S
from harness.launch import LauncherConfig, make_executor
from harness.runstore import RunDir
from tests.helpers import fit_sweep, write_yaml

REPO = Path(__file__).resolve().parents[1]


def final_w(rd: RunDir) -> list[float]:
    ck = rd.load_checkpoint(rd.latest_checkpoint()[1])
    return ck["state"]["w"].tolist()


def starts(rd: RunDir) -> int:
    p = rd.path / "starts.log"
    return len(p.read_text().splitlines()) if p.exists() else 0


# ---------------------------------------------------------------------------------------------
# expansion


def test_grid_times_zip_times_runs(tmp_path):
    path = fit_sweep(tmp_path, grid={"method.lr": [0.05, 0.1]},
                     zip_=[{"seed": [0, 1, 2], "method.dim": [2, 3, 4]}])
    raw = yaml.safe_load(path.read_text())
    raw["runs"] = [{"train.steps": 5}, {"train.steps": 6}]
    write_yaml(path, raw)
    planned = S.expand(S.load_sweep(path, tmp_path / "runs"))
    assert len(planned) == 2 * 3 * 2
    combos = {(p.config.method.lr, p.config.seed, p.config.method.dim, p.config.train.steps) for p in planned}
    assert (0.1, 2, 4, 6) in combos and (0.05, 0, 2, 5) in combos
    assert all(p.config.seed + 2 == p.config.method.dim for p in planned)  # zipped axes move together
    assert len({p.run_id for p in planned}) == len(planned)


def test_duplicates_are_merged_and_ids_are_stable(tmp_path):
    # three runs written differently that resolve to one config: the base's lr and dim are 0.05 and 3
    path = fit_sweep(tmp_path, grid={})
    raw = yaml.safe_load(path.read_text())
    raw["runs"] = [{"method.lr": 0.05}, {"method.dim": 3}, {"method.name": "fit"}]
    write_yaml(path, raw)
    a = S.expand(S.load_sweep(path, tmp_path / "runs"))
    assert len(a) == 1
    code = ("from harness import sweep as S; import sys; "
            f"print(' '.join(p.run_id for p in S.expand(S.load_sweep({str(path)!r}))))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert other.stdout.split() == [p.run_id for p in a]


def test_sweep_errors_name_file_and_key(tmp_path):
    bad_zip = fit_sweep(tmp_path, zip_=[{"seed": [0, 1], "method.dim": [2]}])
    with pytest.raises(C.ConfigError, match=r"zip\[0\]: lists must have the same length"):
        S.load_sweep(bad_zip)
    bad_key = fit_sweep(tmp_path, name="k", grid={"method.lrr": [1.0]})
    with pytest.raises(C.ConfigError, match=r"k\.yaml: overrides method\.lrr=1\.0: key 'method\.lrr': unknown key"):
        S.expand(S.load_sweep(bad_key))
    raw = yaml.safe_load(bad_key.read_text())
    raw["launcher"]["clusterr"] = "slurm"
    write_yaml(bad_key, raw)
    with pytest.raises(C.ConfigError, match=r"key 'launcher\.clusterr': unknown key"):
        S.load_sweep(bad_key)


def test_runs_can_start_from_other_runs_of_the_sweep(tmp_path):
    path = fit_sweep(tmp_path, grid={})
    raw = yaml.safe_load(path.read_text())
    raw["runs"] = [{"name": "first"}, {"name": "second", "train.init_from": "@first", "method.lr": 0.01},
                   {"name": "third", "train.init_from": "@second"}]
    write_yaml(path, raw)
    sw = S.load_sweep(path, tmp_path / "runs")
    planned = S.expand(sw)
    first, second, third = planned
    assert second.config.train.init_from == "@" + first.run_id
    assert third.config.train.init_from == "@" + second.run_id
    S.launch(sw, planned, cluster="debug", out=io.StringIO(), progress=False)
    assert all(S.run_state(p.dir) == "done" for p in planned)
    from safetensors.torch import load_file
    exported = load_file(str(first.dir.model_dir / "w.safetensors"))["w"].tolist()
    assert json.loads((second.dir.path / "init_w.json").read_text()) == exported
    # the dependent's id follows the config of the run it starts from
    raw["runs"][0]["method.dim"] = 4
    write_yaml(path, raw)
    again = S.expand(S.load_sweep(path, tmp_path / "runs"))
    assert again[1].run_id != second.run_id
    raw["runs"][1]["train.init_from"] = "@nobody"
    write_yaml(path, raw)
    with pytest.raises(C.ConfigError, match="'@nobody' must name exactly one run"):
        S.expand(S.load_sweep(path, tmp_path / "runs"))


def test_dry_run_launches_nothing(tmp_path, capsys):
    path = fit_sweep(tmp_path)
    assert S.main([str(path), "--dry-run", "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "todo: 2" in out and "method.lr=0.05" in out
    assert not (tmp_path / "runs" / "s").exists()


# ---------------------------------------------------------------------------------------------
# launching


def test_local_and_debug_executors_agree_and_reruns_do_nothing(tmp_path):
    path = fit_sweep(tmp_path)
    results = {}
    for cluster in ("local", "debug"):
        sw = S.load_sweep(path, tmp_path / cluster)
        planned = S.expand(sw)
        launched = S.launch(sw, planned, cluster=cluster, out=io.StringIO(), progress=False)
        assert len(launched) == 2
        assert [S.run_state(p.dir) for p in planned] == ["done", "done"]
        results[cluster] = {p.run_id: p.dir.read_result()["results"] for p in planned}
        again = S.launch(sw, planned, cluster=cluster, out=io.StringIO(), progress=False)
        assert again == [] and all(starts(p.dir) == 1 for p in planned)
    assert results["local"] == results["debug"]
    # the uninterrupted loss went down: the fit moved w toward its target
    rd = next(iter(S.expand(S.load_sweep(path, tmp_path / "debug")))).dir
    losses = [r["loss"] for r in rd.read_metrics()]
    assert sum(losses[-5:]) < sum(losses[:5])


def test_local_runs_respect_array_parallelism_and_cpus_per_task(tmp_path):
    """Local processes have no scheduler: with array_parallelism 1 the runs go one after another,
    each with cpus_per_task torch threads."""
    path = fit_sweep(tmp_path, grid={"method.lr": [0.05, 0.1, 0.2]}, overrides={"method.step_seconds": 0.05},
                     launcher={"array_parallelism": 1, "cpus_per_task": 1})
    sw = S.load_sweep(path, tmp_path / "runs")
    planned = S.expand(sw)
    S.launch(sw, planned, cluster="local", out=io.StringIO(), progress=False)
    assert [S.run_state(p.dir) for p in planned] == ["done"] * 3
    spans = sorted((os.stat(p.dir.path / "starts.log").st_mtime, os.stat(p.dir.result_path).st_mtime) for p in planned)
    assert all(nxt[0] >= prev[1] for prev, nxt in zip(spans, spans[1:])), spans
    assert all((p.dir.path / "starts.log").read_text().split()[1] == "threads=1" for p in planned)


def test_failed_runs_keep_traceback_and_relaunch_only_with_retry(tmp_path, capsys):
    marker = tmp_path / "FAIL"
    marker.write_text("")
    path = fit_sweep(tmp_path, grid={"method.lr": [0.05]},
                     overrides={"method.fail_at_step": 7, "method.fail_if_file": str(marker)})
    sw = S.load_sweep(path, tmp_path / "runs")
    planned = S.expand(sw)
    S.launch(sw, planned, cluster="debug", out=io.StringIO(), progress=False)
    rd = planned[0].dir
    assert S.run_state(rd) == "failed"
    assert "RuntimeError: planned failure at step 7" in rd.read_error()
    assert S.main([str(path), "--dry-run", "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "failed" in out and "planned failure at step 7" in out and "Traceback" in out

    marker.unlink()
    assert S.launch(sw, planned, cluster="debug", out=io.StringIO(), progress=False) == []
    assert S.run_state(rd) == "failed" and starts(rd) == 1
    assert len(S.launch(sw, planned, cluster="debug", retry=True, out=io.StringIO(), progress=False)) == 1
    assert S.run_state(rd) == "done" and starts(rd) == 2
    # the retry resumed from the checkpoint before the failure (step 5), not from scratch
    assert [r["step"] for r in rd.read_metrics()] == list(range(1, 21))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    path = fit_sweep(tmp_path, grid={"method.nan_at_step": [12]})
    sw = S.load_sweep(path, tmp_path / "runs")
    planned = S.expand(sw)
    S.launch(sw, planned, cluster="debug", out=io.StringIO(), progress=False)
    rd = planned[0].dir
    assert S.run_state(rd) == "failed"
    err = rd.read_error()
    assert "step 12: loss is nan" in err and "last good checkpoint is kept" in err
    assert rd.latest_checkpoint()[0] == 10


def test_killing_a_sweep_loses_nothing(tmp_path):
    """Kill the sweep and its local jobs mid-way; the rerun finishes only what was missing, exactly."""
    path = fit_sweep(tmp_path, grid={"method.lr": [0.05, 0.1, 0.2]},
                     overrides={"method.step_seconds": 0.15, "train.steps": 30},
                     launcher={"array_parallelism": 1})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "harness.sweep", str(path), "--cluster", "local", "--runs-dir", str(tmp_path / "runs")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    planned = S.expand(S.load_sweep(path, tmp_path / "runs"))
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until some run has checkpointed but not all are done
        cks = [p.dir.latest_checkpoint() for p in planned]
        if any(c and c[0] >= 10 for c in cks):
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    before = {p.run_id: S.run_state(p.dir) for p in planned}
    started = {p.run_id: starts(p.dir) for p in planned}
    cut_short = [k for k, v in before.items() if v == "todo" and started[k]]
    assert cut_short, (before, started)  # a run was killed between checkpoints

    subprocess.run(cmd, cwd=tmp_path, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert all(S.run_state(p.dir) == "done" for p in planned)
    for p in planned:  # done runs are not started again; the others start once more
        assert starts(p.dir) == started[p.run_id] + (before[p.run_id] != "done")
        assert [r["step"] for r in p.dir.read_metrics()] == list(range(1, 31))

    # exact: the same runs never interrupted end with the same weights
    clean = S.load_sweep(path, tmp_path / "clean")
    clean_planned = S.expand(clean)
    S.launch(clean, clean_planned, cluster="debug", out=io.StringIO(), progress=False)
    for a, b in zip(planned, clean_planned):
        assert final_w(a.dir) == final_w(b.dir)


def _probe():
    import torch
    import torch.distributed as dist

    from harness.launch import setup_distributed

    setup_distributed()
    x = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(x)
    out = (dist.get_rank(), dist.get_world_size(), float(x))
    dist.destroy_process_group()
    return out


def test_multi_task_jobs_initialise_torch_distributed(tmp_path):
    ex = make_executor(tmp_path / "ex", LauncherConfig(tasks_per_node=2, cpus_per_task=1, timeout_min=5), cluster="local")
    job = ex.submit(_probe)
    results = job.results()
    assert sorted(results) == [(0, 2, 3.0), (1, 2, 3.0)]
