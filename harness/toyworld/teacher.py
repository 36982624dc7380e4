"""The built-in world's pretrained text-to-image teacher: a tiny SD3Transformer2DModel (MMDiT) in
pixel space (no VAE: latents are the 32x32 images in [-1, 1]) with one CLIPTextModelWithProjection
over a word-level tokenizer of the world's whole vocabulary (captions, instructions and the
'do nothing' instructions), written by `save_tiny_sd3` and loaded by `SD3Backbone` like real SD3.

Training: flow matching on rendered training-split scenes (x_t = (1 - t) x + t eps, v = eps - x,
logit-normal t by default), from DiT's adaLN-Zero initialisation, the text encoder trained jointly and
read as SD3Backbone reads it (penultimate hidden states + projected pooled embedding), captions
dropped to "" with probability `p_uncond` so classifier-free guidance works, AdamW with warmup and
a constant rate (or cosine decay), EMA weights saved (in float16 by default: the shipped copy must
stay small).
"""
from __future__ import annotations

import os
import shutil
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from harness.config import check_literals
from harness.models.base import TextEmbedding
from harness.toyworld import text as T
from harness.toyworld.render import render
from harness.toyworld.scenes import Scene, WorldConfig, sample_scene

# NPEditConfig.noop_instructions' defaults: every word a generator can be given must have a token.
NOOP_INSTRUCTIONS = ("do nothing", "keep the image unchanged", "leave the image as it is")
_STREAM_DATA, _STREAM_NOISE = 11, 12


@dataclass
class TeacherRecipe:
    world: WorldConfig = field(default_factory=WorldConfig)
    # SD3Transformer2DModel (pixel space) + one CLIPTextModelWithProjection
    patch_size: int = 4
    # 6 blocks, not 4: with 4 (the same recipe otherwise) 80% / 8% of one- / two-object held-out
    # captions parsed back, with 6 96% / 28% (49 min at one thread against 34; docs/toyworld-search.md)
    num_layers: int = 6
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    text_hidden_size: int = 64
    text_layers: int = 3
    text_heads: int = 2
    # sin-cos position units between neighbouring tokens; 0 = SD3's own grid (pos_embed_max_size =
    # twice the token grid: half a unit apart, which a tiny model separates poorly)
    pos_spacing: float = 2.0
    qk_norm: Literal["none", "rms_norm"] = "rms_norm"
    init_seed: int = 0
    # training
    steps: int = 6000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    lr_schedule: Literal["cosine", "constant"] = "constant"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    p_uncond: float = 0.1  # caption dropout to "" (the unconditional branch of guidance)
    # Share of two-object training scenes (the world's own mix is 0.35). Half: with t_shift 3 single
    # objects were right 99-100% of the time at 0.25, so pairs got the room; 100% / 51% of held-out one- /
    # two-object captions parsed back at 0.5 against 100% / 23% at 0.25 (docs/toyworld-search.md).
    p_two: float = 0.5
    # logit-normal t (SD3's) or uniform t (a third of the steps at t > 0.7, where the layout is decided)
    t_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    # Training times shifted by SD3's time shift (3, the sampler's): logit-normal t alone puts 0.03% of
    # its draws above t = 0.97, where the sampler takes its first steps and the background and layout
    # are decided from the caption; without the shift 6 of 10 teachers trained here had not learned
    # that end (one drew 31 of 100 one-object captions on the wrong background; docs/toyworld-search.md).
    t_shift: float = 3.0
    seed: int = 0
    save_dtype: Literal["float16", "float32"] = "float16"
    # How the teacher is sampled for its quality bar: classifier-free guidance on SD3's shifted time
    # grid (shift 3 as SD3's scheduler: more of the steps at high noise, where a sample's layout is
    # decided; on the shipped teacher, guidance 2 / shift 3 parsed back 73% of one-object captions
    # where guidance 4 / shift 1 gave 55%), with the scheduler's stochastic steps (fresh noise at
    # every step: 80 / 81% of one-object captions at 40 steps where the Euler ODE gave 73 / 69%,
    # docs/toyworld-search.md). Not part of the weights, so not of the hash: `evaluate --set teacher.sample_shift=1`
    # measures the same model another way.
    sample_steps: int = field(default=40, metadata={"hash": False})
    sample_guidance: float = field(default=2.0, metadata={"hash": False})
    sample_shift: float = field(default=3.0, metadata={"hash": False})
    sample_stochastic: bool = field(default=True, metadata={"hash": False})

    def validate(self) -> None:
        self.world.validate()
        if self.world.size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} must divide the world's image size {self.world.size}")
        if not 0 <= self.p_uncond < 1 or not 0 <= self.p_two <= 1:
            raise ValueError(f"p_uncond must be in [0, 1) and p_two in [0, 1], got {self.p_uncond}, {self.p_two}")
        if self.t_shift <= 0:
            raise ValueError(f"t_shift must be > 0 (1: no shift), got {self.t_shift}")
        if self.pos_spacing < 0:
            raise ValueError(f"pos_spacing must be >= 0 (0: SD3's own grid), got {self.pos_spacing}")
        check_literals(self)
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.sample_steps < 1 or self.sample_shift <= 0:
            raise ValueError(f"sample_steps must be >= 1 and sample_shift > 0, got {self.sample_steps}, {self.sample_shift}")

    def sampler(self) -> dict[str, Any]:
        return {"steps": self.sample_steps, "guidance": self.sample_guidance, "shift": self.sample_shift,
                "stochastic": self.sample_stochastic}


# ---------------------------------------------------------------------------------------------
# Vocabulary and text length


def teacher_vocabulary(world: WorldConfig) -> list[str]:
    """Every word a caption, an instruction or a 'do nothing' instruction of the world can use."""
    return sorted(set(T.vocabulary(world)) | {w for s in NOOP_INSTRUCTIONS for w in T.words(s)})


def max_text_tokens(world: WorldConfig) -> int:
    """Tokens (with <bos> and <eos>) of the longest caption or instruction the world can write:
    each template's literal words plus the longest value of each of its slots."""
    pos_words = max(len(T.words(p)) for p in world.positions)
    obj_words = 4 if len(world.patterns) > 1 else 3  # article [pattern] colour shape
    slot = {"object": 2, "color": 1, "pattern": 1, "shape": 1, "background": 1, "new": obj_words + 1,
            "place": 2 + pos_words, "to_place": 2 + pos_words, "objects": world.max_objects * (obj_words + 1) - 1}
    if world.caption_positions:  # "... in the top left" after each object
        slot["objects"] += world.max_objects * (2 + pos_words)
    slot["setting"] = max(_template_words(s, slot) for s in T.SETTINGS)
    longest = max(_template_words(t, slot) for group in (*T.CAPTIONS.values(), *T.INSTRUCTIONS.values())
                  for t in group)
    longest = max(longest, *(len(T.words(s)) for s in NOOP_INSTRUCTIONS))
    return longest + 2


def _template_words(template: str, slot: dict[str, int]) -> int:
    n = 0
    for literal, name, *_ in string.Formatter().parse(template):
        n += len(T.words(literal)) + (slot[name] if name else 0)
    return n


# ---------------------------------------------------------------------------------------------
# Model folder


def build_initial_folder(folder: Path, recipe: TeacherRecipe) -> Path:
    """The untrained teacher: a diffusers SD3 folder (pixel space, one CLIP text encoder), with the
    adaLN-Zero initialisation of DiT (every block's modulation and the output layer start at zero,
    so each block starts as the identity), which trains a small MMDiT much faster from scratch;
    with `pos_spacing`, the sin-cos position grid rewritten to that spacing (saved with the weights)."""
    from diffusers import SD3Transformer2DModel

    from harness.models.sd3 import set_pos_spacing
    from harness.models.tiny import save_tiny_sd3, write_folder_atomically

    def fill(tmp: Path) -> None:
        raw = save_tiny_sd3(
            tmp / "raw", pixel_space=True, vocab=teacher_vocabulary(recipe.world), image_size=recipe.world.size,
            patch_size=recipe.patch_size, num_layers=recipe.num_layers, num_attention_heads=recipe.num_attention_heads,
            attention_head_dim=recipe.attention_head_dim, text_hidden_size=recipe.text_hidden_size,
            text_layers=recipe.text_layers, text_heads=recipe.text_heads,
            text_max_length=max_text_tokens(recipe.world), lowercase=True, shift=1.0, seed=recipe.init_seed,
            qk_norm=None if recipe.qk_norm == "none" else recipe.qk_norm)
        tr = SD3Transformer2DModel.from_pretrained(raw, subfolder="transformer")
        if recipe.pos_spacing:
            set_pos_spacing(tr.pos_embed, recipe.pos_spacing)
        with torch.no_grad():
            for name, p in tr.named_parameters():
                if name.startswith(("proj_out.", "norm_out.linear.")) or ".norm1.linear." in name \
                        or ".norm1_context.linear." in name:
                    p.zero_()
        shutil.rmtree(raw / "transformer")
        tr.save_pretrained(raw / "transformer")
        for item in raw.iterdir():
            os.replace(item, tmp / item.name)
        raw.rmdir()

    return write_folder_atomically(folder, fill)


class TextEncoder(torch.nn.Module):
    """The teacher's CLIP text encoder read exactly as SD3Backbone reads it (penultimate hidden
    states zero-padded to the joint width, projected pooled embedding), with gradients."""

    def __init__(self, encoder: torch.nn.Module, tokenizer: Any, joint_dim: int):
        super().__init__()
        self.encoder, self.tokenizer, self.joint_dim = encoder, tokenizer, joint_dim
        self.length = min(tokenizer.model_max_length, encoder.config.max_position_embeddings)

    def ids(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(prompts, padding="max_length", max_length=self.length, truncation=True,
                              return_tensors="pt").input_ids

    def forward(self, ids: torch.Tensor) -> TextEmbedding:
        out = self.encoder(ids, output_hidden_states=True)
        hidden = torch.nn.functional.pad(out.hidden_states[-2], (0, self.joint_dim - out.hidden_states[-2].shape[-1]))
        return TextEmbedding(hidden, out.text_embeds)


# ---------------------------------------------------------------------------------------------
# Data


def training_batch(recipe: TeacherRecipe, step: int) -> tuple[torch.Tensor, list[str]]:
    """(images in [-1, 1], captions with dropout) of one step: a pure function of (seed, step)."""
    from harness.toyworld.pretrain import step_seed

    rng = np.random.default_rng(step_seed(recipe.seed, step, _STREAM_DATA))
    w = recipe.world
    images, captions = [], []
    for _ in range(recipe.batch_size):
        n = 2 if w.max_objects >= 2 and rng.random() < recipe.p_two else 1
        scene = sample_scene(rng, w, n_objects=n, split="train")
        images.append(render(scene, w))
        c = T.caption(scene, rng, w)
        captions.append("" if rng.random() < recipe.p_uncond else c)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, captions


# ---------------------------------------------------------------------------------------------
# Training


def train_teacher(recipe: TeacherRecipe, folder: Path, *, progress: bool = True,
                  stop_after: int | None = None, device: str | torch.device | None = None) -> Path | None:
    """Train the teacher and write its SD3 folder (EMA weights) to `folder` atomically, with
    recipe.json. Work files (checkpoint, untrained folder) live in `folder`'s sibling
    `<name>.work` and are removed when done. Returns None when stopped early by `stop_after`.
    `device`: where to train (default CPU); batches and noise are drawn on the CPU either way."""
    from diffusers import SD3Transformer2DModel
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    from harness.models.sampler import shift_time
    from harness.models.sd3 import SD3Denoiser
    from harness.models.tiny import write_folder_atomically
    from harness.toyworld import pretrain as P
    from methods.dmd import flow_loss

    recipe.validate()
    folder = Path(folder)
    work = folder.with_name(folder.name + ".work")
    hash_ = P.recipe_hash(recipe)
    init = work / "init"
    if not (init / "model_index.json").exists():
        build_initial_folder(init, recipe)
    device = torch.device(device or "cpu")
    transformer = SD3Transformer2DModel.from_pretrained(init, subfolder="transformer", torch_dtype=torch.float32).to(device)
    encoder = CLIPTextModelWithProjection.from_pretrained(init, subfolder="text_encoder", dtype=torch.float32).to(device)
    tokenizer = AutoTokenizer.from_pretrained(init, subfolder="tokenizer")
    text = TextEncoder(encoder, tokenizer, transformer.config.joint_attention_dim)
    denoiser = SD3Denoiser(transformer, ref_modulation="shared")
    modules = {"transformer": transformer, "text_encoder": encoder}
    params = {f"{n}.{k}": p for n, m in modules.items() for k, p in m.named_parameters()}
    optimizer = torch.optim.AdamW(params.values(), lr=recipe.lr, betas=(0.9, 0.99), weight_decay=recipe.weight_decay)
    ema = P.EMA(params, recipe.ema_decay) if recipe.ema_decay > 0 else None

    def step_fn(step: int) -> float:
        x, captions = training_batch(recipe, step)
        g = P.torch_generator(recipe.seed, step, _STREAM_NOISE)
        if recipe.t_sampling == "logit_normal":
            t = torch.sigmoid(torch.randn(x.shape[0], generator=g))
        else:
            t = torch.rand(x.shape[0], generator=g)
        t = shift_time(t, recipe.t_shift)
        noise = torch.randn(x.shape, generator=g)
        loss = flow_loss(denoiser, x.to(device), t.to(device), noise.to(device), text(text.ids(captions).to(device)))
        loss.backward()
        if recipe.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params.values(), recipe.grad_clip)
        return float(loss.detach())

    state = P.train_loop(
        work_dir=work, hash_=hash_, modules=modules, optimizer=optimizer, step_fn=step_fn, steps=recipe.steps,
        lr=lambda s: P.lr_at(s, recipe.steps, recipe.lr, recipe.warmup_steps,
                             final_fraction=1.0 if recipe.lr_schedule == "constant" else 0.1), ema=ema, desc="teacher",
        progress=progress, stop_after=stop_after)
    if state.step < recipe.steps:
        return None
    if ema is not None:
        ema.copy_to(params)
    dtype = {"float16": torch.float16, "float32": torch.float32}[recipe.save_dtype]

    def fill(tmp: Path) -> None:
        shutil.copytree(init, tmp, dirs_exist_ok=True)
        for name, m in modules.items():
            shutil.rmtree(tmp / name)
            m.to(dtype).save_pretrained(tmp / name)
            m.to(torch.float32)
        P.write_recipe(tmp, "teacher", recipe, {"train": {"steps": state.step, "seconds": round(state.elapsed_s, 1),
                                                          "device": str(device),
                                                          "loss_curve": [round(v, 5) for v in state.losses]}})

    write_folder_atomically(folder, fill)
    shutil.rmtree(work, ignore_errors=True)
    return folder


# ---------------------------------------------------------------------------------------------
# Sampling and the quality bar


def load_teacher(folder: str | Path, device: str | torch.device | None = None):
    """The teacher folder as an SD3Backbone (the class every real SD3 model loads through)."""
    from harness.models.sd3 import SD3Backbone, SD3Config

    return SD3Backbone(SD3Config(name="toy_mmdit", path=str(folder), shift=1.0), device=device)


@torch.no_grad()
def sample(backbone: Any, prompts: list[str], *, seed: int = 0, steps: int = 20, guidance: float = 4.0,
           shift: float | None = None, stochastic: bool = False, batch_size: int = 128) -> np.ndarray:
    """Text-to-image samples (multi-step Euler with classifier-free guidance, on the time grid
    shifted by `shift`, default the backbone's; `stochastic`: the scheduler's stochastic steps) as
    uint8 (N, H, W, 3)."""
    from harness.models.sampler import euler_sample

    den = backbone.make_denoiser(trainable=False)
    uncond = backbone.encode_text([""])
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(prompts), *backbone.latent_shape()), generator=g)
    out = []
    for i in range(0, len(prompts), batch_size):
        text = backbone.encode_text(prompts[i : i + batch_size])
        x = euler_sample(den, text, None, noise[i : i + batch_size].to(backbone.device), steps=steps,
                         guidance=guidance, uncond_text=uncond, shift=backbone.shift if shift is None else shift,
                         stochastic=stochastic, generator=g)
        out.append(backbone.decode(x).cpu())
    images = torch.cat(out).clamp(-1, 1)
    return ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def caption_facts(scene: Scene, world: WorldConfig | None = None) -> tuple:
    """What a caption states about a scene: background, style, and each object's colour, shape and
    pattern, and its cell when `world.caption_positions`, in the caption's order when
    `world.caption_order` is "reading" (captions omit sizes; outline drawings have no pattern)."""
    at = world is not None and world.caption_positions
    objs = [(o.color, o.shape, o.pattern if scene.style == "filled" else "solid", *((o.pos,) if at else ()))
            for o in sorted(scene.objects, key=lambda o: o.pos)]  # reading order: the caption's, when it counts
    in_order = world is not None and world.caption_order == "reading"
    return scene.background, scene.style, tuple(objs if in_order else sorted(objs))


def held_out_captions(world: WorldConfig, n: int, n_objects: int, seed: int = 0) -> list[tuple[Scene, str]]:
    """(scene, caption) of `n` test-split scenes with `n_objects` objects (never seen in training)."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([0x7E57, seed, n_objects, i])
        scene = sample_scene(rng, world, n_objects=n_objects, split="test")
        out.append((scene, T.caption(scene, rng, world)))
    return out


def parse_back_rate(backbone: Any, world: WorldConfig, n: int, n_objects: int, *, seed: int = 0, steps: int = 20,
                    guidance: float = 4.0, shift: float | None = None, stochastic: bool = False) -> tuple[float, np.ndarray]:
    """Share of samples from held-out captions whose parse states what their caption states,
    and the samples (see `sample` for the sampler's settings)."""
    from harness.toyworld.parse import parse

    pairs = held_out_captions(world, n, n_objects, seed)
    images = sample(backbone, [c for _, c in pairs], seed=seed, steps=steps, guidance=guidance, shift=shift,
                    stochastic=stochastic)
    ok = [caption_facts(parse(img, world), world) == caption_facts(s, world) for img, (s, _) in zip(images, pairs)]
    return float(np.mean(ok)), images


@torch.no_grad()
def background_at_pure_noise(backbone: Any, world: WorldConfig, n: int, *, seed: int = 0) -> float:
    """Share of `n` held-out one-object captions whose clean-image prediction at t = 1 (pure noise,
    where the sampler starts) has the captioned background: the per-channel median pixel nearest
    the captioned background colour among the world's. A teacher that never trained the high-noise
    end leaves the background to chance there, and its samples keep that chance (docs/toyworld-search.md)."""
    from harness.toyworld.scenes import PALETTE

    pairs = held_out_captions(world, n, 1, seed)
    noise = torch.randn((n, *backbone.latent_shape()), generator=torch.Generator().manual_seed(seed))
    x0 = noise - backbone.make_denoiser(trainable=False)(noise.to(backbone.device), torch.ones(n, device=backbone.device),
                                                         backbone.encode_text([c for _, c in pairs]), None).cpu()
    rgb = ((x0.float().flatten(2).median(2).values + 1) * 127.5)  # (n, 3)
    colors = torch.tensor([PALETTE[b] for b in world.backgrounds], dtype=torch.float32)
    nearest = torch.cdist(rgb, colors).argmin(1)
    return float(np.mean([world.backgrounds[int(k)] == s.background for k, (s, _) in zip(nearest, pairs)]))


__all__ = ["NOOP_INSTRUCTIONS", "TeacherRecipe", "TextEncoder", "background_at_pure_noise", "build_initial_folder",
           "caption_facts", "held_out_captions", "load_teacher", "max_text_tokens", "parse_back_rate", "sample",
           "teacher_vocabulary", "train_teacher"]
