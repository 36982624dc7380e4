"""The SLURM path against a real single-node cluster (scripts/slurm_local.sh), not a mock."""
import io
import subprocess
import time

import pytest

from harness import sweep as S
from harness.launch import make_executor
from harness.runstore import RunDir
from tests.helpers import fit_sweep

pytestmark = pytest.mark.slurm


def starts(rd: RunDir) -> int:
    p = rd.path / "starts.log"
    return len(p.read_text().splitlines()) if p.exists() else 0


def final_w(rd: RunDir) -> list[float]:
    return rd.load_checkpoint(rd.latest_checkpoint()[1])["state"]["w"].tolist()


def test_sweep_runs_as_a_job_array_and_a_rerun_submits_nothing(slurm_cluster, tmp_path):
    path = fit_sweep(tmp_path, grid={"method.lr": [0.05, 0.1]}, launcher={"cluster": "auto", "mem_gb": 1})
    sw = S.load_sweep(path, tmp_path / "runs")
    planned = S.expand(sw)
    launched = S.launch(sw, planned, out=io.StringIO(), progress=False)
    assert len(launched) == 2
    jobs = {S._read_job(p.dir)["job_id"] for p in planned}
    assert {j.split("_")[1] for j in jobs} == {"0", "1"} and len({j.split("_")[0] for j in jobs}) == 1  # one array
    assert all(S._read_job(p.dir)["cluster"] == "slurm" for p in planned)
    assert [S.run_state(p.dir) for p in planned] == ["done", "done"]
    assert S.launch(sw, planned, out=io.StringIO(), progress=False) == []
    assert all(starts(p.dir) == 1 for p in planned)


def _wait_done(job, timeout: float = 300) -> None:
    """Wait for a job (requeued: it starts again once its old credential expires, 10 s on the
    local cluster) with a limit, so a job SLURM refuses to restart fails the test instead of hanging it."""
    deadline = time.time() + timeout
    while not job.done():
        if time.time() > deadline:
            state = subprocess.run(["squeue", "-h", "-j", job.job_id, "-o", "%T %r"], capture_output=True, text=True).stdout
            pytest.fail(f"job {job.job_id} not done after {timeout:.0f} s (squeue: {state.strip() or 'gone'})")
        time.sleep(0.5)


@pytest.mark.parametrize("timeout", [False, True], ids=["preempted", "timed-out"])
def test_interrupted_job_is_requeued_and_resumes_exactly(slurm_cluster, tmp_path, timeout):
    path = fit_sweep(tmp_path, grid={"method.lr": [0.1]},
                     overrides={"method.step_seconds": 0.2, "train.steps": 40, "train.ckpt_every": 10},
                     launcher={"cluster": "slurm", "mem_gb": 1})
    sw = S.load_sweep(path, tmp_path / "runs")
    [pr] = S.expand(sw)
    ex = make_executor(sw.root / ".submitit", sw.cfg.launcher, cluster="slurm")
    from harness.launch import RunJob
    S.prepare(pr)
    job = ex.submit(RunJob(), str(pr.dir.path))
    deadline = time.time() + 120
    while time.time() < deadline and not (pr.dir.latest_checkpoint() and pr.dir.latest_checkpoint()[0] >= 10):
        time.sleep(0.2)
    assert pr.dir.latest_checkpoint()[0] < 40
    job._interrupt(timeout=timeout)
    _wait_done(job)
    job.result()
    rd = pr.dir
    assert rd.is_done() and starts(rd) == 2
    steps = [r["step"] for r in rd.read_metrics()]
    assert steps == list(range(1, 41))  # no step lost, none logged twice

    clean = S.load_sweep(path, tmp_path / "clean")
    [cpr] = S.expand(clean)
    S.launch(clean, [cpr], cluster="debug", out=io.StringIO(), progress=False)
    assert final_w(rd) == final_w(cpr.dir)
    assert rd.read_result()["results"] == cpr.dir.read_result()["results"]
