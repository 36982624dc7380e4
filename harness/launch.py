"""Launching runs with submitit: SLURM job arrays, local processes, or in-process (debug).

A local sweep owns its jobs (harness.sweep): Ctrl-C or SIGTERM to the sweep stops them, each with a
checkpoint, marked interrupted; jobs left by a sweep killed outright are adopted by its next launch,
which counts them against array_parallelism.

Jobs are checkpointable: when SLURM preempts or times a job out, submitit signals it; the training
loop saves a checkpoint at the next step boundary, the job is requeued, and the new job resumes by
scanning the run folder (never from state frozen in the job's pickle).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import submitit

Cluster = Literal["auto", "slurm", "local", "debug"]


@dataclass
class LauncherConfig:
    cluster: Cluster = "auto"  # auto = slurm when a SLURM controller answers with a usable node, local processes otherwise
    partition: str = ""
    gpus_per_node: int = 0  # one task per GPU
    tasks_per_node: int = 0  # 0 = one per GPU (at least one); set it for multi-process CPU jobs
    nodes: int = 1
    cpus_per_task: int = 2
    mem_gb: float = 0  # 0 = cluster default
    timeout_min: int = 60
    array_parallelism: int = 16
    max_requeues: int = 3  # submitit's max_num_timeout
    account: str = ""
    qos: str = ""
    constraint: str = ""
    slurm_extra: dict[str, Any] = field(default_factory=dict)  # passed as slurm_additional_parameters
    setup: list[str] = field(default_factory=list)  # shell lines run before each job (module load ...)

    def validate(self) -> None:
        from harness.config import check_range

        check_range(self, "timeout_min", ge=1)
        check_range(self, "array_parallelism", ge=1)
        check_range(self, "gpus_per_node", ge=0)
        check_range(self, "tasks_per_node", ge=0, note="0 = one per GPU")
        check_range(self, "nodes", ge=1)
        check_range(self, "cpus_per_task", ge=1)
        check_range(self, "mem_gb", ge=0, note="0 = the cluster's default")
        check_range(self, "max_requeues", ge=0)


def resolve_cluster(cluster: str) -> str:
    """auto = slurm where SLURM is installed and its controller answers with a node that can run
    jobs (an installed but stopped cluster would only queue them forever), else local."""
    if cluster == "auto":
        return "slurm" if slurm_available() else "local"
    return cluster


def slurm_available() -> bool:
    if not (shutil.which("sbatch") and shutil.which("sinfo")):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (subprocess.TimeoutExpired, OSError):
        return False
    usable = ("idle", "mixed", "alloc", "allocated", "completing", "planned")
    return out.returncode == 0 and any(st.rstrip("*~#!%$@^-").lower() in usable for st in out.stdout.split())


def make_executor(folder: Path, launcher: LauncherConfig, *, cluster: str | None = None, name: str = "np-edit") -> submitit.Executor:
    cluster = resolve_cluster(cluster or launcher.cluster)
    _clear_inherited_slurm_env()
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster, slurm_max_num_timeout=launcher.max_requeues)
    tasks = launcher.tasks_per_node or max(1, launcher.gpus_per_node)
    params: dict[str, Any] = dict(
        timeout_min=launcher.timeout_min,
        nodes=launcher.nodes,
        tasks_per_node=tasks,
        cpus_per_task=launcher.cpus_per_task,
        name=name,
    )
    if launcher.gpus_per_node:
        params["gpus_per_node"] = launcher.gpus_per_node
    if launcher.mem_gb:
        params["mem_gb"] = launcher.mem_gb
    if cluster == "slurm":
        params["slurm_array_parallelism"] = launcher.array_parallelism
        if launcher.partition:
            params["slurm_partition"] = launcher.partition
        if launcher.account:
            params["slurm_account"] = launcher.account
        if launcher.qos:
            params["slurm_qos"] = launcher.qos
        if launcher.constraint:
            params["slurm_constraint"] = launcher.constraint
        if launcher.slurm_extra:
            params["slurm_additional_parameters"] = dict(launcher.slurm_extra)
        if launcher.setup:
            params["slurm_setup"] = list(launcher.setup)
    ex.update_parameters(**params)
    return ex


def _clear_inherited_slurm_env() -> None:
    """Submitting from inside a SLURM job would leak its SLURM_* variables into the children."""
    if os.environ.get("SLURM_JOB_ID") and not os.environ.get("NPEDIT_KEEP_SLURM_ENV"):
        for k in [k for k in os.environ if k.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
            del os.environ[k]


# ---------------------------------------------------------------------------------------------
# Graceful preemption: defer submitit's signal handler to a step boundary


class _Preemption:
    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self.frame: Any = None
        self.handler: Callable | None = None

    def install(self) -> None:
        """Wrap submitit's checkpoint-and-requeue signal handler (installed before our job runs)."""
        try:
            env = submitit.JobEnvironment()
            sig = env._usr_sig()
        except RuntimeError:  # not inside a submitit job
            return
        original = signal.getsignal(sig)
        if not callable(original):
            return
        self.handler = original

        def defer(signum: int, frame: Any) -> None:
            self.requested = True
            self.signum, self.frame = signum, frame

        signal.signal(sig, defer)

    @contextmanager
    def immediate(self) -> Iterator[None]:
        """Within this block a preemption signal requeues at once (for work that is safe to cut anywhere)."""
        if self.handler is None:
            yield
            return
        sig = submitit.JobEnvironment()._usr_sig()
        deferred = signal.getsignal(sig)
        signal.signal(sig, self.handler)
        try:
            if self.requested:
                self.handler(self.signum, self.frame)
            yield
        finally:
            signal.signal(sig, deferred)

    def maybe_stop(self, save: Callable[[], None] | None = None) -> None:
        """Call at a safe point: if a preemption/timeout signal arrived, save, then let submitit requeue."""
        if not self.requested:
            return
        if save is not None:
            save()
        if self.handler is not None:
            self.handler(self.signum, self.frame)  # requeues and exits (rank 0)
        sys.exit(-1)


preemption = _Preemption()


# ---------------------------------------------------------------------------------------------
# The job


class RunJob(submitit.helpers.Checkpointable):
    """Runs (or resumes) one run folder: train, export, evaluate, with `threads` CPU threads (the
    launcher's cpus_per_task; 0 = torch's default, every core of the machine)."""

    def __init__(self, threads: int = 0):
        self.threads = threads

    def __call__(self, run_dir: str) -> str:
        if self.threads > 0:
            import torch

            torch.set_num_threads(min(self.threads, os.cpu_count() or self.threads))
        setup_distributed()
        preemption.install()
        from harness.train import run

        run(Path(run_dir), progress=False, stop_signals=_stop_signals())
        return run_dir

    def checkpoint(self, run_dir: str) -> submitit.helpers.DelayedSubmission:
        # A fresh job object: the requeued job resumes from what the run folder holds.
        return submitit.helpers.DelayedSubmission(RunJob(self.threads), run_dir)


def _stop_signals() -> tuple[int, ...]:
    """The signals that stop a job's run as `interrupted`: SIGINT, and SIGTERM except on SLURM, where
    submitit leaves SIGTERM alone (it precedes preemption) and requeues on its own signal."""
    try:
        cluster = submitit.JobEnvironment().cluster
    except RuntimeError:
        cluster = "debug"
    return (signal.SIGINT,) if cluster == "slurm" else (signal.SIGINT, signal.SIGTERM)


def setup_distributed() -> None:
    """One task per GPU: initialise torch.distributed from submitit's environment when there are several."""
    # Plain torch, not accelerate's PartialState/Accelerator: submitit already gives the rank, world size
    # and master address (exported below), which is all those would read here, and making a PartialState
    # also sets torch's thread count in multi-process CPU jobs (undoing RunJob's cpus_per_task) and would
    # own the process group that models/sharding.py and the exact-resume checkpoints rely on.
    import torch.distributed as dist

    try:
        env = submitit.JobEnvironment()
    except RuntimeError:
        return
    if env.num_tasks <= 1 or dist.is_initialized():
        return
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    import torch

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend=backend)


def is_main_process() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


# ---------------------------------------------------------------------------------------------
# Is a queued/running job still alive?


def job_alive(status: dict[str, Any]) -> bool:
    cluster = status.get("cluster")
    job_id = str(status.get("job_id") or "")
    if cluster == "slurm" and job_id:
        if not shutil.which("squeue"):
            return True  # cannot tell from here: assume alive rather than double-submit
        try:
            out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
        except (subprocess.TimeoutExpired, OSError):
            return True
        states = out.stdout.split()
        return out.returncode == 0 and any(s not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for s in states)
    pid = status.get("pid") if status.get("state") == "running" else None
    if cluster == "local" and not pid and job_id.isdigit():
        pid = int(job_id)
    if pid:
        import socket

        if status.get("host") not in (None, socket.gethostname()):
            return True
        return _pid_alive(int(pid))
    return False


def _pid_alive(pid: int) -> bool:
    from harness.runstore import pid_alive

    return pid_alive(pid)
