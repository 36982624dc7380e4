"""Every generator backbone with every VLM critic, as NP-Edit uses them: tiny random models of the
real classes, saved with save_pretrained and loaded back through BACKBONES / CRITICS, then a few
NP-Edit-like steps from the shared building blocks (2-step unroll -> decode -> VLM loss on the
paper's questions; DMD against the frozen teacher with the auxiliary model; an auxiliary update)
and the few-step editor."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from harness.config import from_dict, load_run_config, read_yaml, to_dict
from harness.models.sampler import few_step_sample, renoise, timesteps
from harness.models.tiny import (
    save_tiny_flux,
    save_tiny_internvl,
    save_tiny_llava,
    save_tiny_llava_onevision,
    save_tiny_qwen2_5_vl,
    save_tiny_sd3,
)
from harness.registry import BACKBONES, CRITICS
from methods.dmd import dmd_gradient, dmd_loss, flow_loss, guided_velocity
from methods.questions import questions_for
from methods.vlm_loss import vlm_loss

SIZE = 32
EDITS = [("color", "make the circle red", "", "a red circle on a blue background"),
         ("remove", "remove the square", "square", "a blue background")]
QUESTIONS = [questions_for(kind, instr, obj) for kind, instr, obj, _ in EDITS]
VOCAB = [q.text for qs in QUESTIONS for q in qs] + [e[1] for e in EDITS] + [e[3] for e in EDITS] + ["do nothing"]

BACKBONE_KINDS = {  # kind -> (registry name, folder writer, config beyond the path)
    "sd3": ("sd3", lambda p: save_tiny_sd3(p, pixel_space=False, three_text_encoders=True, vocab=VOCAB, image_size=SIZE,
                                           dual_attention_layers=(0,), shift=3.0), {}),
    "flux": ("flux", lambda p: save_tiny_flux(p, vocab=VOCAB, image_size=SIZE), {"resolution": SIZE, "max_sequence_length": 16}),
    "flux_kontext": ("flux", lambda p: save_tiny_flux(p, kontext=True, vocab=VOCAB, image_size=SIZE),
                     {"resolution": SIZE, "max_sequence_length": 16}),
}
CRITIC_KINDS = {
    "llava": save_tiny_llava,
    "llava_onevision": save_tiny_llava_onevision,
    "internvl": save_tiny_internvl,
    "qwen2_5_vl": save_tiny_qwen2_5_vl,
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """kind -> a tiny folder of that backbone or critic family, written on first use."""
    root = tmp_path_factory.mktemp("pairs")
    cache = {}

    def get(kind):
        if kind not in cache:
            if kind == "zimage":
                from harness.models.tiny_editors import save_tiny_zimage

                cache[kind] = save_tiny_zimage(root / kind, vocab=VOCAB)
            elif kind in BACKBONE_KINDS:
                cache[kind] = BACKBONE_KINDS[kind][1](root / kind)
            else:
                cache[kind] = CRITIC_KINDS[kind](root / f"critic_{kind}", vocab=VOCAB, seed=1)
        return cache[kind]

    return get


def build(registry, name, cfg):
    spec = registry.get(name)
    return spec.build(from_dict(spec.config, cfg))


@pytest.fixture(scope="module")
def backbones(folders):
    cache = {}

    def get(kind):
        if kind not in cache:
            name, _, extra = BACKBONE_KINDS[kind]
            cache[kind] = build(BACKBONES, name, {"path": str(folders(kind)), **extra})
        return cache[kind]

    return get


@pytest.fixture(scope="module")
def critics(folders):
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = build(CRITICS, kind, {"path": str(folders(kind))})
        return cache[kind]

    return get


def reference_images(n: int) -> torch.Tensor:
    """Smooth random images in [-1, 1] (a few colour blobs), as reference photographs stand-ins."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


def grad_norm(params) -> float:
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


@pytest.mark.parametrize("critic_kind", CRITIC_KINDS)
@pytest.mark.parametrize("backbone_kind", BACKBONE_KINDS)
def test_np_edit_steps_for_every_backbone_and_critic(backbones, critics, backbone_kind, critic_kind):
    bb, critic = backbones(backbone_kind), critics(critic_kind)
    G = bb.make_denoiser(trainable=True)
    teacher = bb.make_denoiser(trainable=False)
    A = bb.make_denoiser(trainable=True, lora=None)
    g_params = [p for p in G.parameters() if p.requires_grad]
    opt = torch.optim.Adam(g_params, lr=1e-3, betas=(0.0, 0.9))
    g = torch.Generator().manual_seed(1)

    y_img = reference_images(len(EDITS))
    with torch.no_grad():
        y = bb.encode_image(y_img)
        text_c = bb.encode_text([e[1] for e in EDITS])
        text_x = bb.encode_text([e[3] for e in EDITS])
        uncond = bb.encode_text([""])[[0] * len(EDITS)]
    before = {n: p.detach().clone() for n, p in G.named_parameters() if p.requires_grad}

    # generator: 2-step unroll (t = 1, then 0.5), decode, VLM loss on the paper's questions
    noise = torch.randn(y.shape, generator=g)
    x0 = few_step_sample(G, text_c, y, noise, ts=[1.0, 0.5], generator=g)
    edited = bb.decode(x0)
    assert edited.shape == y_img.shape
    l_vlm, stats = vlm_loss(critic, edited, y_img, QUESTIONS)
    assert torch.isfinite(l_vlm) and 0 < stats["p_correct"] < 1
    opt.zero_grad(set_to_none=True)
    l_vlm.backward(retain_graph=True)
    assert grad_norm(g_params) > 0  # the VLM loss reaches the generator through the decoder and the unroll

    # DMD: the frozen teacher (text-to-image, CFG on c^x) vs the auxiliary model on the noised output
    t = 0.02 + 0.96 * torch.rand(len(EDITS), generator=g)
    with torch.no_grad():
        x_t = renoise(x0.detach(), t, torch.randn(x0.shape, generator=g))
        v_real = guided_velocity(teacher, x_t, t, text_x, uncond, 3.5)
        v_fake = A(x_t, t, text_x, None)
        grad = dmd_gradient(x0.detach(), x_t, t, v_real, v_fake)
    vlm_grads = [p.grad.clone() for p in g_params]
    (0.5 * dmd_loss(x0, grad)).backward()
    assert any((p.grad - v).abs().max() > 0 for p, v in zip(g_params, vlm_grads))  # DMD adds its own gradient
    opt.step()
    assert any((p.detach() - before[n]).abs().max() > 0 for n, p in G.named_parameters() if p.requires_grad)

    # one auxiliary update: the fake score learns the generator's (detached) outputs
    a_params = [p for p in A.parameters() if p.requires_grad]
    loss_a = flow_loss(A, x0.detach(), torch.rand(len(EDITS), generator=g), torch.randn(x0.shape, generator=g), text_x)
    loss_a.backward()
    assert torch.isfinite(loss_a) and grad_norm(a_params) > 0
    assert all(p.grad is None for p in teacher.parameters())  # the teacher stays frozen

    # the 4-step sampler (with the backbone's time shift) edits into images of the working size
    with torch.no_grad():
        ts = timesteps(4, bb.shift)
        out = bb.decode(few_step_sample(G.eval(), text_c, y, torch.randn(y.shape, generator=g), ts=ts, generator=g))
    assert ts[0] == 1.0 and out.shape == (len(EDITS), 3, bb.image_size, bb.image_size) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# configs/models: every real-model fragment loads, and builds the same classes from a tiny folder

REPO = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = sorted((REPO / "configs" / "models").glob("*.yaml"))
TINY_KIND = {"sd3": "sd3", "flux": "flux_kontext", "llava": "llava", "llava_onevision": "llava_onevision",
             "internvl": "internvl", "qwen2_5_vl": "qwen2_5_vl", "zimage": "zimage"}


def test_every_real_model_has_a_config():
    names = {p.stem for p in MODEL_CONFIGS}
    assert {"sd3.5-medium", "sd3.5-large", "flux.1-dev", "flux.1-kontext-dev", "llava-onevision-0.5b", "llava-onevision-7b",
            "internvl3-1b", "internvl3-2b", "internvl3-8b", "internvl3-14b", "qwen2.5-vl-3b", "qwen2.5-vl-7b"} <= names


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_model_config_loads_and_builds_its_family(path, folders):
    """The fragment merged into a minimal run config passes the config loader as it is (hub id, bf16,
    checkpointing), and with only `path` changed to a local folder of the same classes it builds."""
    fragment = read_yaml(path)
    assert set(fragment) == {"model"} and set(fragment["model"]) <= {"backbone", "critic"}, f"{path}: only model.backbone / model.critic"
    raw = {"method": {"name": "np_edit"},
           "model": {"backbone": {"name": "sd3", "path": "some/backbone"}, "critic": {"name": "llava", "path": "some/critic"},
                     **fragment["model"]}}
    cfg = load_run_config(None, data=raw, source=str(path))
    for part, registry in (("backbone", BACKBONES), ("critic", CRITICS)):
        if part not in fragment["model"]:
            continue
        section = getattr(cfg.model, part)
        assert section.name in registry and "/" in section.path  # a hub id a user replaces by a local copy
        assert section.dtype == "bfloat16" and section.grad_checkpointing
        model = build(registry, section.name, {**to_dict(section), "path": str(folders(TINY_KIND[section.name]))})
        if part == "backbone":
            assert model.image_size == section.resolution and model.transformer.dtype == torch.bfloat16
        else:
            assert model.model.dtype == torch.bfloat16 and model.model.is_activation_checkpointing


# ---------------------------------------------------------------------------------------------
# scripts/gpu_check.py in its tiny CPU mode


def test_gpu_check_tiny_cpu_mode(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "result.json"
    result = gpu_check.main(["--device", "cpu", "--tiny", "--batch-size", "2", "--n-aux", "2", "--iters", "1",
                             "--workdir", str(tmp_path / "work"), "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["iters_timed"] == 1 and result["sec_per_iter"] > 0 and result["sec_per_sample"] == result["sec_per_iter"] / 2
    assert result["resolution"] == 32 and result["peak_memory_gib"] > 0
    assert all(math.isfinite(v) for v in result["final_losses"].values())
    # the memory estimate counts weights, gradients and Adam states of G and A, the teacher and the critic
    assert gpu_check.memory_estimate(10**9, 0, trainable_dtype="float32", lora_rank=0) == pytest.approx((2 + 2 * 16) * 10**9 / 1024**3)
