"""Flow-GRPO on tiny models of the real classes: the SDE log-probabilities, advantages, PPO clipping,
the KL to the reference policy, a reward that must rise, the VLM rewards, resume, init from SFT, export."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from harness import config as C
from harness.registry import METHODS
from harness.runstore import RunDir
from harness.train import prepare_run_dir, run
from methods import common
from methods import reward as R
from methods.flow_grpo import (
    FlowGRPO,
    FlowGRPOConfig,
    clipped_surrogate,
    gaussian_log_prob,
    group_advantages,
    sde_sigma,
    sde_step,
    transition_kl,
)
from methods.questions import questions_for
from tests import tiny_world

FAST = {"group_size": 4, "sample_steps": 3, "lora_rank": 4, "lora_alpha": 8.0}


def redness(edited, refs, records):
    """A reward we control: how much red exceeds green and blue, mapped into [0, 1]."""
    e = edited.float().cpu()
    return R.Rewards(((e[:, 0] - e[:, 1:].mean(1)).mean((1, 2)) / 4 + 0.5).clamp(0, 1))


R.register_reward("test_redness", lambda critic, m: redness, needs_critic=False)


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


def make(paths, tmp_path, method, name="flow_grpo", seed=0, **sections):
    data = tiny_world.run_config(paths, {"name": name, **method}, **sections)
    cfg = C.load_run_config(None, data={**data, "seed": seed})
    return cfg, prepare_run_dir(cfg, tmp_path / "runs", "t")


# -- the SDE and the objective, by hand -----------------------------------------------------------


def test_step_log_prob_is_the_gaussian_density():
    g = torch.Generator().manual_seed(0)
    x, v, x_next = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))
    t, t_next, a = 0.6, 0.35, 0.7
    sigma = sde_sigma(t, a, t_cap=0.9)
    assert sigma == pytest.approx(0.7 * math.sqrt(0.6 / 0.4))
    mean, std = sde_step(x, v, t, t_next, sigma)
    hand_mean = x * (1 + sigma**2 / (2 * t) * (t_next - t)) + v * (1 + sigma**2 * (1 - t) / (2 * t)) * (t_next - t)
    assert torch.allclose(mean, hand_mean, atol=1e-6)
    assert std == pytest.approx(sigma * math.sqrt(0.25))
    hand = torch.distributions.Normal(hand_mean, std).log_prob(x_next).mean(dim=(1, 2, 3))
    assert torch.allclose(gaussian_log_prob(x_next, mean, std), hand, atol=1e-5)
    # no noise: the Euler ODE step
    euler, s0 = sde_step(x, v, t, t_next, 0.0)
    assert s0 == 0 and torch.allclose(euler, x + (t_next - t) * v)
    # at t = 1 the denominator 1 - t is replaced by 1 - t_cap
    assert sde_sigma(1.0, a, t_cap=0.9) == pytest.approx(0.7 * math.sqrt(1 / 0.1))


def test_sde_keeps_the_flow_marginals():
    """With the exact velocity of Gaussian data, the SDE sampler ends at the data distribution."""
    m0, s0 = 0.7, 0.3

    def velocity(x, t):  # E[eps - x0 | x_t] for x_t = (1 - t) x0 + t eps, x0 ~ N(m0, s0^2)
        var = (1 - t) ** 2 * s0**2 + t**2
        centred = x - (1 - t) * m0
        return t / var * centred - (m0 + (1 - t) * s0**2 / var * centred)

    g = torch.Generator().manual_seed(0)
    ts = [1 - k / 100 for k in range(100)] + [0.0]
    x = torch.randn(200_000, 1, generator=g)
    for k in range(100):
        mean, std = sde_step(x, velocity(x, ts[k]), ts[k], ts[k + 1], sde_sigma(ts[k], 0.7, ts[1]))
        x = mean + std * torch.randn(x.shape, generator=g)
    assert abs(x.mean() - m0) < 0.02 and abs(x.std() - s0) < 0.03


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], [0.0, float("nan"), 1.0, 1.0]])
    adv = group_advantages(r, eps=1e-4, clip=5.0)
    std = math.sqrt(1.25)
    assert torch.allclose(adv[0], torch.tensor([-1.5, -0.5, 0.5, 1.5]) / (std + 1e-4))
    assert torch.equal(adv[1], torch.zeros(4))  # no spread, no signal
    m, s = 2 / 3, math.sqrt(((0 - 2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 3)  # the NaN is left out
    assert torch.allclose(adv[2], torch.tensor([-m / (s + 1e-4), 0.0, (1 - m) / (s + 1e-4), (1 - m) / (s + 1e-4)]))
    clipped = group_advantages(torch.tensor([[0.0, 0.0, 0.0, 1.0]]), clip=1.5)
    assert torch.allclose(clipped, torch.tensor([[-0.25 / (math.sqrt(0.1875) + 1e-4)] * 3 + [1.5]]))


def test_ratio_clipping():
    ratio = torch.tensor([0.5, 1.0, 1.5, 0.5, 1.5], requires_grad=True)
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0])
    loss = clipped_surrogate(ratio, adv, 0.2)
    assert torch.allclose(loss, torch.tensor([-0.5, -1.0, -1.2, 0.8, 1.5]))
    loss.sum().backward()
    # a good sample's ratio above 1 + eps and a bad one's below 1 - eps get no more push
    assert torch.equal(ratio.grad, torch.tensor([-1.0, -1.0, 0.0, 0.0, 1.0]))


def test_transition_kl_is_the_scaled_mean_squared_gap():
    a, b = torch.zeros(1, 2, 2), torch.full((1, 2, 2), 0.3)
    assert transition_kl(a, b, 0.5).item() == pytest.approx(0.09 / (2 * 0.25))


# -- the method -----------------------------------------------------------------------------------


def test_kl_is_zero_at_init_and_grows(paths, tmp_path):
    cfg, rd = make(paths, tmp_path, {**FAST, "reward": "test_redness", "kl_beta": 0.04, "lr": 3e-2, "minibatches": 1})
    m = FlowGRPO(cfg, rd, torch.device("cpu"))
    assert m.critic is None  # a reward without a VLM builds none
    kls = [m.train_step(s)["kl"] for s in range(4)]
    assert kls[0] == 0.0  # the adapter starts at zero: the policy is the reference
    assert 0 < kls[1] < kls[3], kls


def test_reward_rises(paths, tmp_path):
    cfg, rd = make(paths, tmp_path, {**FAST, "group_size": 8, "reward": "test_redness", "kl_beta": 0.0, "lr": 3e-2,
                                     "minibatches": 1, "guidance": 1.0}, seed=1)
    m = FlowGRPO(cfg, rd, torch.device("cpu"))
    recs = m.data.records[:8]
    images = torch.stack([m.data.images(r.image) for r in recs])

    def editor_reward():
        return float(redness(m.editor().edit_tensor(images, [r.instruction for r in recs]), None, None).values.mean())

    before = editor_reward()
    rewards = [m.train_step(s)["reward"] for s in range(10)]
    after = editor_reward()
    assert after > before + 0.02, (before, after)
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.02, rewards


def test_yes_no_reward_is_the_mean_p_correct(paths):
    from harness.models.llava import LlavaCriticConfig, load_llava_critic

    critic = load_llava_critic(LlavaCriticConfig(path=str(paths["llava"])))
    from harness.data.sampling import InstructionData

    data = InstructionData(paths["instructions"], image_size=32)
    recs = [data.by_type["remove"][0], data.by_type["color"][0], data.by_type["customization"][0]]
    refs = torch.stack([data.images(r.image) for r in recs])
    edited = refs.flip(-1)
    got = R.YesNoReward(critic, batch=2)(edited, refs, recs)
    for b, r in enumerate(recs):
        ps = []
        for q in questions_for(r.edit_type, r.instruction, r.object):
            yn = critic.yes_no_logits(critic.next_token_logits([q.text], edited[b:b + 1], refs[b:b + 1],
                                                               ref_mask=[q.two_images]))[0]
            ps.append(torch.sigmoid(yn[0] - yn[1] if q.answer == "Yes" else yn[1] - yn[0]).item())
        assert got.values[b].item() == pytest.approx(sum(ps) / len(ps), abs=1e-5)
    assert R.resolve_auto(critic, refs[:2], [r.instruction for r in recs[:2]]) == "edit"  # it writes no scores
    edit_only = R.build_reward("edit", critic, FlowGRPOConfig())(edited, refs, recs)
    for b, r in enumerate(recs):
        q = questions_for(r.edit_type, r.instruction, r.object)[0]
        assert q.kind == "edit"
        yn = critic.yes_no_logits(critic.next_token_logits([q.text], edited[b:b + 1], refs[b:b + 1],
                                                           ref_mask=[q.two_images]))[0]
        p = torch.sigmoid(yn[0] - yn[1] if q.answer == "Yes" else yn[1] - yn[0]).item()
        assert edit_only.values[b].item() == pytest.approx(p, abs=1e-5)


def test_the_default_reward_pays_the_exact_edit_more_than_an_unchanged_copy():
    """On the built-in world, with the shipped large critic: App. F's reward rates whether the edit was
    carried out, so the exact target must earn more than handing back the input; the old default (edit
    and identity questions averaged) pays the copy for its identity answer."""
    import numpy as np

    from harness.models.llava import LlavaCriticConfig, load_llava_critic
    from harness.toyworld import assets
    from harness.toyworld.edits import sample_edit, supported_edit_types
    from harness.data.sampling import to_tensor
    from harness.toyworld.render import render_pil
    from harness.toyworld.scenes import WorldConfig

    world = WorldConfig()
    folder = assets.locate(assets.critic_name("large"), assets.critic_recipe("large"))
    critic = load_llava_critic(LlavaCriticConfig(path=str(folder)))
    types = [t for t in supported_edit_types(world) if t != "customization"]
    edits = [sample_edit(np.random.default_rng([31, i]), world, types[i % len(types)], split="test") for i in range(40)]
    refs = torch.stack([to_tensor(render_pil(e.source, world), world.size) for e in edits])
    targets = torch.stack([to_tensor(render_pil(e.target, world), world.size) for e in edits])
    reward = R.build_reward(FlowGRPOConfig().reward if FlowGRPOConfig().reward != "auto"
                            else R.resolve_auto(critic, refs[:2], [e.instruction for e in edits[:2]]), critic, FlowGRPOConfig())
    on_target = reward(targets, refs, edits).values
    on_copy = reward(refs, refs, edits).values
    assert on_target.mean() > on_copy.mean() + 0.4, (on_target.mean(), on_copy.mean())
    assert (on_target > on_copy).float().mean() > 0.8


class ScriptedCritic:
    def __init__(self, replies):
        self.replies, self.prompts = list(replies), []

    def generate(self, images, prompt, max_new_tokens=64):
        self.prompts.append(prompt)
        return self.replies.pop(0)


def test_score_reward_parses_retries_and_counts_failures():
    assert R.parse_score("score : 7,\nreasoning : the hat is red") == 7
    assert R.parse_score("**Score**: 3") == 3  # markdown emphasis is tolerated
    assert R.parse_score("Score: 3 (reasoning: score: 9 would be perfect)") == 3  # the first one counts
    assert R.parse_score(" 5 ") == 5
    for bad in ("", "looks good", "score : 10"):
        with pytest.raises(R.ReplyParseError):
            R.parse_score(bad)
    critic = ScriptedCritic(["score : 9, reasoning : done", "it is fine", "score: 3", "no idea", "still no idea"])
    recs = [type("Rec", (), {"instruction": f"edit {i}"})() for i in range(3)]
    img = torch.zeros(3, 3, 8, 8)
    out = R.ScoreReward(critic, retries=1)(img, img, recs)
    assert out.values[:2].tolist() == pytest.approx([1.0, 3 / 9]) and math.isnan(out.values[2])
    assert out.stats == {"reward_retries": 2.0, "reward_unparsed": 1.0}
    assert "Editing instruction: edit 1" in critic.prompts[2] and critic.prompts[2].startswith("The first image")
    assert R.resolve_auto(ScriptedCritic(["score : 4", "score : 2"]), img[:2], ["a", "b"]) == "score"
    # a sample without a reward is left out of its group and gets advantage 0
    adv = group_advantages(torch.cat([out.values, torch.tensor([0.5])]).view(1, 4))
    assert adv[0, 2] == 0 and adv[0, 0] > 0


def test_lora_settings_are_the_methods(paths, tmp_path):
    cfg, rd = make(paths, tmp_path, {**FAST, "reward": "test_redness"})
    cfg.model.backbone.lora_rank = 16
    with pytest.raises(ValueError, match="method.lora_rank"):
        FlowGRPO(cfg, rd, torch.device("cpu"))
    with pytest.raises(C.ConfigError, match="known: "):
        make(paths, tmp_path, {"reward": "nonsense"})
    cfg, rd = make(paths, tmp_path, {**FAST, "reward": "test_redness"}, name="sft_flow_grpo")
    with pytest.raises(ValueError, match="train.init_from"):
        METHODS.get("sft_flow_grpo").build(cfg, rd, torch.device("cpu"))


def test_resume_equals_uninterrupted_and_overlap_changes_nothing(paths, tmp_path, monkeypatch):
    method = {**FAST, "reward": "yes_no", "rollout_batch": 2}  # two reward jobs per group
    sections = {"train": {"steps": 4, "ckpt_every": 2, "ema_decay": 0.9}, "eval": {"benchmarks": []}}
    _, rd = make(paths, tmp_path / "a", method, **sections)
    run(rd.path)
    _, rd2 = make(paths, tmp_path / "b", method, **sections)
    real_step = FlowGRPO.train_step

    def crash_at_3(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(FlowGRPO, "train_step", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        run(rd2.path)
    assert rd2.latest_checkpoint()[0] == 2
    monkeypatch.setattr(FlowGRPO, "train_step", real_step)
    run(rd2.path)
    _, rd3 = make(paths, tmp_path / "c", {**method, "reward_overlap": False}, **sections)
    run(rd3.path)
    a = load_file(str(rd.model_dir / "denoiser.safetensors"))
    for other in (rd2, rd3):
        b = load_file(str(other.model_dir / "denoiser.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        ca, cb = (RunDir.load_checkpoint(r.latest_checkpoint()[1])["state"] for r in (rd, other))
        assert all(torch.equal(ca["G"][k], cb["G"][k]) for k in ca["G"]) and ca["reward_mode"] == "yes_no"
    metrics = [[(r["reward"], r["policy_loss"]) for r in x.read_metrics()] for x in (rd, rd2, rd3)]
    assert metrics[0] == metrics[1] == metrics[2] and len(metrics[0]) == 4


def test_init_from_sft_and_edit_from_the_command_line(paths, tmp_path):
    from harness import edit

    sft_data = tiny_world.run_config(paths, {"name": "sft", "warmup_steps": 0}, train={"steps": 2, "lr": 1e-2},
                                     eval={"benchmarks": []})
    sft_data["model"]["critic"] = None
    sft_cfg = C.load_run_config(None, data=sft_data)
    sft = prepare_run_dir(sft_cfg, tmp_path / "runs", "sft")
    run(sft.path)
    sft_weights = load_file(str(sft.model_dir / "denoiser.safetensors"))

    cfg, rd = make(paths, tmp_path, {**FAST, "reward": "test_redness", "lr": 3e-2, "minibatches": 1},
                   name="sft_flow_grpo", train={"steps": 2, "init_from": str(sft.path)}, eval={"benchmarks": []})
    m = FlowGRPO(cfg, rd, torch.device("cpu"))
    base = {k.replace(".base_layer.", "."): p for k, p in m.G.named_parameters() if "lora_" not in k}
    assert base.keys() == sft_weights.keys() and all(torch.equal(base[k], sft_weights[k]) for k in base)
    sft_editor = common.load_editor(sft.model_dir)
    x = torch.randn(2, 3, 32, 32)
    text = m.backbone.encode_text(["make the red circle blue"] * 2)
    with torch.no_grad(), m.G.adapter_disabled():  # the reference policy is the SFT model
        assert torch.equal(m.G(x, 0.5, text, x), sft_editor.denoiser(x, 0.5, text, x))

    run(rd.path)
    src = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (255, 255, 255)).save(src)
    out = tmp_path / "out.png"
    assert edit.main(["--run", str(rd.path), "--image", str(src), "--instruction", "make the red circle blue",
                      "-o", str(out)]) == 0
    assert Image.open(out).size == (32, 32)
    loaded = edit.load_editor(rd.path, device="cpu")
    assert loaded.sampling == common.Sampling("euler", 28, 4.5) and not loaded.denoiser.has_adapter
    trained = FlowGRPO(cfg, rd, torch.device("cpu"))  # the run's final LoRA on the SFT base
    trained.load_state_dict(RunDir.load_checkpoint(rd.latest_checkpoint()[1])["state"])
    images = torch.stack([trained.data.images(r.image) for r in trained.data.records[:2]])
    ins = [r.instruction for r in trained.data.records[:2]]
    ours, theirs = trained.editor().edit_tensor(images, ins), loaded.edit_tensor(images, ins)
    assert (ours - theirs).abs().max() < 1e-4
    assert (ours - sft_editor.edit_tensor(images, ins)).abs().max() > 1e-3  # the LoRA did change the model
    assert np.asarray(Image.open(out)).shape == (32, 32, 3)
