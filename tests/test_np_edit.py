"""NP-Edit on tiny models of the real classes: each loss term, the unroll, resume, variants, edit command."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from harness import config as C
from harness.data.sampling import step_generator
from harness.runstore import RunDir
from harness.train import prepare_run_dir, run
from methods.dmd import dmd_gradient, dmd_loss
from methods.np_edit import VARIANTS, NPEdit
from tests import tiny_world


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return tiny_world.build(tmp_path_factory.mktemp("tiny"))


def make(paths, tmp_path, method, **sections):
    cfg = C.load_run_config(None, data=tiny_world.run_config(paths, method, **sections))
    rd = prepare_run_dir(cfg, tmp_path / "runs", "t")
    return cfg, rd


def test_vlm_loss_alone_raises_p_correct(paths, tmp_path):
    cfg, rd = make(paths, tmp_path, {"name": "vlm_only", "warmup_steps": 0, "single_step_steps": 100, "lambda_vlm": 1.0},
                   data={"edit_types": ["color"]}, train={"lr": 2e-2, "grad_clip": 0.0})
    m = NPEdit(cfg, rd, torch.device("cpu"))
    m._batch = lambda step, stream: m.data.sample(2, step_generator(0, 0, "fixed"))  # one fixed batch
    m._gen = lambda step, stream: step_generator(0, 0, stream)  # and fixed noise
    p = [m.train_step(s)["p_correct"] for s in range(25)]
    assert m.A is None and m.teacher is None  # no DMD machinery for vlm_only
    # a random tiny critic barely depends on its input image (and outputs are clamped), so the rise is small
    assert p[-1] > p[0] + 0.01 and p[5] > p[0], p


def test_dmd_gradient_is_zero_when_teacher_and_fake_agree():
    x0 = torch.randn(2, 3, 8, 8)
    x_t = torch.randn(2, 3, 8, 8)
    t = torch.tensor([0.3, 0.7])
    v = torch.randn(2, 3, 8, 8)
    assert torch.count_nonzero(dmd_gradient(x0, x_t, t, v, v)) == 0


def test_dmd_loss_moves_sample_toward_teacher():
    """With the teacher denoising to `real` and the fake score to the sample itself, the DMD step
    moves x0 toward `real`."""
    real = torch.ones(1, 3, 4, 4)
    x0 = torch.zeros(1, 3, 4, 4, requires_grad=True)
    opt = torch.optim.SGD([x0], lr=20.0)
    dist0 = (x0 - real).abs().mean().item()
    for _ in range(5):
        t = torch.tensor([0.5])
        x_t = (1 - t) * x0.detach() + t * torch.randn_like(x0)
        v_real = (x_t - real) / t  # x_t - t v = real
        v_fake = (x_t - x0.detach()) / t  # x_t - t v = x0
        loss = dmd_loss(x0, dmd_gradient(x0.detach(), x_t, t, v_real, v_fake))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (x0 - real).abs().mean().item() < 0.5 * dist0


def test_first_dmd_step_has_zero_gradient_without_guidance(paths, tmp_path):
    """A_phi and the teacher both start as G_init: with guidance 1 they agree exactly at step one."""
    cfg, rd = make(paths, tmp_path, {"name": "dmd_only", "warmup_steps": 0, "guidance": 1.0, "n_aux": 1})
    m = NPEdit(cfg, rd, torch.device("cpu"))
    out = m.train_step(0)
    assert out["dmd_grad_abs"] == 0.0
    out = m.train_step(1)  # after one auxiliary update they differ
    assert out["dmd_grad_abs"] > 0.0


def test_unroll_passes_gradient_through_both_steps(paths, tmp_path):
    cfg, rd = make(paths, tmp_path, {"name": "np_edit", "warmup_steps": 0, "single_step_steps": 0})
    m = NPEdit(cfg, rd, torch.device("cpu"))
    outs = []
    real_forward = m.G.forward

    def recording(*args, **kw):
        v = real_forward(*args, **kw)
        v.retain_grad()
        outs.append(v)
        return v

    m.G.forward = recording
    batch = m.data.sample(2, step_generator(0, 0, "x"))
    y = m.backbone.encode_image(batch.images)
    text = m.backbone.encode_text([r.instruction for r in batch.records])
    x0 = m._unroll(y, text, 0.5, m._unroll_noise(y.shape, 0.5, step_generator(0, 0, "n")))
    x0.square().mean().backward()
    assert len(outs) == 2
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outs)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_runs(paths, tmp_path, variant):
    method = {"name": variant, "warmup_steps": 1, "single_step_steps": 1, "n_aux": 1}
    if variant == "np_edit_lpips":
        method["lpips_allow_random"] = True  # no pretrained AlexNet offline: exercise the code path
    cfg, rd = make(paths, tmp_path, method, train={"steps": 3})
    m = NPEdit(cfg, rd, torch.device("cpu"))
    logs = [m.train_step(s) for s in range(3)]
    assert "loss_id" in logs[0]
    main = logs[-1]
    assert ("loss_vlm" in main) == (variant != "dmd_only")
    assert ("loss_dmd" in main) == (variant != "vlm_only")
    assert ("loss_lpips" in main) == (variant == "np_edit_lpips")
    assert all(torch.isfinite(torch.tensor(v)) for v in main.values())


def test_resume_equals_uninterrupted_bitwise(paths, tmp_path, monkeypatch):
    method = {"name": "np_edit", "warmup_steps": 2, "single_step_steps": 2, "n_aux": 2, "noop_prob": 0.3}
    sections = {"train": {"steps": 7, "ckpt_every": 3, "ema_decay": 0.9}, "eval": {"benchmarks": []}}
    cfg, rd = make(paths, tmp_path / "a", method, **sections)
    run(rd.path)
    _, rd2 = make(paths, tmp_path / "b", method, **sections)
    real_step = NPEdit.train_step

    def crash_at_5(self, step):
        if step == 5:
            raise KeyboardInterrupt  # a kill, after the checkpoint at step 3
        return real_step(self, step)

    monkeypatch.setattr(NPEdit, "train_step", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        run(rd2.path)
    assert rd2.latest_checkpoint()[0] == 3
    monkeypatch.setattr(NPEdit, "train_step", real_step)
    run(rd2.path)
    a = load_file(str(rd.model_dir / "denoiser.safetensors"))
    b = load_file(str(rd2.model_dir / "denoiser.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = (RunDir.load_checkpoint(r.latest_checkpoint()[1])["state"] for r in (rd, rd2))
    assert all(torch.equal(ca["A"][k], cb["A"][k]) for k in ca["A"])
    assert [r["step"] for r in rd2.read_metrics()] == list(range(1, 8))


def test_trained_run_edits_from_the_command_line(paths, tmp_path):
    from harness import edit

    cfg, rd = make(paths, tmp_path, {"name": "np_edit", "warmup_steps": 1, "single_step_steps": 1, "n_aux": 1},
                   train={"steps": 2})
    result = run(rd.path)
    assert result["results"][0]["benchmark"] == "shapes_edit"
    assert (rd.samples_dir).exists() and any(rd.samples_dir.iterdir())
    src = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (255, 255, 255)).save(src)
    out = tmp_path / "out.png"
    assert edit.main(["--run", str(rd.path), "--image", str(src), "--instruction", "make the red circle blue",
                      "-o", str(out)]) == 0
    assert Image.open(out).size == (32, 32)
    folder_out = tmp_path / "outs"
    jsonl = tmp_path / "edits.jsonl"
    jsonl.write_text('{"image": "in.png", "instruction": "erase the red circle", "output": "a.png"}\n')
    assert edit.main(["--run", str(rd.path), "--jsonl", str(jsonl), "-o", str(folder_out)]) == 0
    assert Image.open(folder_out / "a.png").size == (32, 32)
    ed = edit.load_editor(rd.path)
    same = ed.edit([Image.open(src)], ["make the red circle blue"], seed=0)[0]
    assert (np.asarray(same) == np.asarray(Image.open(out))).all()


def test_init_from_a_trained_editor_skips_the_warmup_and_single_step_phase(paths, tmp_path):
    """From an editor that already edits, the first step is an unrolled main step (no identity warmup,
    no t = 1-only phase); `init_skips_phases: false` keeps both, as from the text-to-image model."""
    method = {"name": "np_edit", "warmup_steps": 3, "single_step_steps": 3, "n_aux": 1,
              "unroll_ts": [0.5]}
    cfg, rd = make(paths, tmp_path / "sft", method, train={"steps": 1}, eval={"benchmarks": []})
    run(rd.path)
    init = {"init_from": str(rd.path)}
    cfg, rd2 = make(paths, tmp_path / "skip", method, train=init)
    first = NPEdit(cfg, rd2, torch.device("cpu")).train_step(0)
    assert "loss_id" not in first and first["t2"] == 0.5 and "loss_vlm" in first
    cfg, rd3 = make(paths, tmp_path / "keep", {**method, "init_skips_phases": False}, train=init)
    m = NPEdit(cfg, rd3, torch.device("cpu"))
    assert "loss_id" in m.train_step(0) and m.train_step(3)["t2"] == 1.0
    # without init_from the phases always run
    cfg, rd4 = make(paths, tmp_path / "plain", method)
    assert "loss_id" in NPEdit(cfg, rd4, torch.device("cpu")).train_step(0)


def test_identity_question_weight_scales_its_share_of_the_vlm_loss(paths, tmp_path):
    """L_VLM = (edit term + w * identity term) per sample: the loss at weights 0, 1 and 3 is linear in w,
    and before `identity_start` the identity question is not asked."""
    from methods.questions import questions_for
    from methods.vlm_loss import vlm_loss

    cfg, rd = make(paths, tmp_path, {"name": "np_edit", "warmup_steps": 0})
    m = NPEdit(cfg, rd, torch.device("cpu"))
    batch = m.data.sample(4, step_generator(0, 0, "w"))
    imgs = batch.images
    qs = [questions_for(r.edit_type, r.instruction, r.object) for r in batch.records]
    loss = {w: vlm_loss(m.critic, imgs.flip(-1), imgs, qs, weights={"identity": w})[0].item() for w in (0.0, 1.0, 3.0)}
    identity_term = loss[1.0] - loss[0.0]
    assert identity_term > 0
    assert loss[3.0] == pytest.approx(loss[0.0] + 3 * identity_term, rel=1e-5)

    cfg, rd = make(paths, tmp_path / "late", {"name": "np_edit", "warmup_steps": 0, "single_step_steps": 10,
                                              "identity_start": 2, "noop_prob": 0.0})
    m = NPEdit(cfg, rd, torch.device("cpu"))
    assert "p_identity" not in m.train_step(0) and "p_identity" in m.train_step(2)
