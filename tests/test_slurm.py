"""The SLURM path against a real single-node cluster (scripts/slurm_local.sh), not a mock.

Every job a test submits is cancelled when the test ends (a failed test leaves nothing queued), and
every wait is bounded: a job that never starts fails the test with its queue state and what else
holds the cluster, rather than hanging it or failing later with an unrelated error."""
import io
import subprocess
import time

import pytest

from harness import sweep as S
from harness.launch import RunJob, make_executor
from harness.runstore import RunDir
from tests.helpers import fit_sweep

pytestmark = pytest.mark.slurm


def starts(rd: RunDir) -> int:
    p = rd.path / "starts.log"
    return len(p.read_text().splitlines()) if p.exists() else 0


def final_w(rd: RunDir) -> list[float]:
    return rd.load_checkpoint(rd.latest_checkpoint()[1])["state"]["w"].tolist()


@pytest.fixture
def slurm_jobs(slurm_cluster):
    """Job ids a test submits; whatever the outcome, they are cancelled when it ends."""
    ids: list[str] = []
    yield ids
    roots = sorted({str(j).split("_")[0] for j in ids})
    if roots:
        subprocess.run(["scancel", *roots], capture_output=True, timeout=30)


def queue_state(job_ids: list[str]) -> str:
    """What SLURM says about these jobs (state and reason), and what else is in its queue."""
    roots = sorted({str(j).split("_")[0] for j in job_ids})
    mine = subprocess.run(["squeue", "-h", "-j", ",".join(roots), "-o", "%i %T %r"],
                          capture_output=True, text=True, timeout=30).stdout.strip() if roots else ""
    others = subprocess.run(["squeue", "-h", "-o", "%i %u %j %T %r"], capture_output=True, text=True,
                            timeout=30).stdout.strip()
    return (f"squeue for {', '.join(roots) or '(no job)'}: {mine or 'not in the queue'}; "
            f"whole queue: {others or 'empty'}")


def wait_until(condition, job_ids: list[str], what: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"{what} not within {timeout:.0f} s ({queue_state(job_ids)})")
        time.sleep(0.5)


def test_sweep_runs_as_a_job_array_and_a_rerun_submits_nothing(slurm_jobs, tmp_path):
    path = fit_sweep(tmp_path, grid={"method.lr": [0.05, 0.1]}, launcher={"cluster": "auto", "mem_gb": 1})
    sw = S.load_sweep(path, tmp_path / "runs")
    planned = S.expand(sw)
    launched = S.launch(sw, planned, out=io.StringIO(), progress=False, wait=False)
    jobs = [S._read_job(p.dir)["job_id"] for p in planned]
    slurm_jobs.extend(jobs)
    assert len(launched) == 2
    assert {j.split("_")[1] for j in jobs} == {"0", "1"} and len({j.split("_")[0] for j in jobs}) == 1  # one array
    assert all(S._read_job(p.dir)["cluster"] == "slurm" for p in planned)
    wait_until(lambda: all(S.run_state(p.dir) in ("done", "failed", "todo") for p in planned), jobs,
               "both runs of the array finished", 300)
    assert [S.run_state(p.dir) for p in planned] == ["done", "done"]
    assert S.launch(sw, planned, out=io.StringIO(), progress=False) == []
    assert all(starts(p.dir) == 1 for p in planned)


@pytest.mark.parametrize("timeout", [False, True], ids=["preempted", "timed-out"])
def test_interrupted_job_is_requeued_and_resumes_exactly(slurm_jobs, tmp_path, timeout):
    path = fit_sweep(tmp_path, grid={"method.lr": [0.1]},
                     overrides={"method.step_seconds": 0.2, "train.steps": 40, "train.ckpt_every": 10},
                     launcher={"cluster": "slurm", "mem_gb": 1})
    sw = S.load_sweep(path, tmp_path / "runs")
    [pr] = S.expand(sw)
    ex = make_executor(sw.root / ".submitit", sw.cfg.launcher, cluster="slurm")
    S.prepare(pr)
    job = ex.submit(RunJob(), str(pr.dir.path))
    slurm_jobs.append(job.job_id)
    wait_until(lambda: (pr.dir.latest_checkpoint() or (0,))[0] >= 10, [job.job_id],
               "the job's first checkpoint (step 10)", 180)
    assert pr.dir.latest_checkpoint()[0] < 40
    job._interrupt(timeout=timeout)
    # requeued: it starts again once its old credential expires (10 s on the local cluster)
    wait_until(job.done, [job.job_id], "the requeued job finished", 300)
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
