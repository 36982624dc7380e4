"""Real-width smoke runs: one NP-Edit iteration on CPU with the real-width, reduced-depth generator and
critic at 256 px in bf16 (every dimension of SD3.5-Medium's transformer but 2 of its blocks, one layer
per text encoder; LLaVA-OneVision-0.5B with 2 LM and 2 vision layers, its real vocabulary and anyres
processor), loaded from folders through the ordinary loaders. They catch what tiny configs hide: real
head counts, joint attention sizes over the real T5 length, the real processor's tile counts. Losses
are finite, gradients reach the trainable weights, and a checkpoint round trip resumes exactly.

Slow (about ten minutes on a 2-core CPU; run with `pytest -m slow tests/test_real_width.py`)."""
from __future__ import annotations

import math

import pytest
import torch

from harness import config as C
from harness import plan as P
from harness.models import archs
from harness.registry import BACKBONES, CRITICS
from harness.runstore import RunDir

pytestmark = pytest.mark.slow

VOCAB = P.critic_vocabulary() + ["do nothing", "keep the image unchanged", "leave the image as it is", "a dog on a sofa",
                                 "next to a red car"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_width")
    return {
        "sd3": archs.write_reduced_pipeline(archs.pipeline_arch("stabilityai/stable-diffusion-3.5-medium"), root / "sd3",
                                            blocks=2, vocab=VOCAB, dtype=torch.bfloat16),
        "critic": archs.write_reduced_vlm("llava_onevision", archs.vlm_arch("llava-hf/llava-onevision-qwen2-0.5b-ov-hf"),
                                          root / "critic", layers=2, vision_layers=2, vocab=VOCAB, dtype=torch.bfloat16),
    }


def config(folders, **method):
    return C.load_run_config(None, data={
        "method": {"name": "np_edit", "warmup_steps": 0, "single_step_steps": 0, "n_aux": 1, "noop_prob": 0.0, **method},
        "model": {"backbone": {"name": "sd3", "path": str(folders["sd3"]), "resolution": 256, "dtype": "bfloat16",
                               "grad_checkpointing": True, "lora_rank": 32, "lora_alpha": 64.0},
                  "critic": {"name": "llava_onevision", "path": str(folders["critic"]), "dtype": "bfloat16",
                             "grad_checkpointing": True}},
        "data": {"path": "unused", "batch_size": 2},
        "train": {"steps": 10, "lr": 1e-4},
        "eval": {"benchmarks": []},
    })


class Pictures(P.PlanData):
    """The planner's batches (a removal and a local edit) with random images in [-1, 1]."""

    tensor = staticmethod(lambda *shape: torch.rand(*shape, generator=torch.Generator().manual_seed(0)) * 2 - 1)


def build(cfg):
    cpu = torch.device("cpu")
    return P.build_method(cfg, lambda s: BACKBONES.get(s.name).build(s, cpu), lambda s: CRITICS.get(s.name).build(s, cpu), cpu,
                          data=Pictures)


def test_one_np_edit_iteration_at_real_width(folders, tmp_path):
    torch.manual_seed(0)
    cfg = config(folders)
    m = build(cfg)
    # the real processor's tokens: the removal question (edited image alone) is anyres, 729 per 384 px crop
    assert m.backbone.image_size == 256 and m.backbone.latent_shape() == (16, 32, 32)
    before = {n: p.detach().clone() for n, p in m.G.named_parameters() if p.requires_grad}
    metrics = m.train_step(0)
    for k in ("loss", "loss_vlm", "loss_dmd", "loss_aux", "grad_norm"):
        assert math.isfinite(metrics[k]), (k, metrics)
    assert metrics["grad_norm"] > 0
    moved = [n for n, p in m.G.named_parameters() if p.requires_grad and not torch.equal(p.detach(), before[n])]
    assert moved and all("lora_" in n for n in moved)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.A.parameters() if p.requires_grad)

    rd = RunDir(tmp_path / "run")
    rd.save_checkpoint(1, m.state_dict())
    resumed = build(cfg)
    resumed.load_state_dict(rd.load_checkpoint(rd.latest_checkpoint()[1])["state"])
    torch.manual_seed(1)
    a = m.train_step(1)
    torch.manual_seed(1)
    b = resumed.train_step(1)
    assert a == b  # the resumed method continues exactly as the one that kept running
