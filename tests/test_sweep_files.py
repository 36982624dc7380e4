"""Every sweep the project ships expands into valid runs with a valid report spec."""
from pathlib import Path

import pytest

from harness import sweep as S

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "sweeps").rglob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[str(p.relative_to(REPO)) for p in SWEEPS])
def test_shipped_sweep_expands(path, tmp_path):
    sw = S.load_sweep(path, tmp_path)
    planned = S.expand(sw)
    assert planned and len({p.run_id for p in planned}) == len(planned)
    assert sw.cfg.report, "every shipped sweep produces a report"
