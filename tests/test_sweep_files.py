"""Every sweep and tune file the project ships expands into valid runs (and a valid report spec)."""
from pathlib import Path

import pytest
import yaml

from harness import sweep as S
from harness import tune as T

REPO = Path(__file__).resolve().parents[1]
FILES = sorted((REPO / "sweeps").rglob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(REPO)) for p in FILES])
def test_shipped_file_expands(path, tmp_path):
    if "params" in yaml.safe_load(path.read_text()):
        tuner = T.Tuner(path, tmp_path)
        for v in tuner.cfg.all_variants():
            first = {k: (p.choices[0] if p.type == "categorical" else p.low) for k, p in tuner.cfg.space(v).items()}
            assert tuner.plan(first, v).config is not None
        return
    sw = S.load_sweep(path, tmp_path)
    planned = S.expand(sw)
    assert planned and len({p.run_id for p in planned}) == len(planned)
    assert sw.cfg.report, "every shipped sweep produces a report"
