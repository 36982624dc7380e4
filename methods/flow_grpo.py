"""Flow-GRPO (Liu et al., 2025), the RL baseline of the paper's Table 4 (Sec. 5.3, App. F): a LoRA on
the editing model, trained with group-relative policy optimisation on a VLM reward (methods/reward.py).

Each step draws `data.batch_size` (reference, instruction) pairs and samples a group of `group_size`
edits of each with an SDE sampler whose per-step Gaussian transitions have tractable log-probabilities:

    x_{t'} ~ N(mu, s^2),  mu = x_t + [v + sigma_t^2 / (2t) (x_t + (1 - t) v)] (t' - t),  s = sigma_t sqrt(t - t'),
    sigma_t = a sqrt(t / (1 - t))   (a = noise_level; at t = 1 the denominator uses the next grid time),

(the reverse-time SDE with the same marginals as the flow ODE; a = 0 gives the Euler step), with v the
classifier-free-guided velocity. Log-probabilities are averaged over latent elements. Rewards become
advantages per group, A = clip((r - mean_group) / (std_group + 1e-4)); the loss is PPO's clipped
surrogate on the ratio of new to rollout-time transition probabilities plus kl_beta times the KL of
each transition to the reference policy, the same denoiser with its LoRA adapter disabled (the SFT
model when `train.init_from` names an SFT run: its weights are loaded into the base before the adapter
is added). The KL is Flow-GRPO's per-element ||mu - mu_ref||^2 / (2 sigma_t^2), i.e. the Gaussian
transition KL times the step length |t' - t|, so kl_beta keeps its meaning across step counts.

Paper (App. F): 16 samples per prompt, 12 denoising steps in training and 28 at inference, LoRA rank 32 /
alpha 64, lr 1e-4, reward = the VLM's 0-9 edit score / 9. From Flow-GRPO's public SD3 configs (not in
the paper): noise level 0.7, CFG 4.5 in rollouts and training, clip range 1e-4, advantage clip 5,
KL weight 0.04, training on the first 99% of the steps, two optimizer steps per rollout batch.

Determinism: batches, initial noise, SDE noise and minibatch shuffles are drawn from generators seeded
by (seed, step), and rewards are pure functions of the rollout images, so a resumed run equals an
uninterrupted one. With `reward_overlap` (default) the rewards of a group are computed in a
background thread while the next group is sampled; that only changes when they are computed, not
their value (tested bitwise on CPU). On CUDA the thread shares the default stream: the overlap hides
the reward's CPU-side work (generation loop, tokenisation), its GPU kernels still run in order.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from harness.config import nohash
from harness.data.sampling import InstructionData, step_generator
from harness.models.base import TextEmbedding
from harness.models.sampler import timesteps
from harness.registry import BACKBONES, METHODS, Spec
from methods import common
from methods.reward import Rewards, build_reward, resolve_auto, reward_names

AUTO_PROBES = 4  # references the 'auto' reward probes the critic with


@dataclass
class FlowGRPOConfig:
    """Defaults are the paper's (App. F) or Flow-GRPO's public SD3 settings (module docstring)."""

    name: str = "flow_grpo"
    group_size: int = 16  # samples per (reference, instruction); data.batch_size pairs per step
    sample_steps: int = 12  # SDE denoising steps of the rollouts (inference: eval.steps, default 28)
    noise_level: float = 0.7  # a in sigma_t = a sqrt(t / (1 - t))
    guidance: float = 4.5  # CFG on the instruction, in rollouts, training and the editor
    timestep_fraction: float = 0.99  # train on the first max(1, int(sample_steps * fraction)) steps
    clip_range: float = 1e-4  # PPO: ratio clipped to [1 - clip_range, 1 + clip_range]
    adv_clip: float = 5.0  # advantages clipped to [-adv_clip, adv_clip]
    adv_eps: float = 1e-4  # A = (r - mean) / (std + adv_eps)
    kl_beta: float = 0.04  # weight of the KL to the reference policy (0 = no reference passes)
    minibatches: int = 2  # optimizer steps per rollout batch (its samples shuffled and split)
    inner_epochs: int = 1  # passes over the rollout batch
    train_batch: int = 0  # samples per forward/backward within a minibatch; 0 = the whole minibatch
    rollout_batch: int = 0  # samples per rollout forward (and per reward job); 0 = one group
    lora_rank: int = 32  # the LoRA is this method's: backbone.lora_rank must be 0 or equal to it
    lora_alpha: float = 64.0
    lr: float = 1e-4  # learning rate of the LoRA; 0 = train.lr
    # score: the critic writes a 0-9 score (App. F); edit: p(correct) of the App. E edit question (Yes/No
    # critics); yes_no: p(correct) of the edit and identity questions; auto: score if the critic writes
    # readable scores, else edit; or a reward registered with methods.reward.register_reward.
    reward: str = "auto"
    identity_question: bool = True  # yes_no: also ask the identity-preservation question
    score_retries: int = 1  # score: re-asks with a format reminder before a sample gets no reward
    score_max_tokens: int = 24  # score: the reply is 'score : N, reasoning : ...', N comes first
    reward_overlap: bool = nohash(True, help="compute rewards in a background thread while sampling continues")

    def validate(self) -> None:
        positive = ("group_size", "sample_steps", "minibatches", "inner_epochs", "lora_rank")
        for k in positive:
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (advantages are relative to the group), got {self.group_size}")
        if self.noise_level <= 0:
            raise ValueError(f"noise_level must be > 0 (the SDE's log-probabilities need noise), got {self.noise_level}")
        if not 0 < self.timestep_fraction <= 1:
            raise ValueError(f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        if self.clip_range <= 0 or self.adv_clip <= 0 or self.adv_eps <= 0:
            raise ValueError("clip_range, adv_clip and adv_eps must be > 0")
        if self.kl_beta < 0 or self.lr < 0 or self.lora_alpha <= 0:
            raise ValueError("kl_beta and lr must be >= 0 and lora_alpha > 0")
        if self.train_batch < 0 or self.rollout_batch < 0:
            raise ValueError("train_batch and rollout_batch must be >= 0 (0 = automatic)")
        from harness.config import check_range

        check_range(self, "guidance", ge=0)
        check_range(self, "score_retries", ge=0)
        check_range(self, "score_max_tokens", ge=1)
        if self.reward not in reward_names():
            raise ValueError(f"reward {self.reward!r} is unknown; known: {', '.join(reward_names())}")


# ---------------------------------------------------------------------------------------------
# The SDE and the GRPO objective


def sde_sigma(t: float, noise_level: float, t_cap: float) -> float:
    """sigma_t = a sqrt(t / (1 - t)); at t = 1 the denominator uses t_cap (the next grid time)."""
    return noise_level * math.sqrt(t / (1 - (t_cap if t >= 1 else t)))


def sde_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float, sigma: float) -> tuple[torch.Tensor, float]:
    """Mean and std of the Gaussian transition x_t -> x_{t_next} (t_next < t), in float32.
    sigma = 0 gives the Euler ODE step x + (t_next - t) v with std 0."""
    x, v = x.float(), v.float()
    dt = t_next - t
    mean = x + (v + sigma**2 / (2 * t) * (x + (1 - t) * v)) * dt
    return mean, sigma * math.sqrt(-dt)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; mean, std^2) per element, averaged over all but the batch dimension: (B,)."""
    lp = -((x.detach().float() - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.mean(dim=tuple(range(1, lp.ndim)))


def transition_kl(mean: torch.Tensor, mean_ref: torch.Tensor, sigma: float) -> torch.Tensor:
    """Flow-GRPO's KL of a transition to the reference's: mean((mu - mu_ref)^2) / (2 sigma_t^2): (B,)."""
    d = (mean.float() - mean_ref.float()) ** 2
    return d.mean(dim=tuple(range(1, d.ndim))) / (2 * sigma**2)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, clip: float = 5.0) -> torch.Tensor:
    """(P, G) rewards -> (r - mean_group) / (std_group + eps), clipped to [-clip, clip]. NaN rewards (no
    reward read) are left out of their group's mean and std (population std) and get advantage 0."""
    valid = ~torch.isnan(rewards)
    n = valid.sum(1, keepdim=True).clamp_min(1)
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    mean = r.sum(1, keepdim=True) / n
    var = torch.where(valid, (r - mean) ** 2, torch.zeros_like(r)).sum(1, keepdim=True) / n
    adv = torch.where(valid, (r - mean) / (var.sqrt() + eps), torch.zeros_like(r))
    return adv.clamp(-clip, clip)


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, clip_range: float) -> torch.Tensor:
    """PPO's per-sample loss max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps))."""
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range))


def _done(fn: Callable[..., Any], *args: Any) -> Future:
    f: Future = Future()
    try:
        f.set_result(fn(*args))
    except Exception as e:  # noqa: BLE001  (re-raised by result(), as from the thread)
        f.set_exception(e)
    return f


# ---------------------------------------------------------------------------------------------
# The method


class FlowGRPO:
    def __init__(self, cfg: Any, rd: Any, device: torch.device):
        self.cfg, self.m, self.device = cfg, cfg.method, device
        m = self.m
        self.bcfg = self._lora_backbone_cfg(cfg.model.backbone, m)
        self.backbone = BACKBONES.get(self.bcfg.name).build(self.bcfg, device)
        if cfg.train.init_from:  # into the base, before the adapter: the reference policy is that model
            common.load_init_base(self.backbone, cfg.train.init_from, rd.path)
        self.G = self.backbone.make_denoiser(trainable=True, lora=True)
        self.data = InstructionData(
            common.resolve_data_path(cfg.data.path, cfg, paired=False), image_size=self.backbone.image_size,
            fraction=cfg.data.fraction, seed=cfg.seed, edit_types=cfg.data.edit_types, type_probs=cfg.data.type_probs)
        n = cfg.data.batch_size * m.group_size
        if n < m.minibatches:
            raise ValueError(f"method.minibatches={m.minibatches} exceeds the {n} samples of a step "
                             f"(data.batch_size x method.group_size)")
        if cfg.train.grad_accum != 1:
            raise ValueError(f"train.grad_accum={cfg.train.grad_accum}: Flow-GRPO splits its updates itself; set "
                             f"method.train_batch (samples per forward and backward pass) and leave train.grad_accum at 1")
        self.critic = self._critic(cfg, device)
        self.reward_mode = m.reward if m.reward != "auto" else self._probe_reward()
        self.reward_fn = build_reward(self.reward_mode, self.critic, m)
        self.params = [p for p in self.G.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=m.lr or cfg.train.lr, betas=tuple(cfg.train.betas),
                                    weight_decay=cfg.train.weight_decay)
        self.ema = common.EMA(self.G, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.ts = timesteps(m.sample_steps, self.backbone.shift) + [0.0]
        self.n_train = max(1, int(m.sample_steps * m.timestep_fraction))
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.seed = cfg.seed * 1000 + rank
        self.uncond: TextEmbedding | None = None
        self._pool: ThreadPoolExecutor | None = None

    @staticmethod
    def _lora_backbone_cfg(bcfg: Any, m: FlowGRPOConfig) -> Any:
        """The backbone config with the method's LoRA (rank 32, alpha 64 by default)."""
        if not hasattr(bcfg, "lora_rank"):
            raise ValueError(f"flow_grpo trains a LoRA adapter; backbone {bcfg.name!r} has no lora_rank setting")
        if bcfg.lora_rank and (bcfg.lora_rank, bcfg.lora_alpha or bcfg.lora_rank) != (m.lora_rank, m.lora_alpha):
            raise ValueError(
                f"model.backbone.lora_rank={bcfg.lora_rank}, lora_alpha={bcfg.lora_alpha} disagree with "
                f"method.lora_rank={m.lora_rank}, method.lora_alpha={m.lora_alpha}: flow_grpo's LoRA is set by "
                f"method.lora_rank / method.lora_alpha (leave the backbone's at 0)")
        return replace(bcfg, lora_rank=m.lora_rank, lora_alpha=m.lora_alpha)

    def _critic(self, cfg: Any, device: torch.device) -> Any:
        from methods.reward import REWARDS

        if self.m.reward == "auto" or REWARDS[self.m.reward].needs_critic:
            return common.build_critic(cfg, device)
        return None

    def _probe_reward(self) -> str:
        recs = self.data.records[:AUTO_PROBES]
        refs = torch.stack([self.data.images(r.image) for r in recs])
        mode = resolve_auto(self.critic, refs, [r.instruction for r in recs], max_new_tokens=self.m.score_max_tokens)
        print(f"[flow_grpo] reward 'auto' -> {mode!r} (critic {getattr(self.critic, 'name', '')})", file=sys.stderr)
        return mode

    # -- helpers --------------------------------------------------------------------------------
    def _gen(self, step: int, stream: str) -> torch.Generator:
        return step_generator(self.seed, step, stream)

    def _randn(self, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
        return torch.randn(shape, generator=g).to(self.device)

    def sigma(self, k: int) -> float:
        return sde_sigma(self.ts[k], self.m.noise_level, self.ts[1])

    def velocity(self, x: torch.Tensor, t: float, text: TextEmbedding, ref: torch.Tensor) -> torch.Tensor:
        """The policy's velocity with CFG on the instruction (the reference conditions both branches)."""
        g = self.m.guidance
        if g == 1.0:
            return self.G(x, t, text, ref).float()
        if self.uncond is None:
            with torch.no_grad():
                self.uncond = self.backbone.encode_text([""])
        n = x.shape[0]
        u = TextEmbedding(self.uncond.hidden.expand(n, -1, -1), self.uncond.pooled.expand(n, -1))
        v_c, v_u = self.G(torch.cat([x, x]), t, TextEmbedding.cat([text, u]), torch.cat([ref, ref])).float().chunk(2)
        return v_u + g * (v_c - v_u)

    @torch.no_grad()
    def rollout(self, ref: torch.Tensor, text: TextEmbedding, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """SDE sampling from pure noise: latents (N, T+1, ...) at the grid times and the log-probability
        of each transition (N, T)."""
        x = self._randn(ref.shape, g)
        lats, lps = [x], []
        for k in range(self.m.sample_steps):
            t, t_next = self.ts[k], self.ts[k + 1]
            mean, std = sde_step(x, self.velocity(x, t, text, ref), t, t_next, self.sigma(k))
            x = mean + std * self._randn(ref.shape, g)
            lps.append(gaussian_log_prob(x, mean, std))
            lats.append(x)
        return torch.stack(lats, 1), torch.stack(lps, 1)

    def _reward_job(self, x0: torch.Tensor, refs: torch.Tensor, records: list) -> Rewards:
        with torch.no_grad():
            return self.reward_fn(self.backbone.decode(x0).clamp(-1, 1), refs, records)

    def _submit(self, *args: Any) -> Future:
        if not self.m.reward_overlap:
            return _done(self._reward_job, *args)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flow_grpo-reward")
        return self._pool.submit(self._reward_job, *args)

    # -- Method protocol ------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        m = self.m
        batch = self.data.sample(self.cfg.data.batch_size, self._gen(step, "data"))
        P, G = len(batch.records), m.group_size
        N = P * G
        records = [r for r in batch.records for _ in range(G)]
        ref_img = batch.images.repeat_interleave(G, 0)
        with torch.no_grad():
            ref = self.backbone.encode_image(batch.images.to(self.device)).repeat_interleave(G, 0)
            text = self.backbone.encode_text([r.instruction for r in records])

        # rollouts, each chunk's rewards computed while the next chunk is sampled
        rb = m.rollout_batch or G
        g = self._gen(step, "rollout")
        lats, lps, jobs = [], [], []
        for s in range(0, N, rb):
            sl = slice(s, min(N, s + rb))
            lat, lp = self.rollout(ref[sl], text[sl], g)
            lats.append(lat)
            lps.append(lp)
            jobs.append(self._submit(lat[:, -1], ref_img[sl], records[sl]))
        lat, old_lp = torch.cat(lats), torch.cat(lps)
        results = [j.result() for j in jobs]
        rewards = torch.cat([r.values for r in results])
        if torch.isnan(rewards).all():
            raise RuntimeError(f"step {step}: the critic gave no readable reward for any of the {N} edits "
                               f"(reward {self.reward_mode!r}); use method.reward=edit or a critic that follows the format")
        adv = group_advantages(rewards.view(P, G), m.adv_eps, m.adv_clip).view(N).to(self.device)

        group_std = torch.stack([r[~torch.isnan(r)].std(unbiased=False) if (~torch.isnan(r)).any() else torch.tensor(0.0)
                                 for r in rewards.view(P, G)])
        out = {
            "reward": float(torch.nanmean(rewards)),
            "reward_group_std": float(group_std.mean()),
            "zero_std_groups": float((group_std == 0).float().mean()),
            "adv_abs": float(adv.abs().mean()),
            "reward_is_score": float(self.reward_mode == "score"),
        }
        for k in sorted({k for r in results for k in r.stats}):
            out[k] = sum(r.stats.get(k, 0.0) for r in results) / N
        out.update(self._update(step, lat, old_lp, adv, text, ref))
        out["lr"] = self.opt.param_groups[0]["lr"]
        return out

    def _update(self, step: int, lat: torch.Tensor, old_lp: torch.Tensor, adv: torch.Tensor, text: TextEmbedding,
                ref: torch.Tensor) -> dict[str, float]:
        """GRPO updates on one rollout batch: `minibatches` optimizer steps per inner epoch, gradients
        accumulated over the training timesteps and micro-batches."""
        m = self.m
        N = lat.shape[0]
        sums = {"policy_loss": 0.0, "kl": 0.0, "approx_kl": 0.0, "clipfrac": 0.0, "ratio": 0.0}
        terms, grad_norms = 0, []
        for epoch in range(m.inner_epochs):
            perm = torch.randperm(N, generator=self._gen(step, f"shuffle{epoch}"))
            for mb in torch.tensor_split(perm, m.minibatches):
                self.opt.zero_grad(set_to_none=True)
                micro = torch.split(mb, m.train_batch) if m.train_batch else (mb,)
                for j in range(self.n_train):
                    for idx in micro:
                        st = self._loss(lat, old_lp, adv, text, ref, idx.tolist(), j, len(mb) * self.n_train)
                        for k, v in st.items():
                            sums[k] += v
                        terms += len(idx)
                common.average_gradients(self.params)
                clip = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else float("inf")
                grad_norms.append(float(torch.nn.utils.clip_grad_norm_(self.params, clip)))
                self.opt.step()
                if self.ema is not None:
                    self.ema.update(self.G)
        out = {k: v / terms for k, v in sums.items()}
        if m.kl_beta == 0:
            del out["kl"]
        out["grad_norm"] = sum(grad_norms) / len(grad_norms)
        return out

    def _loss(self, lat: torch.Tensor, old_lp: torch.Tensor, adv: torch.Tensor, text: TextEmbedding,
              ref: torch.Tensor, idx: list[int], j: int, norm: int) -> dict[str, float]:
        """Backward of one (micro-batch, timestep) term; returns the terms' sums over its samples."""
        m = self.m
        t, t_next, sigma = self.ts[j], self.ts[j + 1], self.sigma(j)
        x, x_next, tx, r = lat[idx, j], lat[idx, j + 1], text[idx], ref[idx]
        mean, std = sde_step(x, self.velocity(x, t, tx, r), t, t_next, sigma)
        lp = gaussian_log_prob(x_next, mean, std)
        ratio = torch.exp(lp - old_lp[idx, j])
        a = adv[idx]
        policy = clipped_surrogate(ratio, a, m.clip_range)
        loss = policy
        kl = torch.zeros_like(policy)
        if m.kl_beta > 0:
            with torch.no_grad(), self.G.adapter_disabled():
                mean_ref, _ = sde_step(x, self.velocity(x, t, tx, r), t, t_next, sigma)
            kl = transition_kl(mean, mean_ref, sigma)
            loss = loss + m.kl_beta * kl
        (loss.sum() / norm).backward()
        d = (lp - old_lp[idx, j]).detach()
        return {"policy_loss": float(policy.detach().sum()), "kl": float(kl.detach().sum()),
                "approx_kl": float((0.5 * d**2).sum()), "ratio": float(ratio.detach().sum()),
                "clipfrac": float(((ratio.detach() - 1).abs() > m.clip_range).float().sum())}

    def state_dict(self) -> dict[str, Any]:
        st: dict[str, Any] = {"G": common.trainable_state(self.G), "opt": common.optimizer_state(self.G, self.opt),
                              "rng": common.rng_state(), "reward_mode": self.reward_mode}
        if self.ema is not None:
            st["ema"] = self.ema.state_dict()
        return st

    def load_state_dict(self, st: dict[str, Any]) -> None:
        common.load_trainable_state(self.G, st["G"])
        common.load_optimizer_state(self.G, self.opt, st["opt"])
        if self.ema is not None:
            self.ema.load_state_dict(st["ema"])
        if st.get("reward_mode", self.reward_mode) != self.reward_mode:  # 'auto' chose otherwise on the first run
            self.reward_mode = st["reward_mode"]
            self.reward_fn = build_reward(self.reward_mode, self.critic, self.m)
        common.set_rng_state(st["rng"])

    # -- the editor -----------------------------------------------------------------------------
    def _sampling(self) -> common.Sampling:
        return common.eval_sampling(self.cfg, common.Sampling("euler", 28, self.m.guidance))

    def _final_denoiser(self) -> torch.nn.Module:
        if self.ema is None:
            return self.G
        den = self.backbone.make_denoiser(trainable=True, lora=True)  # its base holds any init_from weights
        common.load_trainable_state(den, self.ema.state_dict())
        return den

    def editor(self) -> common.SamplingEditor:
        return common.SamplingEditor(self.backbone, self._final_denoiser(), self._sampling())

    def export(self, folder: str) -> None:
        """The LoRA merged into its base (full weights; the base includes any init_from model)."""
        common.export_editor(folder, common.merged_weights(self._final_denoiser()),
                             replace(self.cfg.model.backbone, lora_rank=0), self._sampling(), self.m.name)

    def save_samples(self, path: Path, n_per_type: int = 1) -> None:
        picks = []
        for t in self.data.types:
            picks += self.data.by_type[t][:n_per_type]
        images = torch.stack([self.data.images(r.image) for r in picks])
        out = self.editor().edit_tensor(images, [r.instruction for r in picks], seed=0)
        common.sample_grid([[images[i], out[i].cpu()] for i in range(len(picks))]).save(path)


def build(cfg: Any, rd: Any, device: torch.device) -> FlowGRPO:
    return FlowGRPO(cfg, rd, device)


def build_after_sft(cfg: Any, rd: Any, device: torch.device) -> FlowGRPO:
    from methods.sft import require_init_from

    require_init_from(cfg, "SFT + Flow-GRPO")
    return FlowGRPO(cfg, rd, device)


METHODS.register("flow_grpo", Spec(FlowGRPOConfig, build, help="Flow-GRPO with a VLM reward (App. F)"))
METHODS.register("sft_flow_grpo", Spec(FlowGRPOConfig, build_after_sft,
                                       help="Flow-GRPO started from an SFT run (train.init_from; Table 4 'SFT + RL')"))
