"""SD3 backbone: loading both layouts from disk, the SD3 prompt recipe and sampling conventions
against diffusers' own pipeline, and reference-image conditioning."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from harness.config import from_dict
from harness.models.base import Backbone, TextEmbedding
from harness.models.sampler import euler_sample, few_step_sample
from harness.models.sd3 import SD3Config, SD3Denoiser, pos_grid, ref_pos_embed, set_pos_spacing
from harness.models.tiny import save_tiny_sd3
from harness.registry import BACKBONES

VOCAB = ["a red blue green circle square on the left right of background", "make it remove"]
PROMPTS = ["a red circle on the left", "a blue square", "a red circle on the left"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd3")
    pixel = save_tiny_sd3(root / "pixel", pixel_space=True, vocab=VOCAB, image_size=32, patch_size=2, seed=0)
    # SD3.5-like: real three-encoder layout, a VAE, a dual-attention block and qk norm; scheduler shift 3.
    full = save_tiny_sd3(
        root / "full", pixel_space=False, three_text_encoders=True, vocab=VOCAB, image_size=32, patch_size=2,
        num_layers=3, dual_attention_layers=(0,), qk_norm="rms_norm", shift=3.0, seed=1,
    )
    return {"pixel": pixel, "full": full}


def load(folder, **kw):
    cfg = from_dict(SD3Config, {"path": str(folder), **kw})
    return BACKBONES.get("sd3").build(cfg)


@pytest.fixture(scope="module")
def backbones(folders):
    return {k: load(v) for k, v in folders.items()}


def plain(bb, x, t, text):
    """The pretrained transformer called exactly as diffusers' pipeline calls it."""
    return bb.transformer(hidden_states=x, encoder_hidden_states=text.hidden, pooled_projections=text.pooled,
                          timestep=torch.full((x.shape[0],), 1000.0 * t), return_dict=False)[0]


def batch(bb, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, *bb.latent_shape())
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize("layout", ["pixel", "full"])
def test_loads_both_layouts_and_ref_none_is_the_plain_transformer(backbones, layout):
    bb = backbones[layout]
    assert isinstance(bb, Backbone)
    assert bb.image_size == 32
    assert bb.latent_shape() == ((3, 32, 32) if layout == "pixel" else (4, 16, 16))
    text = bb.encode_text(PROMPTS[:2])
    x, _ = batch(bb)
    expected = plain(bb, x, 0.7, text)
    for den in (bb.make_denoiser(trainable=False), bb.make_denoiser(trainable=True)):
        assert torch.equal(den(x, 0.7, text), expected)
        assert torch.equal(den(x, torch.tensor([0.7, 0.7]), text), expected)


def test_text_encoding_layouts_and_cache(backbones):
    px, full = backbones["pixel"], backbones["full"]
    t = px.encode_text(PROMPTS)
    # toy layout: one CLIP, penultimate states padded to the joint width; pooled = its text_embeds
    assert t.hidden.shape == (3, 16, px.transformer.config.joint_attention_dim)
    assert t.pooled.shape == (3, px.transformer.config.pooled_projection_dim)
    assert torch.equal(t.hidden[0], t.hidden[2]) and not torch.equal(t.hidden[0], t.hidden[1])
    # cached rows equal freshly computed ones
    hidden, pooled = px._encode_uncached([PROMPTS[1]])
    assert torch.equal(px.encode_text([PROMPTS[1]]).hidden, hidden) and torch.equal(px.encode_text([PROMPTS[1]]).pooled, pooled)
    # SD3 layout: 16 CLIP tokens + 16 T5 tokens, the widths the transformer expects
    f = full.encode_text(PROMPTS[:2])
    tc = full.transformer.config
    assert f.hidden.shape == (2, 32, tc.joint_attention_dim) and f.pooled.shape == (2, tc.pooled_projection_dim)
    clip_width = sum(e.config.hidden_size for e in full.clip_encoders)
    assert clip_width < tc.joint_attention_dim
    assert torch.all(f.hidden[:, :16, clip_width:] == 0)  # CLIP part zero-padded to the T5 width


def _pipeline(folder, **components):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(folder, **components)


def test_prompt_embedding_matches_diffusers_pipeline(folders, backbones, tmp_path):
    pipe = _pipeline(folders["full"])
    ours = backbones["full"].encode_text(PROMPTS[:2])
    hidden, _, pooled, _ = pipe.encode_prompt(PROMPTS[:2], None, None, do_classifier_free_guidance=False, max_sequence_length=16)
    torch.testing.assert_close(ours.hidden, hidden.detach(), rtol=1e-5, atol=1e-6)  # batch 2 vs our batch 1: last bits
    torch.testing.assert_close(ours.pooled, pooled.detach(), rtol=1e-5, atol=1e-6)

    # without text_encoder_3 (as SD3 pipelines allow): zeros in place of T5 states
    no_t5 = tmp_path / "no_t5"
    shutil.copytree(folders["full"], no_t5)
    index = json.loads((no_t5 / "model_index.json").read_text())
    index["text_encoder_3"] = index["tokenizer_3"] = [None, None]
    (no_t5 / "model_index.json").write_text(json.dumps(index))
    bb = load(no_t5, max_sequence_length=8)
    assert bb.t5 is None
    ours = bb.encode_text(PROMPTS[:2])
    pipe = _pipeline(no_t5, text_encoder_3=None, tokenizer_3=None)
    hidden, _, pooled, _ = pipe.encode_prompt(PROMPTS[:2], None, None, do_classifier_free_guidance=False, max_sequence_length=8)
    assert ours.hidden.shape == (2, 16 + 8, bb.transformer.config.joint_attention_dim)
    torch.testing.assert_close(ours.hidden, hidden.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.pooled, pooled.detach(), rtol=1e-5, atol=1e-6)


def test_euler_sampler_matches_diffusers_pipeline(folders, backbones):
    """Same noise, schedule, shift and CFG as StableDiffusion3Pipeline: the timestep scale (1000 t)
    and the velocity sign (v = eps - x) agree with diffusers."""
    bb = backbones["full"]
    assert bb.shift == 3.0  # read from scheduler/scheduler_config.json
    noise, _ = batch(bb, n=2, seed=3)
    steps, guidance = 5, 2.5
    pipe = _pipeline(folders["full"])
    expected = pipe(prompt=PROMPTS[:2], latents=noise.clone(), num_inference_steps=steps, sigmas=[1 - k / steps for k in range(steps)],
                    guidance_scale=guidance, max_sequence_length=16, output_type="latent").images
    teacher = bb.make_denoiser(trainable=False)
    with torch.no_grad():
        ours = euler_sample(teacher, bb.encode_text(PROMPTS[:2]), None, noise, steps=steps, guidance=guidance,
                            uncond_text=bb.encode_text([""]), shift=bb.shift)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_stochastic_sampler_matches_diffusers_stochastic_scheduler(folders, backbones):
    """stochastic=True steps as FlowMatchEulerDiscreteScheduler(stochastic_sampling=True) in the
    pipeline: x0 re-noised to the next time with noise drawn from the same (global) RNG."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    bb = backbones["full"]
    noise, _ = batch(bb, n=2, seed=4)
    steps, guidance = 5, 2.5
    pipe = _pipeline(folders["full"])
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, stochastic_sampling=True)
    torch.manual_seed(11)
    expected = pipe(prompt=PROMPTS[:2], latents=noise.clone(), num_inference_steps=steps, sigmas=[1 - k / steps for k in range(steps)],
                    guidance_scale=guidance, max_sequence_length=16, output_type="latent").images
    teacher = bb.make_denoiser(trainable=False)
    text, uncond = bb.encode_text(PROMPTS[:2]), bb.encode_text([""])
    with torch.no_grad():
        torch.manual_seed(11)
        ours = euler_sample(teacher, text, None, noise, steps=steps, guidance=guidance, uncond_text=uncond,
                            shift=bb.shift, stochastic=True)
        ode = euler_sample(teacher, text, None, noise, steps=steps, guidance=guidance, uncond_text=uncond, shift=bb.shift)
        seeded = [euler_sample(teacher, text, None, noise, steps=steps, guidance=guidance, uncond_text=uncond,
                               shift=bb.shift, stochastic=True, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    assert (ours - ode).abs().max() > 1e-2  # the fresh noise changes the sample
    torch.testing.assert_close(seeded[0], seeded[1], rtol=0, atol=0)


def test_reference_positions_extend_the_pretrained_grid(backbones):
    pe = backbones["pixel"].transformer.pos_embed
    size, dim = pe.pos_embed_max_size, pe.pos_embed.shape[-1]
    grid = pe.pos_embed.reshape(size, size, dim)
    target = pe.cropped_pos_embed(32, 32).reshape(16, 16, dim)
    assert torch.equal(target, grid[8:24, 8:24])  # the target keeps the pretrained centre crop
    # a 16x16-pixel reference (8x8 patches) sits right of the target: columns 24..31 of the grid
    ours = ref_pos_embed(pe, (32, 32), (16, 16)).reshape(8, 8, dim)
    torch.testing.assert_close(ours, grid[8:16, 24:32], rtol=0, atol=1e-6)
    # a full-size reference extends the same formula past the grid without repeating positions
    full = ref_pos_embed(pe, (32, 32), (32, 32)).reshape(16, 16, dim)
    torch.testing.assert_close(full[:, :8], grid[8:24, 24:32], rtol=0, atol=1e-6)
    assert (full[:, 8:].unsqueeze(2) - grid.reshape(1, 1, -1, dim)).abs().amax(-1).min() > 1e-3


def test_reference_positions_extend_a_rewritten_grid(tmp_path):
    """A grid rewritten to 2 units between tokens, saved in float16: the reference continues it,
    where a larger grid of the same spacing (the oracle) has those positions."""
    from diffusers import SD3Transformer2DModel

    def transformer(size):
        return SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=3, num_layers=1, attention_head_dim=16,
                                     num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32,
                                     pooled_projection_dim=32, out_channels=3, pos_embed_max_size=size)

    tr, oracle = transformer(32), transformer(64)
    set_pos_spacing(tr.pos_embed, 2.0)
    set_pos_spacing(oracle.pos_embed, 2.0)
    tr.to(torch.float16).save_pretrained(tmp_path / "t")
    pe = SD3Transformer2DModel.from_pretrained(tmp_path / "t", torch_dtype=torch.float32).pos_embed
    dim = pe.pos_embed.shape[-1]
    big = oracle.pos_embed.pos_embed.reshape(64, 64, dim)
    torch.testing.assert_close(pe.cropped_pos_embed(32, 32).reshape(16, 16, dim), big[8:24, 8:24], rtol=0, atol=1e-3)
    full = ref_pos_embed(pe, (32, 32), (32, 32)).reshape(16, 16, dim)
    torch.testing.assert_close(full, big[8:24, 24:40], rtol=0, atol=1e-3)
    assert pos_grid(transformer(32).pos_embed) == (0.0, 0.5)  # SD3's own grid is read exactly
    with torch.no_grad():
        pe.pos_embed[0, 3] += 0.2
    with pytest.raises(ValueError, match="not a sin-cos grid"):
        ref_pos_embed(pe, (32, 32), (32, 32))


@pytest.mark.parametrize("layout", ["pixel", "full"])
def test_reference_conditioning_gradients_and_modulations(folders, layout):
    x, ref = batch(load(folders[layout]), n=2, seed=1)
    shared = load(folders[layout], ref_modulation="shared")
    clean = load(folders[layout], ref_modulation="clean")
    text = shared.encode_text(PROMPTS[:2])
    den_s, den_c = shared.make_denoiser(trainable=True), clean.make_denoiser(trainable=True)
    ref = ref.requires_grad_()

    v_none = den_c(x, 0.6, text)
    v_clean = den_c(x, 0.6, text, ref)
    v_shared = den_s(x, 0.6, text, ref)
    assert (v_clean - v_none).abs().max() > 1e-3
    assert (v_clean - v_shared).abs().max() > 1e-4  # the two modulations differ at t > 0
    # at t = 0 both give the reference the modulation of t = 0: the same function
    torch.testing.assert_close(den_c(x, 0.0, text, ref), den_s(x, 0.0, text, ref), rtol=1e-5, atol=1e-6)

    v_clean.square().mean().backward()
    grads = [p.grad for p in den_c.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[:1])
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    blocks = den_c.transformer.transformer_blocks
    assert blocks[-1].attn.to_k.weight.grad.abs().sum() > 0  # the last (context_pre_only) block learns
    assert ref.grad is None  # the reference is detached


def test_reference_output_depends_on_reference_content(backbones):
    bb = backbones["pixel"]
    den = bb.make_denoiser(trainable=False)
    x, ref = batch(bb)
    text = bb.encode_text(PROMPTS[:2])
    with torch.no_grad():
        a, b = den(x, 0.5, text, ref), den(x, 0.5, text, ref.flip(0))
    # each sample sees its own reference: rows of a batch do not interact
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(den(x[:1], 0.5, text[:1], ref[:1]), a[:1], rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_output_and_gradients(folders):
    outs = []
    for ckpt in (False, True):
        bb = load(folders["full"], grad_checkpointing=ckpt)
        den = bb.make_denoiser(trainable=True)
        x, ref = batch(bb, seed=5)
        v = den(x, 0.4, bb.encode_text(PROMPTS[:2]), ref)
        v.square().mean().backward()
        outs.append((v.detach(), den.transformer.transformer_blocks[0].attn.to_q.weight.grad.clone()))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])


def test_lora_adapter_trains_only_lora_and_can_be_disabled(folders):
    bb = load(folders["pixel"], lora_rank=4, lora_alpha=8)
    teacher = bb.make_denoiser(trainable=False)
    student = bb.make_denoiser(trainable=True)
    assert student.has_adapter and not teacher.has_adapter
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    x, ref = batch(bb)
    text = bb.encode_text(PROMPTS[:2])
    with torch.no_grad():
        base = teacher(x, 0.5, text, ref)
        torch.testing.assert_close(student(x, 0.5, text, ref), base)  # LoRA B starts at zero
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=1.0)
    student(x, 0.5, text, ref).square().mean().backward()
    opt.step()
    with torch.no_grad():
        assert (student(x, 0.5, text, ref) - base).abs().max() > 1e-4
        with student.adapter_disabled():
            torch.testing.assert_close(student(x, 0.5, text, ref), base)
        assert (student(x, 0.5, text, ref) - base).abs().max() > 1e-4  # re-enabled after the block
    with pytest.raises(RuntimeError, match="no LoRA adapter"):
        with teacher.adapter_disabled():
            pass


def test_vae_encode_decode_and_pixel_space(backbones):
    px, full = backbones["pixel"], backbones["full"]
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(px.encode_image(images), images) and torch.equal(px.decode(images), images)
    z = full.encode_image(images)
    vae = full.vae
    expected = (vae.encode(images).latent_dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor
    torch.testing.assert_close(z, expected)
    z = z.requires_grad_()
    out = full.decode(z)
    torch.testing.assert_close(out, vae.decode(z / vae.config.scaling_factor + vae.config.shift_factor).sample)
    out.sum().backward()
    assert z.grad.abs().sum() > 0  # decoding is differentiable (the VLM loss needs it)
    assert not any(p.requires_grad for p in vae.parameters())


def test_bfloat16_compute_matches_float32(folders):
    f32 = load(folders["pixel"])
    bf16 = load(folders["pixel"], dtype="bfloat16")
    x, ref = batch(f32)
    text32 = f32.encode_text(PROMPTS[:2])
    den16 = bf16.make_denoiser(trainable=True)
    assert next(den16.parameters()).dtype == torch.float32  # fp32 master weights, bf16 autocast
    v32 = f32.make_denoiser(trainable=False)(x, 0.5, text32, ref)
    v16 = den16(x, 0.5, bf16.encode_text(PROMPTS[:2]), ref)
    assert v16.dtype == torch.float32
    assert (v16 - v32).abs().max() < 0.05 * v32.abs().max()


def test_few_step_sampler_runs_the_editing_denoiser(backbones):
    bb = backbones["full"]
    den = bb.make_denoiser(trainable=True)
    x, ref = batch(bb)
    g = torch.Generator().manual_seed(0)
    out = few_step_sample(den, bb.encode_text(PROMPTS[:2]), ref, x, steps=4, shift=bb.shift, generator=g)
    out.square().mean().backward()
    assert out.shape == x.shape and den.transformer.proj_out.weight.grad.abs().sum() > 0


def test_bad_inputs_give_clear_errors(folders, backbones, tmp_path):
    with pytest.raises(ValueError, match="path: empty"):
        load("")
    with pytest.raises(ValueError, match="no transformer/"):
        (tmp_path / "empty").mkdir()
        load(tmp_path / "empty")
    bb = backbones["pixel"]
    den = bb.make_denoiser(trainable=False)
    x, ref = batch(bb)
    text = bb.encode_text(PROMPTS[:2])
    with pytest.raises(ValueError, match="text embedding batch"):
        den(x, 0.5, text[:1])
    with pytest.raises(ValueError, match="t must be"):
        den(x, torch.ones(3), text)
    with pytest.raises(ValueError, match="patch size"):
        den(x, 0.5, text, ref[..., :31, :31])
    with pytest.raises(TypeError):
        bb.encode_text("a red circle")
    assert isinstance(den, SD3Denoiser) and isinstance(text, TextEmbedding)


def test_reference_path_calls_each_block_through_its_module(backbones):
    """Per-block wrappers (FSDP, checkpointing, hooks) must see every block call, with the
    reference's modulation passed along."""
    bb = backbones["full"]
    bb.make_denoiser(trainable=False)  # patches the shared transformer's blocks first
    den = bb.make_denoiser(trainable=True)  # a deep copy: its blocks must be bound to themselves
    seen = []
    for block in den.transformer.transformer_blocks:
        assert block.forward.__self__ is block
        block.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs.get("n_target")), with_kwargs=True)
    x, ref = batch(bb)
    den(x, 0.5, bb.encode_text(PROMPTS[:2]), ref)
    assert seen == [64] * len(den.transformer.transformer_blocks)  # 16x16 latents, patch 2: 64 target tokens
