import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# job processes (local executor, SLURM) must import the test plugins: put the repo on their path
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local single-node SLURM cluster (scripts/slurm_local.sh starts it when we are root)."""
    def up() -> bool:
        if not shutil.which("sinfo"):
            return False
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
        return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "alloc"))

    started = False
    if not up() and os.geteuid() == 0:
        subprocess.run([str(REPO / "scripts" / "slurm_local.sh")], check=False)
        started = up()
    if not up():
        msg = "no local SLURM cluster (run scripts/slurm_local.sh as root)"
        if os.environ.get("NPEDIT_REQUIRE_SLURM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    yield True
    if started:  # leave the machine as it was: a cluster left up would take `cluster: auto` runs
        subprocess.run([str(REPO / "scripts" / "slurm_local.sh"), "stop"], check=False)
