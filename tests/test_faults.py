"""Faults a researcher meets, provoked for real: kill -9 in each phase of NP-Edit's training, Ctrl-C
and SIGTERM, two processes on one run, a torn checkpoint, a killed sweep; and every bad input the
harness refuses with one line, before it makes a run folder."""
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from harness import config as C
from harness import sweep as S
from harness.runstore import RunDir, RunLock, RunLocked, atomic_write_text
from tests.helpers import FIT_BASE, fit_sweep, write_yaml

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
# seconds: a bound on each wait, far above what it takes on an idle 2-core machine (raise it on a
# machine shared with heavier work: each process here only needs seconds of CPU)
LIMIT = float(os.environ.get("NPEDIT_TEST_WAIT_S", 1200))

# NP-Edit on the built-in world, small enough for seconds: 4 identity-warmup steps, 4 single-step
# ones, 4 unrolled ones, a checkpoint after every step, no benchmark at the end
TOY = [str(REPO / "configs" / "toy" / "np_edit.yaml"), "train.steps=12", "method.warmup_steps=4",
       "method.single_step_steps=4", "method.n_aux=1", "data.batch_size=2", "model.critic.size=small",
       "eval.benchmarks=[]", "train.ckpt_every=1", "train.log_every=1", "train.keep_checkpoints=0"]


@pytest.fixture
def procs():
    """Processes a test starts (each in its own session): killed with their children when it ends."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        p.wait()


def start(procs, args: list[str], cwd: Path) -> subprocess.Popen:
    """A process whose output goes to files (a pipe nobody reads while it runs could fill and stall it)."""
    n = len(procs)
    out, err = cwd / f"proc{n}.out", cwd / f"proc{n}.err"
    with open(out, "w") as fo, open(err, "w") as fe:
        p = subprocess.Popen([sys.executable, *args], cwd=cwd, env=ENV, start_new_session=True, stdout=fo, stderr=fe)
    p.out_path, p.err_path = out, err
    procs.append(p)
    return p


def finish(p: subprocess.Popen, timeout: float | None = None) -> tuple[str, str]:
    """Wait for `p` (LIMIT seconds at most) and return its stdout and stderr."""
    p.wait(timeout=timeout or LIMIT)
    return p.out_path.read_text(), p.err_path.read_text()


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = LIMIT,
             poll: float = 0.01) -> None:
    """Until `condition()`; fails when `proc` exits first (with its output) or after `timeout`."""
    deadline = time.time() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            out, err = finish(proc)
            pytest.fail(f"{what}: the process ended first (exit {proc.returncode}): {out[-2000:]} {err[-4000:]}")
        assert time.time() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(poll)


def latest_step(rd: RunDir) -> int:
    ck = rd.latest_checkpoint()
    return ck[0] if ck else 0


def tensors(state) -> dict[str, torch.Tensor]:
    """Every tensor in a (nested) state dict, by its path."""
    out = {}

    def walk(x, key):
        if isinstance(x, torch.Tensor):
            out[key] = x
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{key}/{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{key}/{i}")

    walk(state, "")
    return out


def assert_same_state(a: RunDir, b: RunDir) -> None:
    sa = tensors(a.load_checkpoint(a.latest_checkpoint()[1])["state"])
    sb = tensors(b.load_checkpoint(b.latest_checkpoint()[1])["state"])
    assert sa.keys() == sb.keys() and sa
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different[:5]


def one_line_error(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


# ---------------------------------------------------------------------------------------------
# kill -9, SIGINT, SIGTERM


def test_kill_9_in_each_phase_of_np_edit_resumes_to_identical_weights(procs, tmp_path):
    """Killed in the identity warmup, then in the single-step phase, then in the unrolled phase,
    each time resumed by the same command: the final weights, optimizer and RNG states equal those of
    the run never interrupted, and every step is logged once."""
    # the reference, never interrupted, in a process of its own like the others (same torch threads)
    reference = start(procs, ["-m", "harness.train", *TOY, "--runs-dir", str(tmp_path / "ref")], tmp_path)
    runs = tmp_path / "runs"
    cmd = ["-m", "harness.train", *TOY, "--runs-dir", str(runs)]
    run_id = C.config_hash(C.load_run_config(TOY[0], TOY[1:]))
    rd = RunDir(runs / "train" / run_id)
    stderr = []
    # (kill once this checkpoint exists, the phase's steps): warmup 0-3, single-step 4-7, unrolled 8-11
    for kill_after, phase in ((1, range(1, 4)), (5, range(5, 8)), (9, range(9, 12))):
        p = start(procs, cmd, tmp_path)
        wait_for(lambda: latest_step(rd) >= kill_after, f"checkpoint {kill_after}", p)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        stderr.append(p.err_path.read_text())
        assert latest_step(rd) in phase, (latest_step(rd), phase)  # killed inside the phase
        assert S.run_state(rd) == "todo" and not rd.is_done()
    p = start(procs, cmd, tmp_path)
    _, err = finish(p)
    assert p.returncode == 0, err
    _, ref_err = finish(reference)
    assert reference.returncode == 0, ref_err
    ref = RunDir(tmp_path / "ref" / "train" / run_id)
    assert "taking over the run lock" in err and "that process is gone" in err  # kill -9 left it behind
    assert rd.is_done() and not (rd.path / "lock").exists()
    assert [r["step"] for r in rd.read_metrics()] == list(range(1, 13))
    assert_same_state(rd, ref)
    from safetensors.torch import load_file

    for f in sorted(ref.model_dir.rglob("*.safetensors")):
        a, b = load_file(str(f)), load_file(str(rd.model_dir / f.relative_to(ref.model_dir)))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def fit_config(tmp_path: Path, **train) -> Path:
    base = json.loads(json.dumps(FIT_BASE))
    base["train"].update({"steps": 30, "ckpt_every": 10, **train})
    base["method"]["step_seconds"] = 0.1
    return write_yaml(tmp_path / "fit.yaml", base)


def test_ctrl_c_marks_the_run_interrupted_with_a_checkpoint_and_a_plain_rerun_resumes(procs, tmp_path):
    from harness.train import main

    cfg = fit_config(tmp_path)
    assert main([str(cfg), "--runs-dir", str(tmp_path / "clean")]) == 0
    [clean] = [RunDir(p) for p in (tmp_path / "clean" / "train").iterdir()]
    rd = RunDir(tmp_path / "runs" / "train" / clean.id)
    cmd = ["-m", "harness.train", str(cfg), "--runs-dir", str(tmp_path / "runs")]
    p = start(procs, cmd, tmp_path)
    wait_for(lambda: len(rd.read_metrics()) >= 12, "step 12", p)  # between two periodic checkpoints
    os.kill(p.pid, signal.SIGINT)
    _, err = finish(p)
    assert p.returncode == 130, err
    st = rd.read_status()
    assert st["state"] == "interrupted" and st["signal"] == "SIGINT"
    assert 12 <= st["step"] < 20 and latest_step(rd) == st["step"]  # saved at the interrupt, not step 10
    assert f"checkpoint at step {st['step']} kept; run the same command again to resume" in err
    assert "Traceback" not in err and not rd.error_path.exists()
    assert not (rd.path / "lock").exists()

    p = start(procs, cmd, tmp_path)
    _, err = finish(p)
    assert p.returncode == 0, err
    assert [r["step"] for r in rd.read_metrics()] == list(range(1, 31))
    assert (rd.path / "starts.log").read_text().count("\n") == 2
    assert_same_state(rd, clean)


def test_a_second_process_on_a_run_exits_at_once_naming_the_holder(procs, tmp_path):
    cfg = fit_config(tmp_path, steps=20)
    cmd = ["-m", "harness.train", str(cfg), "--runs-dir", str(tmp_path / "runs")]
    holder = start(procs, cmd, tmp_path)
    wait_for(lambda: any(p.is_dir() and RunDir(p).read_metrics() for p in (tmp_path / "runs" / "train").glob("*")),
             "the first process training", holder)
    os.kill(holder.pid, signal.SIGSTOP)  # it holds the run while the second one starts, however long that takes
    try:
        second = start(procs, cmd, tmp_path)
        _, err = finish(second)
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    assert second.returncode == 2
    line = one_line_error(err.split("\n", 1)[1])  # after the 'run <id>: <folder>' line
    assert "another process is training this run" in line and f"host {socket.gethostname()}, PID {holder.pid}" in line
    _, err = finish(holder)
    assert holder.returncode == 0, err
    [rd] = [RunDir(p) for p in (tmp_path / "runs" / "train").iterdir()]
    assert (rd.path / "starts.log").read_text().count("\n") == 1
    assert [r["step"] for r in rd.read_metrics()] == list(range(1, 21))


def test_two_concurrent_starts_leave_one_training(procs, tmp_path):
    cfg = fit_config(tmp_path, steps=20)
    cmd = ["-m", "harness.train", str(cfg), "--runs-dir", str(tmp_path / "runs")]
    a, b = start(procs, cmd, tmp_path), start(procs, cmd, tmp_path)
    outs = {p.pid: finish(p) for p in (a, b)}
    codes = {p.pid: p.returncode for p in (a, b)}
    # one trains; the other finds it training (exit 2, naming it) or, if it came late, finished
    assert sorted(codes.values()) in ([0, 0], [0, 2]), outs
    for pid, code in codes.items():
        if code == 2:
            other = next(q for q in codes if q != pid)
            assert f"PID {other}" in one_line_error(outs[pid][1].split("\n", 1)[1])
    [rd] = [RunDir(p) for p in (tmp_path / "runs" / "train").iterdir()]
    assert rd.is_done() and (rd.path / "starts.log").read_text().count("\n") == 1  # one trained
    assert [r["step"] for r in rd.read_metrics()] == list(range(1, 21))  # logged once, not twice


def test_a_stale_lock_is_taken_over_and_a_live_one_is_not(tmp_path, capsys):
    lock = RunLock(tmp_path, stale_s=60)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = {"host": socket.gethostname(), "pid": dead.pid, "start": None, "slurm_job": "", "since": "then", "token": "x"}
    atomic_write_text(lock.path, json.dumps(here))
    with lock:
        assert lock.read()["pid"] == os.getpid()
        with pytest.raises(RunLocked, match=rf"host {socket.gethostname()}, PID {os.getpid()}"):
            RunLock(tmp_path).acquire()  # a second taker, even in the same process
    assert f"PID {dead.pid}" in capsys.readouterr().err and not lock.path.exists()

    other = {**here, "host": "node-elsewhere", "pid": 1}
    atomic_write_text(lock.path, json.dumps(other))  # refreshed just now: its holder is alive
    with pytest.raises(RunLocked, match="host node-elsewhere, PID 1"):
        lock.acquire()
    old = time.time() - 120  # not refreshed for longer than stale_s: its host is gone
    os.utime(lock.path, (old, old))
    with lock:
        assert lock.read()["host"] == socket.gethostname()
    assert "node-elsewhere" in capsys.readouterr().err

    atomic_write_text(lock.path, json.dumps({**other, "slurm_job": "4242"}))  # a requeued SLURM job's earlier run
    os.environ["SLURM_JOB_ID"] = "4242"
    try:
        with lock:
            assert lock.read()["slurm_job"] == "4242"
    finally:
        del os.environ["SLURM_JOB_ID"]


def test_a_truncated_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    from harness.train import main, run

    marker = tmp_path / "FAIL"
    marker.write_text("")
    base = fit_config(tmp_path, steps=20, ckpt_every=5, keep_checkpoints=3)
    raw = yaml.safe_load(base.read_text())
    raw["method"].update(step_seconds=0.0, fail_at_step=17, fail_if_file=str(marker))
    write_yaml(base, raw)
    assert main([str(base), "--runs-dir", str(tmp_path / "runs")]) == 1
    [rd] = [RunDir(p) for p in (tmp_path / "runs" / "train").iterdir()]
    assert [s for s, _ in rd.checkpoints()] == [5, 10, 15]
    latest = rd.latest_checkpoint()[1]
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # a torn copy
    marker.unlink()
    capsys.readouterr()
    run(rd.path)
    err = capsys.readouterr().err
    assert f"warning: {latest}: cannot be loaded" in err and "resuming from the checkpoint before it" in err
    assert [r["step"] for r in rd.read_metrics()] == list(range(1, 21))
    raw["method"]["fail_at_step"] = -1
    raw["method"]["fail_if_file"] = ""
    clean_cfg = write_yaml(tmp_path / "clean.yaml", raw)
    assert main([str(clean_cfg), "--runs-dir", str(tmp_path / "clean")]) == 0
    [clean] = [RunDir(p) for p in (tmp_path / "clean" / "train").iterdir()]
    assert_same_state(rd, clean)


def test_errors_while_training_are_one_line_with_the_traceback_in_the_run(tmp_path, capsys):
    from harness.train import main

    cfg = fit_config(tmp_path, steps=6, ckpt_every=2)
    raw = yaml.safe_load(cfg.read_text())
    raw["method"].update(step_seconds=0.0, fail_at_step=3)
    write_yaml(cfg, raw)
    assert main([str(cfg), "--runs-dir", str(tmp_path / "runs")]) == 1
    [rd] = [RunDir(p) for p in (tmp_path / "runs" / "train").iterdir()]
    line = one_line_error(capsys.readouterr().err.split("\n", 1)[1])  # after the 'run <id>: <folder>' line
    assert "RuntimeError: planned failure at step 3" in line and str(rd.error_path) in line
    assert "Traceback" in rd.read_error() and rd.read_status()["state"] == "failed"
    assert main([str(cfg), "--runs-dir", str(tmp_path / "runs"), "--debug"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# sweeps own their local jobs


def _task_pids(planned) -> list[int]:
    return [int(p.dir.read_status()["pid"]) for p in planned if p.dir.read_status().get("pid")]


def test_ctrl_c_on_a_local_sweep_stops_its_jobs_and_a_plain_rerun_resumes(procs, tmp_path, capsys):
    path = fit_sweep(tmp_path, grid={"method.lr": [0.05]}, overrides={"method.step_seconds": 0.1, "train.steps": 30})
    runs = tmp_path / "runs"
    cmd = ["-m", "harness.sweep", str(path), "--cluster", "local", "--runs-dir", str(runs)]
    [pr] = S.expand(S.load_sweep(path, runs))
    p = start(procs, cmd, tmp_path)
    wait_for(lambda: len(pr.dir.read_metrics()) >= 12, "step 12", p)
    task = int(pr.dir.read_status()["pid"])
    os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in the terminal does: the whole foreground group
    out, err = finish(p)
    assert p.returncode == 130, (out, err)
    assert "interrupted: run `python -m harness.sweep" in err
    from harness.runstore import pid_alive

    assert not pid_alive(task)  # the sweep's job stopped with it
    st = pr.dir.read_status()
    assert st["state"] == "interrupted" and latest_step(pr.dir) == st["step"] >= 12

    assert S.main([str(path), "--dry-run", "--runs-dir", str(runs)]) == 0
    table = capsys.readouterr().out
    assert "interrupted" in table and "resumable" in table and "interrupted: 1" in table

    p = start(procs, cmd, tmp_path)  # no --retry
    out, err = finish(p)
    assert p.returncode == 0, (out, err)
    assert pr.dir.is_done() and [r["step"] for r in pr.dir.read_metrics()] == list(range(1, 31))
    clean = S.load_sweep(path, tmp_path / "clean")
    [cpr] = S.expand(clean)
    S.launch(clean, [cpr], cluster="debug", out=io.StringIO(), progress=False)
    assert_same_state(pr.dir, cpr.dir)


def test_sigterm_to_a_local_sweep_stops_its_jobs(procs, tmp_path):
    path = fit_sweep(tmp_path, grid={"method.lr": [0.05, 0.1]}, overrides={"method.step_seconds": 0.1, "train.steps": 60},
                     launcher={"array_parallelism": 2})
    runs = tmp_path / "runs"
    planned = S.expand(S.load_sweep(path, runs))
    p = start(procs, ["-m", "harness.sweep", str(path), "--cluster", "local", "--runs-dir", str(runs)], tmp_path)
    wait_for(lambda: all(len(pr.dir.read_metrics()) >= 3 for pr in planned), "both runs training", p)
    tasks = _task_pids(planned)
    p.send_signal(signal.SIGTERM)  # the sweep alone, as a scheduler or `kill` would
    out, err = finish(p)
    assert p.returncode == 130, (out, err)
    from harness.runstore import pid_alive

    assert len(tasks) == 2 and not any(pid_alive(t) for t in tasks)
    assert [pr.dir.read_status()["state"] for pr in planned] == ["interrupted", "interrupted"]


def test_a_rerun_adopts_jobs_left_by_a_killed_sweep_within_array_parallelism(procs, tmp_path):
    path = fit_sweep(tmp_path, grid={"method.lr": [0.05, 0.1]}, overrides={"method.step_seconds": 0.1, "train.steps": 40},
                     launcher={"array_parallelism": 1})
    runs = tmp_path / "runs"
    first, second = S.expand(S.load_sweep(path, runs))
    cmd = ["-m", "harness.sweep", str(path), "--cluster", "local", "--runs-dir", str(runs)]
    p = start(procs, cmd, tmp_path)
    wait_for(lambda: latest_step(first.dir) >= 10, "the first run's checkpoint 10", p)
    os.kill(p.pid, signal.SIGKILL)  # the sweep alone: its job goes on without it
    p.wait()
    assert S.run_state(first.dir) == "running"
    orphan = int(first.dir.read_status()["pid"])
    copy = first.dir.path.parent / "sweep.yaml"  # written again by each launch, once it has read the states
    before = copy.stat().st_mtime_ns
    os.kill(orphan, signal.SIGSTOP)  # still running (not finished) however long the rerun takes to start
    try:
        again = start(procs, cmd, tmp_path)
        wait_for(lambda: copy.stat().st_mtime_ns != before, "the rerun's launch", again)
    finally:
        os.kill(orphan, signal.SIGCONT)
    out, err = finish(again)
    assert again.returncode == 0, (out, err)
    assert "1 queued/running, launching 1" in out
    assert (first.dir.path / "starts.log").read_text().count("\n") == 1  # adopted, not started again
    assert os.stat(second.dir.path / "starts.log").st_mtime >= os.stat(first.dir.result_path).st_mtime


# ---------------------------------------------------------------------------------------------
# bad inputs: one line, exit 2, no folder


def _dataset(folder: Path, bad: bool) -> Path:
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 10, 10)).save(folder / "images" / "a.png")
    if bad:
        (folder / "images" / "b.png").write_bytes(b"this is not a PNG")
    else:
        Image.new("RGB", (16, 16), (10, 10, 200)).save(folder / "images" / "b.png")
    rec = {"instruction": "make it blue", "edit_type": "color", "caption_ref": "red", "caption_edit": "blue"}
    (folder / "instructions.jsonl").write_text(
        json.dumps({"id": "0", "image": "images/a.png", **rec}) + "\n" + json.dumps({"id": "1", "image": "images/b.png", **rec}) + "\n")
    return folder


@pytest.mark.parametrize("overrides, expected", [
    (["train.lr=-1"], "error: command-line override: key 'train.lr': got -1.0; allowed: a number > 0"),
    (["train.ckpt_every=0"], "error: command-line override: key 'train.ckpt_every': got 0; allowed: an integer >= 1"),
    (["train.log_every=0"], "error: command-line override: key 'train.log_every': got 0; allowed: an integer >= 1"),
    (["eval.batch_size=0"], "error: command-line override: key 'eval.batch_size': got 0; allowed: an integer >= 1"),
    (["data.path=/no/such/dataset"], "error: /no/such/dataset: data.path: not found; allowed: a dataset folder"),
    (["eval.benchmarks=[{name: gedit, path: /no/such/gedit}]"],
     "error: /no/such/gedit: eval.benchmarks[0].path (gedit): not found"),
])
def test_bad_inputs_to_train_fail_in_one_line_before_any_folder(tmp_path, capsys, overrides, expected):
    from harness.train import main

    cfg = fit_config(tmp_path)
    assert main([str(cfg), *overrides, "--runs-dir", str(tmp_path / "runs")]) == 2
    assert one_line_error(capsys.readouterr().err).startswith(expected)
    assert not (tmp_path / "runs").exists()


def test_a_value_in_a_file_is_blamed_on_its_line_and_one_from_the_command_line_on_the_command_line(tmp_path, capsys):
    from harness.train import main

    cfg = fit_config(tmp_path, lr=-1.0)
    line = cfg.read_text().splitlines().index("  lr: -1.0") + 1
    assert main([str(cfg), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert one_line_error(capsys.readouterr().err) == f"error: {cfg}:{line}: key 'train.lr': got -1.0; allowed: a number > 0"
    assert main([str(cfg), "train.lr=-2", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "command-line override: key 'train.lr': got -2.0" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_an_unreadable_dataset_image_is_named_before_any_folder_or_skipped_and_counted(tmp_path, capsys):
    from harness.data.sampling import InstructionData
    from harness.train import main

    data = _dataset(tmp_path / "data", bad=True)
    cfg = fit_config(tmp_path)
    args = [str(cfg), f"data.path={data}"]
    assert main([*args, "--runs-dir", str(tmp_path / "runs")]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: {data / 'images' / 'b.png'}: not a readable image") and "data.bad_images=skip" in line
    assert not (tmp_path / "runs").exists()
    assert main([*args, "data.bad_images=skip", "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 0
    with pytest.warns(UserWarning, match="left out 1 records"):
        ds = InstructionData(data, image_size=16, bad_images="skip")
    assert [r.id for r in ds.records] == ["0"] and ds.n_skipped == 1
    from harness.data.instructions import DatasetError

    with pytest.raises(DatasetError, match=r"b\.png: not a readable image"):
        InstructionData(data, image_size=16)


def test_the_image_check_is_cached_per_dataset_and_sees_a_changed_file(tmp_path, monkeypatch):
    from harness.data import instructions as I

    monkeypatch.setenv("NPEDIT_CACHE", str(tmp_path / "cache"))
    data = _dataset(tmp_path / "data", bad=False)
    rels = ["images/a.png", "images/b.png"]
    assert I.check_images(data, rels) == {}
    opened = []
    monkeypatch.setattr(I, "image_problem", lambda p: opened.append(p) or "")
    assert I.check_images(data, rels) == {} and opened == []  # unchanged files: no header read again
    monkeypatch.undo()
    monkeypatch.setenv("NPEDIT_CACHE", str(tmp_path / "cache"))
    (data / "images" / "b.png").write_bytes(b"torn")
    assert set(I.check_images(data, rels)) == {"images/b.png"}


def test_a_non_image_given_to_edit_is_refused_before_the_model_loads(tmp_path, capsys):
    from harness import edit

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    # the run folder has no model: had the model been loaded first, the error would be about that
    assert edit.main(["--run", str(tmp_path / "no-run"), "--image", str(text), "--instruction", "x",
                      "-o", str(tmp_path / "out.png")]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: {text}: input image: not a readable image")
    assert not (tmp_path / "out.png").exists()


def test_evaluate_on_a_benchmark_path_that_does_not_exist_fails_before_the_model_loads(tmp_path, capsys):
    from harness import evaluate

    rd = RunDir(tmp_path / "run")
    atomic_write_text(rd.config_path, C.dump_yaml(C.load_run_config(None, data=FIT_BASE)))
    assert evaluate.main(["--run", str(rd.path), "--benchmark", "gedit", "path=/no/such/gedit"]) == 2
    assert one_line_error(capsys.readouterr().err).startswith("error: /no/such/gedit: benchmark.path (gedit): not found")
    assert not rd.eval_dir.exists()


@pytest.mark.parametrize("text, expected", [
    ("grid:\n  method.lr: []\n", r"s\.yaml:\d+: key 'grid\.method\.lr': an empty list: the sweep would have no runs"),
    ("grid:\n  method.lr: [0.1]\n  method.lr: [0.2, 0.3]\n",
     r"s\.yaml:5: key 'grid\.method\.lr': written twice \(also on line 4\)"),
    ("grid:\n  method.lr: [0.1, 0.1]\n", r"key 'grid\.method\.lr': value 0 and value 1 are the same"),
    ("grid:\n  method.lr: [0.1, 0.2]\nzip:\n  - {method.lr: [0.3, 0.4], seed: [0, 1]}\n",
     r"key 'grid\.method\.lr': overlaps zip\[0\]\.method\.lr"),
    ("grid:\n  method: [{name: fit}, {name: fit_fast}]\nruns:\n  - {method.lr: 0.3}\n",
     r"key 'grid\.method': overlaps runs\[0\]\.method\.lr"),
    ("runs:\n  - {method.lr: 0.3}\n  - {method.lr: 0.3}\n", r"key 'runs': run 0 and run 1 are the same"),
])
def test_bad_sweep_files_fail_in_one_line_before_any_folder(tmp_path, capsys, text, expected):
    write_yaml(tmp_path / "base.yaml", FIT_BASE)
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nbase: base.yaml\n" + text)
    assert S.main([str(path), "--cluster", "debug", "--runs-dir", str(tmp_path / "runs")]) == 2
    line = one_line_error(capsys.readouterr().err)
    import re

    assert re.search(expected, line), line
    assert not (tmp_path / "runs").exists()


def test_a_sweep_checks_every_run_before_it_writes_or_queues_anything(tmp_path, capsys):
    path = fit_sweep(tmp_path, grid={"data.path": ["toyworld", str(tmp_path / "missing")]})
    for extra in ([], ["--dry-run"]):
        assert S.main([str(path), "--cluster", "debug", "--runs-dir", str(tmp_path / "runs"), *extra]) == 2
        line = one_line_error(capsys.readouterr().err)
        assert f"{tmp_path / 'missing'}: data.path: not found" in line and "data.path=" in line
    assert not (tmp_path / "runs").exists()


def test_run_files_follow_the_umask(tmp_path):
    from harness.train import main

    old = os.umask(0o027)
    try:
        cfg = fit_config(tmp_path, steps=2, ckpt_every=1)
        raw = yaml.safe_load(cfg.read_text())
        raw["method"]["step_seconds"] = 0.0
        write_yaml(cfg, raw)
        assert main([str(cfg), "--runs-dir", str(tmp_path / "runs")]) == 0
    finally:
        os.umask(old)
    [rd] = [RunDir(p) for p in (tmp_path / "runs" / "train").iterdir()]
    for f in (rd.result_path, rd.status_path, rd.config_path, rd.latest_checkpoint()[1], rd.metrics_path):
        assert f.stat().st_mode & 0o777 == 0o640, (f, oct(f.stat().st_mode))
