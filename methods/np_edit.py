"""NP-Edit (paper, Algorithm 1): a few-step editing model trained without paired data, from
VLM feedback (Eq. 4) and distribution matching to the text-to-image teacher (Eq. 5).

Variants are configurations of this one method: np_edit, dmd_only, vlm_only,
np_edit_no_identity, np_edit_ce, np_edit_lpips.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from harness.data.sampling import InstructionData, step_generator
from harness.models.sampler import renoise
from harness.profiling import Sections
from harness.registry import METHODS, Spec
from methods import common
from methods.dmd import dmd_gradient, dmd_loss, flow_loss, guided_velocity
from methods.questions import questions_for
from methods.vlm_loss import vlm_loss


SAMPLING = common.Sampling("few_step", 4, 1.0)  # the paper's 4-step editor


@dataclass
class NPEditConfig:
    """Defaults are the paper's (App. E.1) unless noted."""

    name: str = "np_edit"
    lambda_vlm: float = 0.01
    lambda_dmd: float = 0.5
    lambda_lpips: float = 0.0  # App. C: LPIPS between input and edited image
    lpips_net: Literal["alex", "vgg", "squeeze"] = "alex"
    # LPIPS needs torchvision's pretrained backbone weights; True allows a random backbone (smoke tests only).
    lpips_allow_random: bool = False
    n_aux: int = 10  # auxiliary (fake score) updates per generator update
    aux_lr: float = 0.0  # 0 = train.lr
    warmup_steps: int = 250  # identity warmup (Alg. 1, lines 3-10)
    # Text of the identity warmup: the reference caption c^y (paper), or also the 'do nothing'
    # instructions so a text encoder that never saw instructions learns them ('mixed').
    warmup_text: Literal["caption", "mixed"] = "caption"
    single_step_steps: int = 4000  # main iterations with the single step t = 1 before the 2-step unroll
    unroll_ts: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    # Teacher classifier-free guidance on c^x (not in the paper; method-notes: 3.5, 7.5 for some types).
    guidance: float = 3.5
    guidance_by_type: dict[str, float] = field(default_factory=dict)
    dmd_t_min: float = 0.02
    dmd_t_max: float = 0.98
    vlm_loss: Literal["bce", "ce"] = "bce"
    identity_question: bool = True
    # Weight of the identity-preservation question against the edit question (the paper weighs them
    # equally), and the iteration from which it is asked (0: from the start, as in the paper).
    identity_weight: float = field(default=1.0, metadata={"hash": "unless_default"})
    identity_start: int = field(default=0, metadata={"hash": "unless_default"})
    # With train.init_from (an editor that already edits, e.g. SFT + NP-Edit), skip the identity
    # warmup and the single-step phase: they exist to turn a text-to-image model into an identity
    # editor, and re-running them pulls a trained editor back toward copying its input.
    init_skips_phases: bool = field(default=True, metadata={"hash": "unless_default"})
    vlm_temperature: float = 1.0
    noop_prob: float = 0.01  # the 'do nothing' task with an L2 loss to the input
    noop_instructions: list[str] = field(default_factory=lambda: [
        "do nothing", "keep the image unchanged", "leave the image as it is"])

    def validate(self) -> None:
        if self.lambda_vlm < 0 or self.lambda_dmd < 0 or self.lambda_lpips < 0:
            raise ValueError("loss weights must be >= 0")
        if self.lambda_vlm == 0 and self.lambda_dmd == 0 and self.lambda_lpips == 0:
            raise ValueError("every loss weight is 0: nothing to train")
        if not all(0 < t < 1 for t in self.unroll_ts):
            raise ValueError(f"unroll_ts must lie in (0, 1), got {self.unroll_ts}")
        if not 0 <= self.dmd_t_min < self.dmd_t_max <= 1:
            raise ValueError(f"need 0 <= dmd_t_min < dmd_t_max <= 1, got {self.dmd_t_min}, {self.dmd_t_max}")
        if not 0 <= self.noop_prob <= 1:
            raise ValueError(f"noop_prob must be in [0, 1], got {self.noop_prob}")
        from harness.config import check_range

        check_range(self, "n_aux", ge=1 if self.lambda_dmd > 0 else 0, note="the fake score's updates per step of DMD")
        check_range(self, "aux_lr", ge=0, note="0 = train.lr")
        check_range(self, "warmup_steps", ge=0)
        check_range(self, "single_step_steps", ge=0)
        check_range(self, "guidance", ge=0)
        check_range(self, "guidance_by_type", ge=0)
        check_range(self, "vlm_temperature", gt=0)
        if not self.unroll_ts:
            raise ValueError("unroll_ts must hold at least one time in (0, 1)")
        check_range(self, "identity_weight", ge=0)
        check_range(self, "identity_start", ge=0)


class NPEdit:
    def __init__(self, cfg: Any, rd: Any, device: torch.device):
        self.cfg, self.m, self.device = cfg, cfg.method, device
        self.backbone = common.build_backbone(cfg, device)
        self.critic = common.build_critic(cfg, device) if self.m.lambda_vlm > 0 else None
        self.G = self.backbone.make_denoiser(trainable=True)
        self.warmup_steps, self.single_step_steps = self.m.warmup_steps, self.m.single_step_steps
        if cfg.train.init_from:
            common.load_init(self.G, cfg.train.init_from, rd.path)
            if self.m.init_skips_phases:
                self.warmup_steps = self.single_step_steps = 0
        self.use_dmd = self.m.lambda_dmd > 0
        self.teacher = self.backbone.make_denoiser(trainable=False) if self.use_dmd else None
        self.A = self.backbone.make_denoiser(trainable=True, lora=None) if self.use_dmd else None
        self.data = InstructionData(
            common.resolve_data_path(cfg.data.path, cfg, paired=False), image_size=self.backbone.image_size,
            fraction=cfg.data.fraction, seed=cfg.seed, edit_types=cfg.data.edit_types, type_probs=cfg.data.type_probs)
        betas = tuple(cfg.train.betas)
        self.g_params = [p for p in self.G.parameters() if p.requires_grad]
        self.opt_G = torch.optim.Adam(self.g_params, lr=cfg.train.lr, betas=betas, weight_decay=cfg.train.weight_decay)
        if self.A is not None:
            self.a_params = [p for p in self.A.parameters() if p.requires_grad]
            self.opt_A = torch.optim.Adam(self.a_params, lr=self.m.aux_lr or cfg.train.lr, betas=betas,
                                          weight_decay=cfg.train.weight_decay)
        self.ema = common.EMA(self.G, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.lpips = None
        if self.m.lambda_lpips > 0:
            from benchmarks.metrics.lpips import load_lpips

            self.lpips = load_lpips(self.m.lpips_net, allow_random=self.m.lpips_allow_random).to(device)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.seed = cfg.seed * 1000 + rank  # each rank draws its own batches and noise
        self.uncond = None
        self.prof = Sections()

    # -- helpers --------------------------------------------------------------------------------
    def _gen(self, step: int, stream: str) -> torch.Generator:
        return step_generator(self.seed, step, stream)

    def _randn(self, shape, g: torch.Generator) -> torch.Tensor:
        return torch.randn(shape, generator=g).to(self.device)

    def _batch(self, step: int, stream: str):
        return self.data.sample(self.cfg.data.batch_size, self._gen(step, f"data/{stream}"))

    def _unroll_noise(self, shape, t2: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The unroll's noise: eps for t = 1 and, if t2 < 1, eps' for the re-noising to t2."""
        eps = self._randn(shape, g)
        return eps, (self._randn(shape, g) if t2 < 1.0 else None)

    def _unroll(self, y_lat, text, t2: float, noise: tuple[torch.Tensor, torch.Tensor | None]):
        """x0 = eps - G(eps, 1); if t2 < 1: x0 = x_t2 - t2 G(x_t2, t2) with x_t2 = (1-t2) x0 + t2 eps' (Eq. 3)."""
        eps, eps2 = noise
        b = y_lat.shape[0]
        x0 = eps - self.G(eps, torch.ones(b, device=self.device), text, y_lat)
        if t2 < 1.0:
            t = torch.full((b,), t2, device=self.device)
            x_t = renoise(x0, t2, eps2)
            x0 = x_t - t2 * self.G(x_t, t, text, y_lat)
        return x0

    @staticmethod
    def _multi_rank() -> bool:
        return torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1

    def _chunks(self, n: int) -> list[list[int]]:
        return common.micro_batches(n, self.cfg.train.grad_accum)

    def _phase_t(self, step: int, g: torch.Generator) -> float:
        main_i = step - self.warmup_steps
        if main_i < self.single_step_steps:
            return 1.0
        return float(self.m.unroll_ts[int(torch.randint(len(self.m.unroll_ts), (1,), generator=g))])

    def _apply_G(self) -> float:
        """One optimizer step of G on the gradients its micro-batches' backward passes summed."""
        common.average_gradients(self.g_params)
        gn = torch.nn.utils.clip_grad_norm_(self.g_params, self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else float("inf"))
        self.opt_G.step()
        if self.ema is not None:
            self.ema.update(self.G)
        return float(gn)

    def _step_G(self, loss: torch.Tensor) -> float:
        self.opt_G.zero_grad(set_to_none=True)
        loss.backward()
        return self._apply_G()

    # -- Method protocol ------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        if step < self.warmup_steps:
            return self._warmup_step(step)
        return self._main_step(step)

    def _warmup_step(self, step: int) -> dict[str, float]:
        """Reconstruct the reference: v_theta = G(x_t, t, y, c^y), L_id = ||v - v_theta||^2."""
        batch = self._batch(step, "warmup")
        g = self._gen(step, "noise/warmup")
        texts = [r.caption_ref for r in batch.records]
        if self.m.warmup_text == "mixed":
            pick = torch.rand(len(texts), generator=g) < 0.5
            texts = [self.m.noop_instructions[i % len(self.m.noop_instructions)] if p else c
                     for i, (p, c) in enumerate(zip(pick.tolist(), texts))]
        with torch.no_grad():
            y = self.backbone.encode_image(batch.images)
            text = self.backbone.encode_text(texts)
        B = y.shape[0]
        t = torch.rand(B, generator=g).clamp_min(1e-3).to(self.device)  # t in (0, 1]
        noise = self._randn(y.shape, g)
        self.opt_G.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for c in self._chunks(B):
            loss = flow_loss(self.G, y[c], t[c], noise[c], text[c], ref=y[c]) * (len(c) / B)
            loss.backward()
            loss_sum += loss.item()
        return {"loss_id": loss_sum, "grad_norm": self._apply_G()}

    def _main_step(self, step: int) -> dict[str, float]:
        m = self.m
        batch = self._batch(step, "main")
        g = self._gen(step, "noise/main")
        B = len(batch.records)
        noop = (torch.rand(B, generator=g) < m.noop_prob).tolist()
        instr = [m.noop_instructions[i % len(m.noop_instructions)] if n else r.instruction
                 for i, (n, r) in enumerate(zip(noop, batch.records))]
        y_img = batch.images.to(self.device)
        with torch.no_grad():
            y_lat = self.backbone.encode_image(y_img)
            text_c = self.backbone.encode_text(instr)
        t2 = self._phase_t(step, g)
        # Every random draw of the step, for the whole batch, before any micro-batch (grad_accum does
        # not change them): the unroll's noise, then DMD's times and noise for the edited samples.
        eps, eps2 = self._unroll_noise(y_lat.shape, t2, g)
        active_pos = {i: p for p, i in enumerate(i for i in range(B) if not noop[i])}
        dmd_t = dmd_noise = None
        if active_pos and self.use_dmd:
            n = len(active_pos)
            dmd_t = (m.dmd_t_min + (m.dmd_t_max - m.dmd_t_min) * torch.rand(n, generator=g)).to(self.device)
            dmd_noise = self._randn((n, *y_lat.shape[1:]), g)

        out: dict[str, float] = {"t2": t2}
        sums: dict[str, float] = {}  # per-sample-weighted sums of the micro-batches' logged values
        counts = {"idle": B - len(active_pos), "active": len(active_pos)}

        def add(key: str, value: float, n: int, over: str) -> None:
            sums[key] = sums.get(key, 0.0) + value * (n / counts[over])

        self.opt_G.zero_grad(set_to_none=True)
        loss_total = 0.0
        for c in self._chunks(B):
            with self.prof("unroll"):
                x0 = self._unroll(y_lat[c], text_c[c], t2, (eps[c], None if eps2 is None else eps2[c]))
            active = [j for j, i in enumerate(c) if i in active_pos]
            idle = [j for j, i in enumerate(c) if i not in active_pos]
            total = x0.sum() * 0.0
            if idle:
                l2 = F.mse_loss(x0[idle].float(), y_lat[c][idle].float())
                total = total + l2 * len(idle) / B
                add("loss_noop", l2.item(), len(idle), "idle")
            # A micro-batch of no-op samples alone still makes the passes of the others, weighted 0, on
            # several ranks: each rank of a sharded teacher, A or critic must run the same forwards.
            dummy = not active and self._multi_rank()
            w = 0.0 if dummy else 1.0
            log = (lambda *_: None) if dummy else add  # a weight-0 pass is not logged
            if dummy:
                active = [0]
            if active:
                recs = [batch.records[c[j]] for j in active]
                need_image = m.lambda_vlm > 0 or m.lambda_lpips > 0
                with self.prof("decode"):
                    img = self.backbone.decode(x0[active]) if need_image else None
                y_ref = y_img[[c[j] for j in active]]
                if m.lambda_vlm > 0:
                    identity = m.identity_question and step >= m.identity_start and m.identity_weight > 0
                    qs = [questions_for(r.edit_type, r.instruction, r.object, identity=identity) for r in recs]
                    with self.prof("vlm_loss"):
                        l_vlm, st = vlm_loss(self.critic, img, y_ref, qs, mode=m.vlm_loss,
                                             temperature=m.vlm_temperature, weights={"identity": m.identity_weight})
                    total = total + w * m.lambda_vlm * l_vlm * len(active) / B
                    for key, value in {"loss_vlm": l_vlm.item(), **st}.items():
                        log(key, value, len(active), "active")
                if self.use_dmd:
                    if dummy:
                        t_c, noise_c = torch.full((1,), 0.5, device=self.device), torch.zeros_like(x0[:1])
                    else:
                        pos = [active_pos[c[j]] for j in active]
                        t_c, noise_c = dmd_t[pos], dmd_noise[pos]
                    with self.prof("dmd"):
                        l_dmd, st = self._dmd(x0[active], [r.caption_edit for r in recs], [r.edit_type for r in recs],
                                              t_c, noise_c)
                    total = total + w * m.lambda_dmd * l_dmd * len(active) / B
                    for key, value in {"loss_dmd": l_dmd.item(), **st}.items():
                        log(key, value, len(active), "active")
                if self.lpips is not None:
                    with self.prof("lpips"):
                        l_lp = self.lpips(img.clamp(-1, 1), y_ref).mean()
                    total = total + w * m.lambda_lpips * l_lp * len(active) / B
                    log("loss_lpips", l_lp.item(), len(active), "active")
            loss_total += total.item()
            with self.prof("backward_and_step"):
                total.backward()
        out.update(sums)
        out["loss"] = loss_total
        with self.prof("backward_and_step"):
            out["grad_norm"] = self._apply_G()
        if self.use_dmd:
            with self.prof("aux_updates"):
                out["loss_aux"] = self._aux_updates(step, t2)
        return out

    def _dmd(self, x0: torch.Tensor, captions: list[str], types: list[str], t: torch.Tensor, noise: torch.Tensor):
        m = self.m
        b = x0.shape[0]
        with torch.no_grad():
            text_x = self.backbone.encode_text(captions)
            if self.uncond is None:
                self.uncond = self.backbone.encode_text([""])
            uncond = self.uncond[[0] * b]
            guidance = torch.tensor([m.guidance_by_type.get(k, m.guidance) for k in types], device=self.device)
            x_t = renoise(x0.detach(), t, noise)
            v_real = guided_velocity(self.teacher, x_t, t, text_x, uncond, guidance)
            v_fake = self.A(x_t, t, text_x, None)
            grad = dmd_gradient(x0.detach(), x_t, t, v_real, v_fake)
        return dmd_loss(x0, grad), {"dmd_grad_abs": float(grad.abs().mean())}

    def _aux_updates(self, step: int, t2: float) -> float:
        """A_phi learns the generator's current output distribution (Alg. 1, lines 24-30)."""
        losses = []
        for k in range(self.m.n_aux):
            batch = self._batch(step, f"aux{k}")
            g = self._gen(step, f"noise/aux{k}")
            with torch.no_grad():
                y_lat = self.backbone.encode_image(batch.images.to(self.device))
                text_c = self.backbone.encode_text([r.instruction for r in batch.records])
                text_x = self.backbone.encode_text([r.caption_edit for r in batch.records])
            B = y_lat.shape[0]
            noise = self._unroll_noise(y_lat.shape, t2, g)
            t = torch.rand(B, generator=g).to(self.device)
            eps = self._randn(y_lat.shape, g)
            self.opt_A.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for c in self._chunks(B):
                with torch.no_grad():
                    x0 = self._unroll(y_lat[c], text_c[c], t2, (noise[0][c], None if noise[1] is None else noise[1][c]))
                loss = flow_loss(self.A, x0, t[c], eps[c], text_x[c]) * (len(c) / B)
                loss.backward()
                loss_sum += loss.item()
            common.average_gradients(self.a_params)
            if self.cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.a_params, self.cfg.train.grad_clip)
            self.opt_A.step()
            losses.append(loss_sum)
        return sum(losses) / max(1, len(losses))

    def state_dict(self) -> dict[str, Any]:
        st: dict[str, Any] = {"G": common.trainable_state(self.G), "opt_G": common.optimizer_state(self.G, self.opt_G),
                              "rng": common.rng_state()}
        if self.A is not None:
            st["A"] = common.trainable_state(self.A)
            st["opt_A"] = common.optimizer_state(self.A, self.opt_A)
        if self.ema is not None:
            st["ema"] = self.ema.state_dict()
        return st

    def load_state_dict(self, st: dict[str, Any]) -> None:
        common.load_trainable_state(self.G, st["G"])
        common.load_optimizer_state(self.G, self.opt_G, st["opt_G"])
        if self.A is not None:
            common.load_trainable_state(self.A, st["A"])
            common.load_optimizer_state(self.A, self.opt_A, st["opt_A"])
        if self.ema is not None:
            self.ema.load_state_dict(st["ema"])
        common.set_rng_state(st["rng"])

    def _final_weights(self) -> dict[str, torch.Tensor]:
        return self.ema.state_dict() if self.ema is not None else common.trainable_state(self.G)

    def editor(self) -> common.SamplingEditor:
        den = self.G
        if self.ema is not None:
            den = self.backbone.make_denoiser(trainable=True)
            common.load_trainable_state(den, self.ema.state_dict())
        return common.SamplingEditor(self.backbone, den, common.eval_sampling(self.cfg, SAMPLING))

    def export(self, folder: str) -> None:
        common.export_editor(folder, self._final_weights(), self.cfg.model.backbone,
                             common.eval_sampling(self.cfg, SAMPLING), self.m.name)

    def save_samples(self, path: Path, n_per_type: int = 1) -> None:
        picks = []
        for t in self.data.types:
            picks += self.data.by_type[t][:n_per_type]
        images = torch.stack([self.data.images(r.image) for r in picks])
        out = self.editor().edit_tensor(images, [r.instruction for r in picks], seed=0)
        common.sample_grid([[images[i].cpu(), out[i].cpu()] for i in range(len(picks))]).save(path)


def build(cfg: Any, rd: Any, device: torch.device) -> NPEdit:
    return NPEdit(cfg, rd, device)


VARIANTS = {
    "np_edit": {},
    "dmd_only": {"lambda_vlm": 0.0},
    "vlm_only": {"lambda_dmd": 0.0},
    "np_edit_no_identity": {"identity_question": False},
    "np_edit_ce": {"vlm_loss": "ce"},
    "np_edit_lpips": {"lambda_lpips": 1.0},
}
for _name, _defaults in VARIANTS.items():
    METHODS.register(_name, Spec(NPEditConfig, build, defaults=_defaults, help="NP-Edit (Algorithm 1)"))
