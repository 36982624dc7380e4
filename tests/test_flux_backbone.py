"""FLUX.1 / Kontext backbone: loading from disk, prompt encoding, sampling conventions (time scale,
velocity sign, resolution-dependent shift, distilled guidance, Kontext reference tokens) against
diffusers' own FluxPipeline and FluxKontextPipeline, LoRA, checkpointing and bf16."""
from __future__ import annotations

import math

import pytest
import torch

from harness.config import from_dict
from harness.models.base import Backbone, TextEmbedding
from harness.models.flux import FluxConfig, FluxDenoiser, latent_ids, pack_latents, scheduler_shift, unpack_latents
from harness.models.sampler import euler_sample, few_step_sample
from harness.models.tiny import save_tiny_flux
from harness.registry import BACKBONES

VOCAB = ["a red blue green circle square on the left right of background", "make it remove"]
PROMPTS = ["a red circle on the left", "a blue square"]
SEQ = 16  # T5 tokens in these tests


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux")
    return {
        "dev": save_tiny_flux(root / "dev", vocab=VOCAB, guidance_embeds=True, seed=0),
        "kontext": save_tiny_flux(root / "kontext", vocab=VOCAB, kontext=True, guidance_embeds=True, seed=1),
        "schnell": save_tiny_flux(root / "schnell", vocab=VOCAB, guidance_embeds=False, seed=2),
    }


def load(folder, **kw):
    cfg = from_dict(FluxConfig, {"path": str(folder), "resolution": 32, "max_sequence_length": SEQ, **kw})
    return BACKBONES.get("flux").build(cfg)


@pytest.fixture(scope="module")
def backbones(folders):
    return {k: load(v) for k, v in folders.items()}


def batch(bb, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, *bb.latent_shape())
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def plain(bb, x, t, text, guidance=3.5):
    """The pretrained transformer called exactly as FluxPipeline calls it."""
    h, w = x.shape[-2:]
    g = torch.full((x.shape[0],), guidance) if bb.transformer.config.guidance_embeds else None
    out = bb.transformer(hidden_states=pack_latents(x), encoder_hidden_states=text.hidden, pooled_projections=text.pooled,
                         timestep=torch.full((x.shape[0],), float(t)), img_ids=latent_ids(h, w), txt_ids=torch.zeros(text.hidden.shape[1], 3),
                         guidance=g, return_dict=False)[0]
    return unpack_latents(out, h, w)


def test_packing_round_trip_and_matches_diffusers():
    from diffusers import FluxPipeline

    x = torch.randn(2, 16, 8, 12)
    packed = pack_latents(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 16, 8, 12))
    assert torch.equal(unpack_latents(packed, 8, 12), x)
    ids = FluxPipeline._prepare_latent_image_ids(1, 4, 6, "cpu", torch.float32)
    assert torch.equal(latent_ids(8, 12), ids)


@pytest.mark.parametrize("kind", ["dev", "kontext", "schnell"])
def test_loads_and_ref_none_is_the_plain_transformer(backbones, kind):
    bb = backbones[kind]
    assert isinstance(bb, Backbone)
    assert bb.image_size == 32 and bb.latent_shape() == (16, 16, 16)
    text = bb.encode_text(PROMPTS)
    x, _ = batch(bb)
    expected = plain(bb, x, 0.7, text)
    for den in (bb.make_denoiser(trainable=False), bb.make_denoiser(trainable=True)):
        assert torch.equal(den(x, 0.7, text), expected)
        assert torch.equal(den(x, torch.tensor([0.7, 0.7]), text), expected)
    if kind != "schnell":  # the distilled guidance scale is an input of dev-style transformers
        assert (plain(bb, x, 0.7, text, guidance=1.0) - expected).abs().max() > 1e-4


def test_shift_follows_the_scheduler_at_the_working_resolution(folders):
    sched = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}
    assert scheduler_shift(sched, 4096) == pytest.approx(math.exp(1.15))  # FLUX.1 at 1024 px: s = 3.16
    assert scheduler_shift(sched, 256) == pytest.approx(math.exp(0.5))
    assert scheduler_shift({"shift": 3.0}, 4096) == 3.0
    small, large = load(folders["dev"], resolution=32), load(folders["dev"], resolution=64)
    assert small.shift == pytest.approx(scheduler_shift(sched, 64)) and large.shift > small.shift  # 8x8 vs 16x16 tokens
    assert load(folders["dev"], shift=2.0).shift == 2.0


def test_prompt_embedding_matches_diffusers_pipeline(folders, backbones):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folders["dev"])
    ours = backbones["dev"].encode_text(PROMPTS)
    hidden, pooled, text_ids = pipe.encode_prompt(PROMPTS, None, max_sequence_length=SEQ)
    torch.testing.assert_close(ours.hidden, hidden, rtol=1e-5, atol=1e-6)  # their batch 2 vs our batch 1: last bits
    torch.testing.assert_close(ours.pooled, pooled, rtol=1e-5, atol=1e-6)
    assert not text_ids.any()
    again = backbones["dev"].encode_text([PROMPTS[1]])  # cached rows equal the fresh ones
    assert torch.equal(again.hidden[0], ours.hidden[1])


def test_euler_sampler_matches_flux_pipeline(folders, backbones):
    """Same noise, schedule (FLUX's dynamic shift), distilled guidance and true CFG as FluxPipeline:
    the timestep scale and the velocity sign (v = eps - x) agree with diffusers."""
    from diffusers import FluxPipeline

    bb = backbones["dev"]
    noise, _ = batch(bb, seed=3)
    steps, cfg = 4, 2.0
    pipe = FluxPipeline.from_pretrained(folders["dev"])
    expected = pipe(prompt=PROMPTS, negative_prompt=["", ""], true_cfg_scale=cfg, guidance_scale=bb.cfg.guidance_embed,
                    height=32, width=32, latents=pack_latents(noise), num_inference_steps=steps, max_sequence_length=SEQ,
                    output_type="latent").images
    teacher = bb.make_denoiser(trainable=False)
    with torch.no_grad():
        ours = euler_sample(teacher, bb.encode_text(PROMPTS), None, noise, steps=steps, guidance=cfg,
                            uncond_text=bb.encode_text([""]), shift=bb.shift)
    torch.testing.assert_close(pack_latents(ours), expected, rtol=1e-4, atol=1e-5)


def test_kontext_reference_tokens_match_flux_kontext_pipeline(folders, backbones):
    """Reference latents as FluxKontextPipeline places them (same (h, w) ids, first axis 1, shared
    modulation, output cropped to the target tokens)."""
    from diffusers import FluxKontextPipeline

    bb = backbones["kontext"]
    noise, ref = batch(bb, seed=4)
    steps = 3
    pipe = FluxKontextPipeline.from_pretrained(folders["kontext"])
    expected = pipe(image=ref, prompt=PROMPTS, guidance_scale=bb.cfg.guidance_embed, height=32, width=32, max_area=32 * 32,
                    latents=pack_latents(noise), num_inference_steps=steps, max_sequence_length=SEQ, output_type="latent").images
    den = bb.make_denoiser(trainable=True)
    with torch.no_grad():
        ours = euler_sample(den, bb.encode_text(PROMPTS), ref, noise, steps=steps, shift=bb.shift)
    torch.testing.assert_close(pack_latents(ours), expected, rtol=1e-4, atol=1e-5)


def test_reference_conditioning_is_per_sample_and_detached(backbones):
    bb = backbones["kontext"]
    den = bb.make_denoiser(trainable=True)
    x, ref = batch(bb, seed=5)
    text = bb.encode_text(PROMPTS)
    ref = ref.requires_grad_()
    v = den(x, 0.5, text, ref)
    assert (v - den(x, 0.5, text)).abs().max() > 1e-3
    with torch.no_grad():
        swapped = den(x, 0.5, text, ref.flip(0))
        assert (swapped - v).abs().max() > 1e-3
        torch.testing.assert_close(den(x[:1], 0.5, text[:1], ref[:1]), v[:1], rtol=1e-5, atol=1e-6)
    # a reference of another size gets its own ids (FLUX Kontext allows any reference size)
    assert den(x, 0.5, text, ref[..., :8, :12].detach()).shape == x.shape
    v.square().mean().backward()
    assert ref.grad is None
    assert den.transformer.single_transformer_blocks[-1].attn.to_q.weight.grad.abs().sum() > 0


def test_lora_adapter_trains_only_lora_and_can_be_disabled(folders):
    bb = load(folders["kontext"], lora_rank=4, lora_alpha=8)
    teacher, student = bb.make_denoiser(trainable=False), bb.make_denoiser(trainable=True)
    assert student.has_adapter and not teacher.has_adapter
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("single_transformer_blocks" in n for n in trainable) and any(".add_q_proj." in n for n in trainable)
    x, ref = batch(bb)
    text = bb.encode_text(PROMPTS)
    with torch.no_grad():
        base = teacher(x, 0.5, text, ref)
        torch.testing.assert_close(student(x, 0.5, text, ref), base)
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=1.0)
    student(x, 0.5, text, ref).square().mean().backward()
    opt.step()
    with torch.no_grad():
        assert (student(x, 0.5, text, ref) - base).abs().max() > 1e-4
        with student.adapter_disabled():
            torch.testing.assert_close(student(x, 0.5, text, ref), base)
    full = bb.make_denoiser(trainable=True, lora=False)
    assert all(p.requires_grad for p in full.parameters()) and not full.has_adapter


def test_gradient_checkpointing_gives_the_same_output_and_gradients(folders):
    outs = []
    for ckpt in (False, True):
        bb = load(folders["kontext"], grad_checkpointing=ckpt)
        den = bb.make_denoiser(trainable=True)
        assert den.transformer.gradient_checkpointing == ckpt
        x, ref = batch(bb, seed=6)
        v = den(x, 0.4, bb.encode_text(PROMPTS), ref)
        v.square().mean().backward()
        outs.append((v.detach(), den.transformer.transformer_blocks[0].attn.to_q.weight.grad.clone()))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])


def test_bfloat16_compute_matches_float32(folders):
    f32, bf16 = load(folders["kontext"]), load(folders["kontext"], dtype="bfloat16")
    x, ref = batch(f32)
    den16 = bf16.make_denoiser(trainable=True)
    assert next(den16.parameters()).dtype == torch.float32  # fp32 master weights, bf16 autocast
    v32 = f32.make_denoiser(trainable=False)(x, 0.5, f32.encode_text(PROMPTS), ref)
    v16 = den16(x, 0.5, bf16.encode_text(PROMPTS), ref)
    assert v16.dtype == torch.float32
    assert (v16 - v32).abs().max() < 0.05 * v32.abs().max()


def test_vae_round_trip_is_differentiable(backbones):
    bb = backbones["dev"]
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    z = bb.encode_image(images)
    vae = bb.vae
    torch.testing.assert_close(z, (vae.encode(images).latent_dist.mode() - 0.1159) * 0.3611)
    z = z.requires_grad_()
    out = bb.decode(z)
    assert out.shape == images.shape
    out.sum().backward()
    assert z.grad.abs().sum() > 0 and not any(p.requires_grad for p in vae.parameters())


def test_few_step_unroll_reaches_the_generator(backbones):
    bb = backbones["kontext"]
    den = bb.make_denoiser(trainable=True)
    x, ref = batch(bb)
    out = few_step_sample(den, bb.encode_text(PROMPTS), ref, x, ts=[1.0, 0.5], generator=torch.Generator().manual_seed(0))
    bb.decode(out).square().mean().backward()
    assert out.shape == x.shape and den.transformer.proj_out.weight.grad.abs().sum() > 0


def test_bad_inputs_give_clear_errors(folders, backbones, tmp_path):
    with pytest.raises(ValueError, match="path: empty"):
        load("")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no transformer/"):
        load(tmp_path / "empty")
    with pytest.raises(ValueError, match="multiple of 2 x VAE factor"):
        load(folders["dev"], resolution=30)
    bb = backbones["dev"]
    den = bb.make_denoiser(trainable=False)
    x, ref = batch(bb)
    text = bb.encode_text(PROMPTS)
    with pytest.raises(ValueError, match="text embedding batch"):
        den(x, 0.5, text[:1])
    with pytest.raises(ValueError, match="do not match x_t"):
        den(x, 0.5, text, ref[:1])
    with pytest.raises(ValueError, match="even height and width"):
        den(x[..., :15, :15], 0.5, text)
    with pytest.raises(ValueError, match="lora_rank > 0"):
        bb.make_denoiser(trainable=True, lora=True)
    assert isinstance(den, FluxDenoiser) and isinstance(text, TextEmbedding)


# ---------------------------------------------------------------------------------------------
# FSDP2 sharding (2 processes, gloo on CPU)


def _fsdp_worker(rank: int, world: int, port: int, flux_folder: str, sd3_folder: str) -> None:
    import os

    import torch.distributed as dist

    from harness.models.sd3 import SD3Config
    from harness.models.sharding import full_trainable_state, is_sharded, load_full_trainable_state, shard_denoiser

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        plain, sharded = load(flux_folder), load(flux_folder, fsdp=True)
        assert sharded.sharded and not plain.sharded
        sd3 = BACKBONES.get("sd3").build(from_dict(SD3Config, {"path": sd3_folder, "ref_modulation": "clean"}))
        cases = [
            ("flux", plain, plain.make_denoiser(trainable=True), sharded.make_denoiser(trainable=True)),
            ("sd3", sd3, sd3.make_denoiser(trainable=True), shard_denoiser(sd3.make_denoiser(trainable=True), "cpu")),
        ]
        for name, bb, ref_den, den in cases:
            assert all(is_sharded(p) for p in den.parameters()), name
            text = bb.encode_text(PROMPTS)
            data = [batch(bb, seed=10 + r) for r in range(world)]  # each rank trains on its own batch
            # FSDP averages gradients over ranks: the same as one process averaging the ranks' losses
            (sum(ref_den(x, 0.6, text, y).square().mean() for x, y in data) / world).backward()
            x, y = data[rank]
            v = den(x, 0.6, text, y)
            torch.testing.assert_close(v, ref_den(x, 0.6, text, y), rtol=1e-5, atol=1e-6, msg=name)
            v.square().mean().backward()
            for (n, p), (_, q) in zip(den.named_parameters(), ref_den.named_parameters()):
                torch.testing.assert_close(p.grad.full_tensor(), q.grad, rtol=1e-4, atol=1e-7, msg=f"{name} {n}")
            for d in (den, ref_den):
                torch.optim.SGD(d.parameters(), lr=0.1).step()
            state = full_trainable_state(den)
            assert set(state) == {n for n, _ in ref_den.named_parameters()}
            for n, q in ref_den.named_parameters():  # gradients agree to the last bits, so do the stepped weights
                torch.testing.assert_close(state[n], q.detach(), rtol=1e-5, atol=1e-7, msg=f"{name} {n}")
            # a fresh sharded copy loaded from the full state computes what the trained one does
            fresh = shard_denoiser(bb.make_denoiser(trainable=True), "cpu")
            load_full_trainable_state(fresh, state)
            with torch.no_grad():
                torch.testing.assert_close(fresh(x, 0.3, text, y), den(x, 0.3, text, y), rtol=1e-5, atol=1e-6, msg=name)
        teacher = sharded.make_denoiser(trainable=False)  # frozen, sharded copy of the pretrained weights
        x, y = batch(plain, seed=rank)
        text = plain.encode_text(PROMPTS)
        with torch.no_grad():
            torch.testing.assert_close(teacher(x, 0.5, text), plain.make_denoiser(trainable=False)(x, 0.5, text), rtol=1e-5, atol=1e-6)
        assert not any(p.requires_grad for p in teacher.parameters())
    finally:
        dist.destroy_process_group()


def test_fsdp_sharded_denoisers_train_like_unsharded_ones(folders, tmp_path):
    """FSDP2 over 2 CPU ranks (gloo): the FLUX backbone's `fsdp` flag and `shard_denoiser` on an SD3
    denoiser (its reference path calls the blocks itself) give the unsharded outputs, rank-averaged
    gradients, the same SGD step, and full-state round trips."""
    import socket

    import torch.multiprocessing as mp

    from harness.models.tiny import save_tiny_sd3

    sd3 = save_tiny_sd3(tmp_path / "sd3", pixel_space=True, vocab=VOCAB, image_size=16, patch_size=2, seed=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp_worker, args=(2, port, str(folders["kontext"]), str(sd3)), nprocs=2)  # fork deadlocks after torch ran threads


def test_fsdp_flag_without_distributed_is_a_plain_model(folders):
    bb = load(folders["dev"], fsdp=True)
    assert not bb.sharded
    assert not any(type(p).__name__ == "DTensor" for p in bb.make_denoiser(trainable=True).parameters())
