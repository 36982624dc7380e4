"""Z-Image backbone: loading from disk, the sampling conventions (time reversed, velocity negated, caption
tokens) against diffusers' own ZImagePipeline, npedit's reference tokens (second frame, clean modulation),
gradients to full weights and LoRA, save/load of the editor, and checkpoints of the public NP-Edit
reimplementation loaded with torch.load(weights_only=True)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from harness.config import from_dict
from harness.models.base import Backbone
from harness.models.sampler import euler_sample, few_step_sample
from harness.models.tiny_editors import save_tiny_zimage
from harness.models.zimage import ZImageConfig, ZImageDenoiser, map_npedit_key
from harness.registry import BACKBONES

VOCAB = ["a red blue green circle square on the left right of background", "make it remove"]
PROMPTS = ("a red circle on the left", "make the square blue")  # captions of different lengths
SEQ = 64


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_zimage(tmp_path_factory.mktemp("zimage") / "z", vocab=VOCAB, max_length=SEQ, seed=0)


def load(folder, **kw):
    cfg = from_dict(ZImageConfig, {"path": str(folder), "resolution": 32, "max_sequence_length": SEQ, **kw})
    return BACKBONES.get("zimage").build(cfg)


@pytest.fixture(scope="module")
def bb(folder):
    return load(folder)


def batch(bb, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, *bb.latent_shape())
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def plain(bb, x, t, prompts):
    """The pretrained transformer called exactly as ZImagePipeline calls it (its prompt encoding too)."""
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline(scheduler=None, vae=bb.vae, text_encoder=bb.text_encoder, tokenizer=bb.tokenizer,
                          transformer=bb.transformer)
    caps = pipe._encode_prompt(list(prompts), device=torch.device("cpu"), max_sequence_length=SEQ)
    out = bb.transformer(list(x.unsqueeze(2).unbind(0)), torch.full((x.shape[0],), 1.0 - t), caps, return_dict=False)[0]
    return -torch.stack(out).squeeze(2)


def test_loads_and_ref_none_is_the_plain_transformer(bb):
    assert isinstance(bb, Backbone)
    assert bb.image_size == 32 and bb.latent_shape() == (4, 16, 16) and bb.shift == 6.0
    text = bb.encode_text(PROMPTS)
    assert text.hidden.shape == (2, SEQ, 16) and text.pooled.shape == (2, SEQ)
    assert int(text.pooled[0].sum()) != int(text.pooled[1].sum())  # each caption keeps its own length
    x, _ = batch(bb)
    expected = plain(bb, x, 0.7, PROMPTS)
    for den in (bb.make_denoiser(trainable=False), bb.make_denoiser(trainable=True)):
        with torch.no_grad():
            torch.testing.assert_close(den(x, 0.7, text), expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(den(x, torch.tensor([0.7, 0.7]), text), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(bb.encode_text([PROMPTS[1]]).hidden[0], text.hidden[1])  # cached rows equal fresh ones


@pytest.mark.parametrize("guidance", [0.0, 1.5])
def test_euler_sampler_matches_zimage_pipeline(folder, bb, guidance):
    """Same noise, schedule (the scheduler's shift), CFG and captions as ZImagePipeline: the time reversal
    and the velocity sign agree with diffusers. The pipeline's guidance g is ours 1 + g."""
    from diffusers import ZImagePipeline

    noise, _ = batch(bb, seed=3)
    pipe = ZImagePipeline.from_pretrained(folder)
    # list(): the pipeline writes the chat-templated prompts back into the list it is given
    expected = pipe(prompt=list(PROMPTS), negative_prompt=["", ""], guidance_scale=guidance, height=32, width=32,
                    latents=noise, num_inference_steps=3, max_sequence_length=SEQ, output_type="latent").images
    with torch.no_grad():
        ours = euler_sample(bb.make_denoiser(trainable=False), bb.encode_text(PROMPTS), None, noise, steps=3,
                            guidance=1.0 + guidance, uncond_text=bb.encode_text([""]), shift=bb.shift)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_reference_tokens_follow_npedit(bb):
    """The reference is frame 0 of a two-frame input: with the sample's modulation everywhere ('shared')
    the output is diffusers' own forward on that input; the harness's per-token path with both
    modulations equal reproduces it, and the clean modulation of the reference changes it."""
    x, ref = batch(bb, seed=4)
    text = bb.encode_text(PROMPTS)
    clean, shared = load(bb.cfg.path), load(bb.cfg.path, ref_modulation="shared")
    den_c, den_s = clean.make_denoiser(trainable=False), shared.make_denoiser(trainable=False)
    caps = [h[m > 0.5] for h, m in zip(text.hidden, text.pooled)]
    frames = [torch.stack([r, v], dim=1) for r, v in zip(ref, x)]
    with torch.no_grad():
        own = torch.stack([o[:, 1] for o in bb.transformer(frames, torch.full((2,), 0.4), caps, return_dict=False)[0]])
        torch.testing.assert_close(den_s(x, 0.6, text, ref), -own)
        same = torch.stack(den_c.forward_two_modulations(frames, torch.full((2,), 0.4), caps, clean=False))
        torch.testing.assert_close(-same, den_s(x, 0.6, text, ref), rtol=1e-4, atol=1e-5)
        v_clean = den_c(x, 0.6, text, ref)
        assert (v_clean - den_s(x, 0.6, text, ref)).abs().max() > 1e-4  # the reference's own modulation matters
        assert (v_clean - den_c(x, 0.6, text)).abs().max() > 1e-3  # reference tokens change the output
        assert (den_c(x, 0.6, text, ref.flip(0)) - v_clean).abs().max() > 1e-3  # per sample
        torch.testing.assert_close(den_c(x[:1], 0.6, text[:1], ref[:1]), v_clean[:1], rtol=1e-5, atol=1e-6)


def test_gradients_reach_full_weights_not_the_reference(bb):
    den = bb.make_denoiser(trainable=True)
    x, ref = batch(bb, seed=5)
    ref = ref.requires_grad_()
    v = den(x, 0.5, bb.encode_text(PROMPTS), ref)
    v.square().mean().backward()
    assert ref.grad is None
    tr = den.transformer
    for p in (tr.layers[0].attention.to_q.weight, tr.noise_refiner[0].adaLN_modulation[0].weight, tr.cap_embedder[1].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in bb.transformer.parameters())  # the pretrained copy stays frozen


def test_lora_adapter_trains_only_lora_and_can_be_disabled(folder):
    bb = load(folder, lora_rank=4, lora_alpha=8)
    teacher, student = bb.make_denoiser(trainable=False), bb.make_denoiser(trainable=True)
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable) and any(".layers.0.attention.to_q" in n for n in trainable)
    x, ref = batch(bb)
    text = bb.encode_text(PROMPTS)
    with torch.no_grad():
        base = teacher(x, 0.5, text, ref)
        torch.testing.assert_close(student(x, 0.5, text, ref), base)
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=1.0)
    student(x, 0.5, text, ref).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in student.named_parameters() if "lora_B" in n)
    opt.step()
    with torch.no_grad():
        assert (student(x, 0.5, text, ref) - base).abs().max() > 1e-4
        with student.adapter_disabled():
            torch.testing.assert_close(student(x, 0.5, text, ref), base)


def test_gradient_checkpointing_gives_the_same_output_and_gradients(folder):
    outs = []
    for ckpt in (False, True):
        bb = load(folder, grad_checkpointing=ckpt)
        den = bb.make_denoiser(trainable=True)
        assert den.transformer.gradient_checkpointing == ckpt
        x, ref = batch(bb, seed=6)
        v = den(x, 0.4, bb.encode_text(PROMPTS), ref)
        v.square().mean().backward()
        outs.append((v.detach(), den.transformer.layers[0].attention.to_k.weight.grad.clone()))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])


def test_editor_save_load_round_trip(bb, tmp_path):
    """A trained denoiser exported as runs export it and rebuilt through the registry edits the same."""
    from methods.common import Sampling, SamplingEditor, export_editor, load_editor, trainable_state

    den = bb.make_denoiser(trainable=True)
    with torch.no_grad():
        for p in den.parameters():
            p.add_(0.01 * torch.randn_like(p))
    export_editor(tmp_path / "model", trainable_state(den), bb.cfg, Sampling("few_step", 2, 1.0), "np_edit")
    again = load_editor(tmp_path / "model")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    ours = SamplingEditor(bb, den, Sampling("few_step", 2, 1.0)).edit_tensor(images, PROMPTS, seed=3)
    torch.testing.assert_close(again.edit_tensor(images, PROMPTS, seed=3), ours, rtol=1e-5, atol=1e-5)
    assert (again.edit_tensor(images, PROMPTS, seed=3) - SamplingEditor(bb, bb.make_denoiser(trainable=False),
            Sampling("few_step", 2, 1.0)).edit_tensor(images, PROMPTS, seed=3)).abs().max() > 1e-4


def npedit_checkpoint(bb, path, *, prefix="transformer.", seed=7):
    """A checkpoint as npedit writes it: torch.save(ZImageDenoiser.state_dict()), keys 'transformer.*', bf16."""
    g = torch.Generator().manual_seed(seed)
    state = {prefix + k: (v + 0.05 * torch.randn(v.shape, generator=g)).to(torch.bfloat16)
             for k, v in bb.transformer.state_dict().items()}
    torch.save(state, path)
    return state


def test_npedit_checkpoint_loads_into_the_transformer(folder, bb, tmp_path):
    state = npedit_checkpoint(bb, tmp_path / "zimage_npedit.pt")
    loaded = load(folder, weights=str(tmp_path / "zimage_npedit.pt"))
    for k, v in loaded.transformer.state_dict().items():
        assert torch.equal(v, state["transformer." + k].float()), k
    # a torch.compile'd, DDP-wrapped save maps the same
    npedit_checkpoint(bb, tmp_path / "compiled.pt", prefix="module._orig_mod.transformer.")
    again = load(folder, weights=str(tmp_path / "compiled.pt"))
    assert torch.equal(again.transformer.layers[0].attention.to_q.weight, loaded.transformer.layers[0].attention.to_q.weight)
    assert map_npedit_key("transformer._orig_mod.layers.0.attention.to_q.weight") == "layers.0.attention.to_q.weight"
    # sampled as a row: the loaded weights edit differently from the pretrained ones
    x, ref = batch(bb)
    text = bb.encode_text(PROMPTS)
    with torch.no_grad():
        a = few_step_sample(loaded.make_denoiser(trainable=False), text, ref, x, steps=2, shift=6.0,
                            generator=torch.Generator().manual_seed(0))
        b = few_step_sample(bb.make_denoiser(trainable=False), text, ref, x, steps=2, shift=6.0,
                            generator=torch.Generator().manual_seed(0))
    assert (a - b).abs().max() > 1e-3


class NotATensor:
    pass


def test_bad_checkpoints_and_inputs_give_clear_errors(folder, bb, tmp_path):
    state = {"transformer." + k: v for k, v in bb.transformer.state_dict().items()}
    first = next(iter(state))
    torch.save({**{k: v for k, v in state.items() if k != first}, "transformer.extra.weight": torch.zeros(1)},
               tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match=r"1 missing, e\.g\. \['" + re.escape(first[len("transformer."):])):
        load(folder, weights=str(tmp_path / "wrong.pt"))
    torch.save({**state, "transformer.layers.0.attention.to_q.lora_A.default.weight": torch.zeros(1)}, tmp_path / "lora.pt")
    with pytest.raises(ValueError, match="LoRA checkpoint"):
        load(folder, weights=str(tmp_path / "lora.pt"))
    torch.save({"weights": NotATensor()}, tmp_path / "pickle.pt")  # weights_only=True refuses arbitrary objects
    with pytest.raises(ValueError, match="not a torch checkpoint of tensors"):
        load(folder, weights=str(tmp_path / "pickle.pt"))
    with pytest.raises(ValueError, match="file not found"):
        load(folder, weights=str(tmp_path / "absent.pt"))
    with pytest.raises(ValueError, match="multiple of 2 x VAE factor"):
        load(folder, resolution=30)
    den = bb.make_denoiser(trainable=False)
    x, ref = batch(bb)
    text = bb.encode_text(PROMPTS)
    with pytest.raises(ValueError, match="text embedding batch"):
        den(x, 0.5, text[:1])
    with pytest.raises(ValueError, match="must have the shape of x_t"):
        den(x, 0.5, text, ref[..., :8, :8])
    assert isinstance(den, ZImageDenoiser)


def test_npedit_checkpoint_scored_as_a_row(folder, bb, tmp_path):
    """configs/editors/npedit-zimage.yaml with a tiny Z-Image and a checkpoint in npedit's layout: a run without
    training whose edits are those of the checkpoint's weights through the shared 4-step sampler."""
    import json

    from harness import config as C
    from harness.edit import load_editor
    from harness.evaluate import main
    from methods.common import Sampling, SamplingEditor
    from tests.helpers import write_yaml

    repo = Path(__file__).resolve().parents[1]
    npedit_checkpoint(bb, tmp_path / "zimage_npedit.pt")
    cfg = write_yaml(tmp_path / "npedit.yaml", {
        "include": [str(repo / "configs/editors/npedit-zimage.yaml")],
        "model": {"backbone": {"path": str(folder), "weights": str(tmp_path / "zimage_npedit.pt"), "dtype": "float32",
                               "resolution": 32, "max_sequence_length": SEQ, "grad_checkpointing": False}},
        "eval": {"benchmarks": [{"name": "shapes_edit", "n_per_type": 2, "edit_types": ["color"], "lpips": False}]},
    })
    assert C.load_run_config(cfg).method.name == "backbone_editor"
    runs = tmp_path / "runs"
    assert main(["--config", str(cfg), "--benchmark", "shapes_edit", "--runs-dir", str(runs), "--device", "cpu"]) == 0
    (rd,) = (runs / "editors").iterdir()
    (r,) = json.loads((rd / "result.json").read_text())["results"]
    assert r["meta"]["sampling"] == {"sampler": "few_step", "steps": 4, "guidance": 1.0}
    row = load_editor(rd, device="cpu")
    loaded = load(folder, weights=str(tmp_path / "zimage_npedit.pt"))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    expected = SamplingEditor(loaded, loaded.make_denoiser(trainable=False), Sampling("few_step", 4, 1.0))
    torch.testing.assert_close(row.edit_tensor(images, PROMPTS, seed=1), expected.edit_tensor(images, PROMPTS, seed=1))
    plain_row = SamplingEditor(bb, bb.make_denoiser(trainable=False), Sampling("few_step", 4, 1.0))
    assert (row.edit_tensor(images, PROMPTS, seed=1) - plain_row.edit_tensor(images, PROMPTS, seed=1)).abs().max() > 1e-3
