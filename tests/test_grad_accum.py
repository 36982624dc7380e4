"""train.grad_accum: a step in k micro-batches is the same step as in one pass (same data, same noise,
the same loss summed), on tiny models of the real classes; the planner measures it saving memory."""
from __future__ import annotations

import pytest
import torch

from harness import config as C
from harness import plan as P
from harness.train import prepare_run_dir
from methods.np_edit import NPEdit
from methods.sft import SFT
from tests import tiny_world
from tests.test_plan import NP_EDIT, folders, run_config  # noqa: F401  (module fixture)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return tiny_world.shared(tmp_path_factory)


def build(cls, paths, tmp_path, method, grad_accum, **sections):
    train = {"grad_accum": grad_accum, "grad_clip": 0.0, "lr": 1e-3, **sections.pop("train", {})}
    cfg = C.load_run_config(None, data=tiny_world.run_config(paths, method, data={"batch_size": 4},
                                                             train=train, **sections))
    return cls(cfg, prepare_run_dir(cfg, tmp_path / f"runs{grad_accum}", "t"), torch.device("cpu"))


def assert_same_step(a: torch.nn.Module, b: torch.nn.Module) -> int:
    """The step's summed gradients (left in .grad after the optimizer step) agree to float error,
    and so do the weights after it (Adam's normalisation magnifies the error of near-zero gradients)."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    trained = [n for n, p in pa.items() if p.requires_grad and p.grad is not None]
    assert trained == [n for n, p in pb.items() if p.requires_grad and p.grad is not None]
    if not trained:
        return 0
    scale = max(float(pa[n].grad.abs().max()) for n in trained)
    assert scale > 0
    for n in trained:
        torch.testing.assert_close(pb[n].grad, pa[n].grad, rtol=1e-3, atol=1e-5 * scale, msg=lambda m: f"grad {n}: {m}")
        torch.testing.assert_close(pb[n], pa[n], rtol=0, atol=1e-5, msg=lambda m: f"{n}: {m}")
    return len(trained)


def test_np_edit_in_micro_batches_takes_the_same_steps(paths, tmp_path):
    # one identity-warmup step, one single-step step, two unrolled steps; no-op samples in the batches
    method = {"name": "np_edit", "warmup_steps": 1, "single_step_steps": 1, "n_aux": 2, "noop_prob": 0.3,
              "guidance": 2.0}
    one = build(NPEdit, paths, tmp_path, method, 1)
    four = build(NPEdit, paths, tmp_path, method, 4)
    start = {k: v.detach().clone() for k, v in one.G.named_parameters()}
    logs = []
    for step in range(4):
        a, b = one.train_step(step), four.train_step(step)
        logs.append(a)
        assert a.keys() == b.keys()
        for k in ("loss", "loss_id", "loss_vlm", "loss_dmd", "loss_aux", "loss_noop"):
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-7), (step, k)
        assert assert_same_step(one.G, four.G)
        assert assert_same_step(one.A, four.A) or step == 0  # the warmup does not train A
    assert any("loss_noop" in log for log in logs) and any(log.get("t2", 1.0) < 1.0 for log in logs)
    assert any(not torch.equal(p, start[k]) for k, p in one.G.named_parameters())  # the steps did move G


def test_sft_in_micro_batches_takes_the_same_steps(paths, tmp_path):
    method = {"name": "sft", "warmup_steps": 0, "drop_text": 0.5, "drop_image": 0.5}
    one = build(SFT, paths, tmp_path, method, 1)
    two = build(SFT, paths, tmp_path, method, 2)
    for step in range(3):
        a, b = one.train_step(step), two.train_step(step)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert assert_same_step(one.G, two.G)


def test_grad_accum_must_divide_the_batch(paths, tmp_path):
    with pytest.raises(ValueError, match=r"train\.grad_accum.*got 3 for data.batch_size 4.*divisor"):
        build(NPEdit, paths, tmp_path, {"name": "np_edit"}, 3)


def test_the_default_leaves_run_ids_as_they_were(paths):
    data = tiny_world.run_config(paths, {"name": "np_edit"})
    plain = C.load_run_config(None, data=data)
    explicit = C.load_run_config(None, data=tiny_world.run_config(paths, {"name": "np_edit"}, train={"grad_accum": 1}))
    four = C.load_run_config(None, data=tiny_world.run_config(paths, {"name": "np_edit"}, train={"grad_accum": 2}))
    assert C.config_hash(plain) == C.config_hash(explicit) != C.config_hash(four)


def test_the_planner_measures_micro_batches_saving_memory_and_suggests_them(folders):  # noqa: F811
    cfg = run_config(folders, NP_EDIT, grad_checkpointing=False)
    cfg.data.batch_size = 4
    whole = P.traced(cfg)
    cfg.train.grad_accum = 4
    micro = P.traced(cfg)
    assert micro.peak < whole.peak
    assert micro.total_flops == pytest.approx(whole.total_flops, rel=0.02)
    cfg.train.grad_accum = 1
    assert {"train.grad_accum": 2} in P.candidate_changes(cfg, P.Settings())


def test_a_micro_batch_of_no_ops_makes_the_others_passes_on_several_ranks(paths, tmp_path):
    """Ranks of a sharded model must run the same forwards: a micro-batch holding only no-op samples
    still calls the teacher and the critic (weighted 0) when there are several ranks, and that pass
    changes nothing in the step."""
    method = {"name": "np_edit", "warmup_steps": 0, "single_step_steps": 1, "n_aux": 1, "noop_prob": 0.5,
              "guidance": 2.0}
    plain = build(NPEdit, paths, tmp_path, method, 4)
    ranked = build(NPEdit, paths, tmp_path, method, 4)
    ranked._multi_rank = lambda: True  # as under torch.distributed with two ranks

    def count_calls(m: NPEdit) -> dict[str, int]:
        calls = {"teacher": 0, "critic": 0}
        teacher_forward, critic_logits = m.teacher.forward, m.critic.next_token_logits

        def teacher(*a, **k):
            calls["teacher"] += 1
            return teacher_forward(*a, **k)

        def critic(*a, **k):
            calls["critic"] += 1
            return critic_logits(*a, **k)

        m.teacher.forward, m.critic.next_token_logits = teacher, critic
        return calls

    plain_calls, ranked_calls = count_calls(plain), count_calls(ranked)
    skipped = 0
    for step in range(3):
        before = dict(plain_calls)
        a, b = plain.train_step(step), ranked.train_step(step)
        assert ranked_calls["teacher"] == 4 * (step + 1) and ranked_calls["critic"] == 4 * (step + 1)
        skipped += 4 - (plain_calls["teacher"] - before["teacher"])
        assert b["loss"] == a["loss"] and assert_same_step(plain.G, ranked.G)
        assert set(b) == set(a), (set(b) ^ set(a))
        assert {k: v for k, v in b.items() if k != "time"} == pytest.approx({k: v for k, v in a.items() if k != "time"})
    assert skipped > 0  # some micro-batch held only no-op samples
