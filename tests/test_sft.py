"""SFT on tiny models of the real classes: the flow loss, condition dropout, CFG sampling, resume,
and its export as the initialisation of NP-Edit ("SFT + Ours")."""
import pytest
import torch
from safetensors.torch import load_file

from harness import config as C
from harness.data.sampling import step_generator
from harness.models.base import TextEmbedding
from harness.registry import METHODS
from harness.runstore import RunDir
from harness.train import prepare_run_dir, run
from methods import common
from methods.sft import SFT, condition_dropout, velocity_mixed_ref
from tests import tiny_world


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return tiny_world.shared(tmp_path_factory)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are overhead-bound: one intra-op thread is several times faster on shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(paths, tmp_path, method, **sections):
    data = tiny_world.run_config(paths, {"name": "sft", **method}, **sections)
    data["model"]["critic"] = None  # SFT needs no VLM
    cfg = C.load_run_config(None, data=data)
    return cfg, prepare_run_dir(cfg, tmp_path / "runs", "t")


def test_condition_dropout_rates_are_independent():
    text, image = condition_dropout(40_000, 0.1, 0.3, torch.Generator().manual_seed(0))
    t, i = torch.tensor(text, dtype=torch.float), torch.tensor(image, dtype=torch.float)
    assert abs(t.mean() - 0.1) < 0.01 and abs(i.mean() - 0.3) < 0.01
    assert abs((t * i).mean() - 0.03) < 0.005  # independent draws


def test_mixed_reference_batch_keeps_order():
    calls = []

    def den(x, t, text, ref):
        calls.append(None if ref is None else len(ref))
        return x * (1.0 if ref is None else 2.0) + t.view(-1, 1, 1, 1)

    x = torch.randn(4, 3, 2, 2)
    t = torch.tensor([0.1, 0.2, 0.3, 0.4])
    text = TextEmbedding(torch.zeros(4, 3, 4), torch.zeros(4, 4))
    v = velocity_mixed_ref(den, x, t, text, torch.zeros_like(x), [True, False, True, False])
    assert calls == [2, None]
    scale = torch.tensor([2.0, 1.0, 2.0, 1.0]).view(-1, 1, 1, 1)
    assert torch.equal(v, x * scale + t.view(-1, 1, 1, 1))
    calls.clear()  # ranks of a sharded model must all make both calls, even with an empty group
    v = velocity_mixed_ref(den, x, t, text, torch.zeros_like(x), [True] * 4, both_calls=True)
    assert calls == [4, None] and torch.equal(v, 2 * x + t.view(-1, 1, 1, 1))


def test_train_step_drops_text_and_reference_as_drawn(paths, tmp_path):
    cfg, rd = make(paths, tmp_path, {"drop_text": 0.5, "drop_image": 0.5, "warmup_steps": 0}, data={"batch_size": 8})
    m = SFT(cfg, rd, torch.device("cpu"))
    seen_refs, seen_texts = [], []
    real_forward, real_encode = m.G.forward, m.backbone.encode_text

    def forward(x, t, text, ref=None):
        seen_refs.append((x.shape[0], ref is not None))
        return real_forward(x, t, text, ref)

    def encode(prompts):
        seen_texts.append(list(prompts))
        return real_encode(prompts)

    m.G.forward, m.backbone.encode_text = forward, encode
    out = m.train_step(3)
    drop_text, drop_image = condition_dropout(8, 0.5, 0.5, m._gen(3, "noise"))  # the step's first draw
    batch = m._batch(3)
    assert seen_texts == [["" if d else r.instruction for d, r in zip(drop_text, batch.records)]]
    n_drop = sum(drop_image)
    assert 0 < sum(drop_text) < 8 and 0 < n_drop < 8  # this draw exercises both groups
    assert sorted(seen_refs) == sorted([(8 - n_drop, True), (n_drop, False)])
    assert out["drop_text"] == sum(drop_text) / 8 and out["drop_image"] == sum(drop_image) / 8


def test_flow_loss_decreases_on_a_fixed_batch(paths, tmp_path):
    cfg, rd = make(paths, tmp_path, {"warmup_steps": 5}, train={"lr": 2e-3})
    m = SFT(cfg, rd, torch.device("cpu"))
    m._batch = lambda step: m.data.sample(2, step_generator(0, 0, "fixed"))
    m._gen = lambda step, stream: step_generator(0, 0, stream)
    logs = [m.train_step(s) for s in range(30)]
    losses = [o["loss"] for o in logs]
    assert [o["lr"] for o in logs[:6]] == pytest.approx([4e-4, 8e-4, 1.2e-3, 1.6e-3, 2e-3, 2e-3])  # linear warmup
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses


def test_cfg_and_few_step_sampling(paths, tmp_path):
    cfg, rd = make(paths, tmp_path, {"warmup_steps": 0})
    m = SFT(cfg, rd, torch.device("cpu"))
    for s in range(3):
        m.train_step(s)
    recs = m.data.records[:2]
    images = torch.stack([m.data.images(r.image) for r in recs])
    ins = [r.instruction for r in recs]
    ed = m.editor()
    assert ed.sampling == common.Sampling("euler", 28, 4.5)
    guided = ed.edit_tensor(images, ins, seed=0)
    ed.sampling = common.Sampling("euler", 28, 1.0)
    plain = ed.edit_tensor(images, ins, seed=0)
    ed.sampling = common.Sampling("few_step", 4, 1.0)
    few = ed.edit_tensor(images, ins, seed=0)
    for x in (guided, plain, few):
        assert x.shape == images.shape and torch.isfinite(x).all()
    assert (guided - plain).abs().max() > 1e-3  # the unconditional branch changes the result


def test_resume_equals_uninterrupted_bitwise(paths, tmp_path, monkeypatch):
    method = {"warmup_steps": 3, "drop_text": 0.3, "drop_image": 0.3}
    sections = {"train": {"steps": 6, "ckpt_every": 2, "ema_decay": 0.9}, "eval": {"benchmarks": []}}
    _, rd = make(paths, tmp_path / "a", method, **sections)
    run(rd.path)
    _, rd2 = make(paths, tmp_path / "b", method, **sections)
    real_step = SFT.train_step

    def crash_at_3(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(SFT, "train_step", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        run(rd2.path)
    assert rd2.latest_checkpoint()[0] == 2
    monkeypatch.setattr(SFT, "train_step", real_step)
    run(rd2.path)
    a = load_file(str(rd.model_dir / "denoiser.safetensors"))
    b = load_file(str(rd2.model_dir / "denoiser.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = (RunDir.load_checkpoint(r.latest_checkpoint()[1])["state"] for r in (rd, rd2))
    assert all(torch.equal(ca["G"][k], cb["G"][k]) for k in ca["G"])
    assert [r["loss"] for r in rd.read_metrics()] == [r["loss"] for r in rd2.read_metrics()]


def test_sft_export_initialises_np_edit(paths, tmp_path):
    """'SFT + Ours': NP-Edit (full fine-tuning) starts from the SFT run's exported weights."""
    from methods.np_edit import NPEdit

    _, sft = make(paths, tmp_path, {"warmup_steps": 0}, train={"steps": 2, "lr": 1e-2}, eval={"benchmarks": []})
    run(sft.path)
    exported = load_file(str(sft.model_dir / "denoiser.safetensors"))
    method = {"name": "sft_np_edit", "warmup_steps": 0, "single_step_steps": 1, "n_aux": 1}
    cfg = C.load_run_config(None, data=tiny_world.run_config(paths, method))
    with pytest.raises(ValueError, match="train.init_from"):
        METHODS.get("sft_np_edit").build(cfg, None, torch.device("cpu"))
    cfg = C.load_run_config(None, data=tiny_world.run_config(paths, method, train={"init_from": str(sft.path)}))
    m = METHODS.get("sft_np_edit").build(cfg, prepare_run_dir(cfg, tmp_path / "runs", "np"), torch.device("cpu"))
    assert isinstance(m, NPEdit)
    g = dict(m.G.named_parameters())
    assert exported.keys() == g.keys() and all(torch.equal(exported[k], g[k].detach()) for k in exported)
    pretrained = dict(m.teacher.named_parameters())
    assert any(not torch.equal(exported[k], pretrained[k]) for k in exported)  # SFT moved the weights
    assert torch.isfinite(torch.tensor(m.train_step(0)["loss"]))


def test_lora_sft_exports_merged_full_weights(paths, tmp_path):
    cfg, rd = make(paths, tmp_path, {"warmup_steps": 0}, train={"lr": 5e-2})
    cfg.model.backbone.lora_rank, cfg.model.backbone.lora_alpha = 4, 8.0
    m = SFT(cfg, rd, torch.device("cpu"))
    assert m.G.has_adapter
    for s in range(2):
        m.train_step(s)
    m.export(str(tmp_path / "model"))
    ed = common.load_editor(tmp_path / "model")
    assert not ed.denoiser.has_adapter
    recs = m.data.records[:2]
    images = torch.stack([m.data.images(r.image) for r in recs])
    ins = [r.instruction for r in recs]
    ours, loaded = m.editor().edit_tensor(images, ins), ed.edit_tensor(images, ins)
    base = common.SamplingEditor(m.backbone, m.backbone.make_denoiser(trainable=False), ed.sampling).edit_tensor(images, ins)
    assert (ours - loaded).abs().max() < 1e-4 < (ours - base).abs().max()
