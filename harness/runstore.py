"""The run folder: everything one run writes, and the atomic writes later steps can trust.

    <runs>/<sweep>/<run_id>/
        config.yaml      resolved config (the run id is a hash of it)
        status           JSON: state (queued | running | interrupted | done | failed), job id, host, time
        lock             JSON: host, PID (and SLURM job) of the one process training the run (RunLock)
        checkpoints/     step_00000100.pt ... (torch.save of plain tensors/containers; loaded weights_only)
        metrics.jsonl    one JSON object per logged step
        samples/         sample edit grids
        model/           the final editing model (safetensors + config)
        eval/            benchmark outputs in their public layouts
        result.json      benchmark results; the run is done iff it exists
        error.txt        traceback of the last failure

Files are created with the permissions the umask allows (0644 under the usual 022), so that
collaborators on a shared filesystem can read a run's results.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import socket
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

# interrupted: stopped by SIGINT/SIGTERM (not a failure): a plain rerun resumes it
STATES = ("todo", "queued", "running", "interrupted", "done", "failed")
_CKPT = re.compile(r"^step_(\d+)\.pt$")


# ---------------------------------------------------------------------------------------------
# atomic writes


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600; the file the user gets follows the umask
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_umask_lock = threading.Lock()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ---------------------------------------------------------------------------------------------
# One process per run


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process whose parent died may linger as a zombie where nothing reaps it
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _proc_start(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks since boot), to tell a reused PID from its holder."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


class RunLocked(RuntimeError):
    """Another live process is training this run."""


class RunLock:
    """RUN/lock: held by the one process that trains a run; another gets RunLocked, naming the
    holder's host and PID. A lock whose holder is gone (kill -9, a lost node) is taken over with a
    warning.

    On a shared filesystem (NFS v3/v4, Lustre, GPFS, BeeGFS) it relies on nothing but hard links:
    the holder's details are written to a private file, which is then linked to `lock`; link() fails
    when `lock` exists, and the file server performs it atomically, so of any number of processes
    on any hosts exactly one succeeds, and a reader never sees a half-written lock. (No fcntl or
    flock locks, which some cluster mounts lack or emulate per host.) Whether the holder is gone:
    on the same host, its PID has exited or now belongs to a process started later; within the
    same SLURM job, the job was requeued, so its earlier run is over; from another host, the holder
    refreshes the lock's mtime every `heartbeat_s` and a lock not refreshed for `stale_s` is stale,
    its age measured against the file server's clock (a probe file touched now), so hosts' clocks
    need not agree. Taking over is itself serialised by an O_EXCL file, `lock.takeover`.
    """

    def __init__(self, run_dir: str | Path, *, heartbeat_s: float = 30.0, stale_s: float = 300.0):
        self.path = Path(run_dir) / "lock"
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.info: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "start": _proc_start(os.getpid()),
              "slurm_job": os.environ.get("SLURM_JOB_ID", ""), "token": secrets.token_hex(8),
              "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            if self._link(me):
                self.info = me
                self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="run-lock-heartbeat")
                self._thread.start()
                return
            holder = self.read()
            if holder is None:
                if not self.path.exists():  # released a moment ago
                    continue
                holder = {}  # unreadable (not written by this class): judged by its age alone
            if self._holder_alive(holder):
                raise RunLocked(f"{self.path.parent}: another process is training this run: {describe_holder(holder)}; "
                                f"wait for it to finish, or stop it and run the same command again")
            self._take_over(holder)
        raise RunLocked(f"{self.path}: could not take the run lock (it keeps changing hands)")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.info is not None and (self.read() or {}).get("token") == self.info["token"]:
            self.path.unlink(missing_ok=True)
        self.info = None

    def _link(self, me: dict[str, Any]) -> bool:
        tmp = self.path.with_name(f".lock.{me['token']}")
        tmp.write_text(json.dumps(me) + "\n")
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # NFS: the link may have been made though its reply was lost
            return tmp.stat().st_nlink == 2
        finally:
            tmp.unlink(missing_ok=True)

    def _holder_alive(self, h: dict[str, Any]) -> bool:
        if h.get("host") == socket.gethostname():
            pid = int(h.get("pid") or 0)
            return pid > 0 and pid_alive(pid) and (h.get("start") is None or _proc_start(pid) in (None, h["start"]))
        if h.get("slurm_job") and h["slurm_job"] == os.environ.get("SLURM_JOB_ID"):
            return False  # this SLURM job was requeued: the run it held before is over
        return self._age(self.path) < self.stale_s

    def _age(self, path: Path) -> float:
        """Seconds since `path` was modified, by the file server's clock."""
        probe = path.with_name(f".lock-clock.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            probe.touch()
            return probe.stat().st_mtime - path.stat().st_mtime
        except FileNotFoundError:
            return 0.0
        finally:
            probe.unlink(missing_ok=True)

    def _take_over(self, holder: dict[str, Any]) -> None:
        guard = self.path.with_name("lock.takeover")
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            if self._age(guard) > 60:  # a process died while taking over
                guard.unlink(missing_ok=True)
            time.sleep(0.05)
            return
        try:
            if (self.read() or {}) == holder and self.path.exists():
                warn(f"{self.path.parent}: taking over the run lock of {describe_holder(holder)}: that process is gone")
                self.path.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if (self.read() or {}).get("token") == (self.info or {}).get("token"):
                    os.utime(self.path)
            except OSError:
                pass


def describe_holder(h: dict[str, Any]) -> str:
    if not h:
        return "an unreadable lock file"
    job = f", SLURM job {h['slurm_job']}" if h.get("slurm_job") else ""
    return f"host {h.get('host')}, PID {h.get('pid')}{job}, since {h.get('since')}"


# ---------------------------------------------------------------------------------------------


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def id(self) -> str:
        return self.path.name

    config_path = property(lambda self: self.path / "config.yaml")
    status_path = property(lambda self: self.path / "status")
    result_path = property(lambda self: self.path / "result.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    error_path = property(lambda self: self.path / "error.txt")
    ckpt_dir = property(lambda self: self.path / "checkpoints")
    samples_dir = property(lambda self: self.path / "samples")
    model_dir = property(lambda self: self.path / "model")
    eval_dir = property(lambda self: self.path / "eval")

    # -- status ---------------------------------------------------------------------------------
    def read_status(self) -> dict[str, Any]:
        if self.result_path.exists():
            st = self._read_status_file()
            st["state"] = "done"
            return st
        return self._read_status_file() or {"state": "todo"}

    def _read_status_file(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def set_status(self, state: str, **info: Any) -> None:
        assert state in STATES, state
        st = {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname(),
              "pid": os.getpid(), **info}
        atomic_write_json(self.status_path, st)

    def is_done(self) -> bool:
        return self.result_path.exists()

    # -- results --------------------------------------------------------------------------------
    def write_result(self, result: dict[str, Any]) -> None:
        atomic_write_json(self.result_path, result)

    def read_result(self) -> dict[str, Any]:
        return json.loads(self.result_path.read_text())

    def write_error(self, text: str) -> None:
        atomic_write_text(self.error_path, text)

    def read_error(self) -> str:
        return self.error_path.read_text() if self.error_path.exists() else ""

    # -- metrics --------------------------------------------------------------------------------
    def log_metrics(self, row: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
        return rows

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after `step` (they will be logged again when the run resumes from it)."""
        rows = [r for r in self.read_metrics() if r.get("step", -1) <= step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, Path]]:
        if not self.ckpt_dir.exists():
            return []
        out = []
        for p in self.ckpt_dir.iterdir():
            m = _CKPT.match(p.name)
            if m:
                out.append((int(m.group(1)), p))
        return sorted(out)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        ck = self.checkpoints()
        return ck[-1] if ck else None

    def save_checkpoint(self, step: int, state: dict[str, Any], keep: int = 2) -> Path:
        path = self.ckpt_dir / f"step_{step:08d}.pt"
        atomic_torch_save({"step": step, "state": state}, path)
        for _, old in self.checkpoints()[:-keep] if keep > 0 else []:
            old.unlink(missing_ok=True)
        return path

    @staticmethod
    def load_checkpoint(path: Path) -> dict[str, Any]:
        return torch.load(path, map_location="cpu", weights_only=True)

    def load_latest_checkpoint(self) -> dict[str, Any] | None:
        """The newest checkpoint that loads; one that does not (cut short by a full disk, a torn
        copy) is passed over with a warning and the one before it is used."""
        for step, path in reversed(self.checkpoints()):
            try:
                ck = self.load_checkpoint(path)
                if not isinstance(ck, dict) or "state" not in ck or ck.get("step") != step:
                    raise ValueError("not a checkpoint of this harness")
                return ck
            except Exception as e:  # torch raises RuntimeError, EOFError, pickle errors...
                warn(f"{path}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                     f"resuming from the checkpoint before it")
        return None
