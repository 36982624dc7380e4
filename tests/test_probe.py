"""The force-balance probe: its measurement on a case built so that the answer is known, and the
command on a short NP-Edit run."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from harness import probe as P
from harness.train import run
from methods.dmd import dmd_gradient, dmd_loss
from tests import tiny_world
from tests.test_np_edit import make


def test_dmd_pulls_a_copy_toward_the_target_when_the_teacher_denoises_to_it():
    """A teacher whose denoised estimate is the exact target and a fake score that denoises to the
    sample itself: DMD's descent direction at the copy is (target - copy), cosine 1; a term that pulls
    back to the input has cosine -1 at a half-made edit; 'along' is the descent's component toward the target."""
    g = torch.Generator().manual_seed(0)
    ref, target = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1, torch.rand(3, 3, 8, 8, generator=g) * 2 - 1

    def dmd(x):
        t = torch.full((x.shape[0],), 0.6)
        x_t = (1 - 0.6) * x.detach() + 0.6 * torch.randn(x.shape, generator=g)
        v_real = (x_t - target) / 0.6  # x_t - t v_real = target
        v_fake = (x_t - x.detach()) / 0.6  # x_t - t v_fake = x
        return 3 * dmd_loss(x, dmd_gradient(x.detach(), x_t, t, v_real, v_fake))

    def back_to_input(x):
        return ((x - ref) ** 2).sum()

    at_copy = P.forces(ref, target, {"dmd": dmd, "l2": back_to_input})
    assert torch.allclose(at_copy["dmd"]["cosine"], torch.ones(3, dtype=torch.float64), atol=1e-6)
    assert at_copy["l2"]["norm"].max() == 0  # at the input itself the pull back has no force
    half = (ref + target) / 2
    at_half = P.forces(half, target, {"l2": back_to_input})
    assert torch.allclose(at_half["l2"]["cosine"], -torch.ones(3, dtype=torch.float64), atol=1e-6)
    # d = -2 (half - ref) = -(target - ref): its component along (target - half) is -|target - ref|
    expect = -(target - ref).flatten(1).norm(dim=1).double()
    assert torch.allclose(at_half["l2"]["along"], expect, rtol=1e-6)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return tiny_world.shared(tmp_path_factory)


def test_probe_of_a_short_run_measures_every_term_and_the_critic_over_checkpoints(paths, tmp_path):
    method = {"name": "np_edit", "warmup_steps": 1, "single_step_steps": 1, "n_aux": 1, "noop_prob": 0.05}
    cfg, rd = make(paths, tmp_path, method, train={"steps": 4, "ckpt_every": 2, "keep_checkpoints": 10},
                   eval={"benchmarks": [{"name": "shapes_edit", "n_per_type": 1}]})
    run(rd.path)
    assert P.main([str(rd.path), "--n-per-type", "1", "--dmd-draws", "1"]) == 0
    df = pd.read_csv(rd.path / "probe" / "forces.csv")
    assert set(df.term) == {"vlm_edit", "vlm_identity", "dmd", "noop", "total"}
    assert len(set(df.point)) == 3 and df.point.str.contains("step 4").any()
    # the total force is the sum of the terms' forces (the probe differentiates each term on its own)
    for (point, b), d in df.groupby(["point", "sample"]):
        parts = d[d.term != "total"].along.sum()
        assert d[d.term == "total"].along.iloc[0] == pytest.approx(parts, rel=1e-4, abs=1e-9)
    acc = pd.read_csv(rd.path / "probe" / "critic.csv")
    assert sorted(acc.step.unique()) == [0, 2, 4]
    assert {"truth", "critic"} <= set(acc.columns)
    assert (rd.path / "probe" / "forces.png").exists() and (rd.path / "probe" / "critic.png").exists()
    assert P.main([str(rd.path), "--step", "3"]) == 2  # no such checkpoint
