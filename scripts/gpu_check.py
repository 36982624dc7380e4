"""Throughput and memory of NP-Edit training on one GPU with real-size models (random weights, no
downloads): an SD3.5-Medium-size MMDiT (or SD3.5-Large / FLUX.1-dev size) with a
LLaVA-OneVision-7B-size critic (or 0.5B), at the paper's settings: 2-step unroll, two questions
per sample, DMD with the frozen teacher (CFG) and n_aux auxiliary updates, bf16 compute.

    python scripts/gpu_check.py                                   # SD3.5-M + LLaVA-OV-7B, batch 8, 1024 px
    python scripts/gpu_check.py --resolution 512 --batch-size 4 --n-aux 10 --iters 3
    python scripts/gpu_check.py --backbone flux.1-dev --lora-rank 32   # FLUX size, if it fits
    python scripts/gpu_check.py --device cpu --tiny               # smoke test of the same code path

The backbone is written once as a diffusers folder (real transformer and VAE configs; text encoders
with the real widths and sequence lengths but one layer, as they only run once per prompt under
no_grad) and loaded back through BACKBONES, the critic is built in memory from the real config with
the real image processor. Prints seconds per iteration and per sample and the peak GPU memory;
--json writes them. Trainable master weights are float32 when the estimate fits the free memory,
else bfloat16 (say which with --trainable-dtype); the estimate is printed before anything big is built.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.config import from_dict  # noqa: E402
from harness.models.sampler import few_step_sample, renoise  # noqa: E402
from harness.registry import BACKBONES, CRITICS  # noqa: E402
from methods.dmd import dmd_gradient, dmd_loss, flow_loss, guided_velocity  # noqa: E402
from methods.questions import questions_for  # noqa: E402
from methods.vlm_loss import vlm_loss  # noqa: E402

GB = 1024**3
EDITS = [  # (edit type, instruction, object, caption of the edited image)
    ("color", "make the car red", "", "a red car parked on a street"),
    ("remove", "remove the dog from the sofa", "dog", "an empty sofa in a living room"),
    ("add", "add a hat to the man", "", "a man wearing a hat"),
    ("style", "make it a watercolor painting", "", "a watercolor painting of a harbor"),
]
VOCAB = [q.text for kind, instr, obj, _ in EDITS for q in questions_for(kind, instr, obj)] + [e[1] for e in EDITS] + [e[3] for e in EDITS]

# Real configs (diffusers / transformers config.json values of the public checkpoints).
SD3_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16, norm_num_groups=32,
               scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
FLUX_VAE = {**SD3_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}
BACKBONE_PRESETS: dict[str, dict[str, Any]] = {
    "sd3.5-medium": dict(kind="sd3", vae=SD3_VAE, shift=3.0, transformer=dict(
        sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
        joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
        pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")),
    "sd3.5-large": dict(kind="sd3", vae=SD3_VAE, shift=3.0, transformer=dict(
        sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64, num_attention_heads=38,
        joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048, out_channels=16,
        pos_embed_max_size=192, qk_norm="rms_norm")),
    "flux.1-dev": dict(kind="flux", vae=FLUX_VAE, transformer=dict(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
        joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))),
}
CRITIC_PRESETS: dict[str, dict[str, Any]] = {  # llava-hf/llava-onevision-qwen2-{7b,0.5b}-ov-hf
    "llava-onevision-7b": dict(text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                                         num_key_value_heads=4, vocab_size=152128, rope_theta=1_000_000.0, tie_word_embeddings=False)),
    "llava-onevision-0.5b": dict(text=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                                           num_key_value_heads=2, vocab_size=151936, rope_theta=1_000_000.0, tie_word_embeddings=True)),
}
SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16, image_size=384, patch_size=14)


@contextlib.contextmanager
def building_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Construct modules directly on `device` in `dtype` (no float32 copy of a multi-billion model)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# Models


def write_backbone(preset: str, folder: Path, device: torch.device) -> tuple[Path, int]:
    """A diffusers folder of the preset's architecture with random weights; returns it and the
    transformer's parameter count."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from harness.models.tiny import BOS, EOS, PAD, UNK, build_tokenizer, write_folder_atomically

    p = BACKBONE_PRESETS[preset]
    flux = p["kind"] == "flux"
    t5_len = 512 if flux else 256
    clip_tok = lambda: build_tokenizer(VOCAB, special=[PAD, UNK, BOS, EOS], bos=BOS, eos=EOS, model_max_length=77, lowercase=True)  # noqa: E731
    t5_tok = build_tokenizer(VOCAB, special=[PAD, EOS, UNK], eos=EOS, model_max_length=t5_len, lowercase=True)

    def clip(cls, width, tok):  # real width and length, one layer: the text encoders run once per prompt, no_grad
        return cls(CLIPTextConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=4 * width, num_hidden_layers=1,
                                  num_attention_heads=width // 64, max_position_embeddings=77, projection_dim=width,
                                  pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))

    t5 = lambda: T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64,  # noqa: E731
                                         pad_token_id=t5_tok.pad_token_id, eos_token_id=t5_tok.eos_token_id, decoder_start_token_id=0))
    blocks = p["vae"]["block_out_channels"]
    with building_on(device, torch.bfloat16):
        transformer = (FluxTransformer2DModel if flux else SD3Transformer2DModel)(**p["transformer"])
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(blocks),
                            up_block_types=("UpDecoderBlock2D",) * len(blocks), sample_size=1024, **p["vae"])
        if flux:
            tok = clip_tok()
            comps = {"text_encoder": ("CLIPTextModel", clip(CLIPTextModel, 768, tok)), "tokenizer": ("PreTrainedTokenizerFast", tok),
                     "text_encoder_2": ("T5EncoderModel", t5()), "tokenizer_2": ("PreTrainedTokenizerFast", t5_tok)}
            sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                    base_image_seq_len=256, max_image_seq_len=4096)
        else:
            tok1, tok2 = clip_tok(), clip_tok()
            comps = {"text_encoder": ("CLIPTextModelWithProjection", clip(CLIPTextModelWithProjection, 768, tok1)),
                     "tokenizer": ("PreTrainedTokenizerFast", tok1),
                     "text_encoder_2": ("CLIPTextModelWithProjection", clip(CLIPTextModelWithProjection, 1280, tok2)),
                     "tokenizer_2": ("PreTrainedTokenizerFast", tok2),
                     "text_encoder_3": ("T5EncoderModel", t5()), "tokenizer_3": ("PreTrainedTokenizerFast", t5_tok)}
            sched = FlowMatchEulerDiscreteScheduler(shift=p["shift"])
    count = n_params(transformer)

    def fill(tmp: Path) -> None:
        index = {"_class_name": "FluxPipeline" if flux else "StableDiffusion3Pipeline",
                 "transformer": ["diffusers", type(transformer).__name__], "vae": ["diffusers", "AutoencoderKL"],
                 "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}
        transformer.save_pretrained(tmp / "transformer")
        vae.save_pretrained(tmp / "vae")
        sched.save_pretrained(tmp / "scheduler")
        for name, (cls, obj) in comps.items():
            obj.save_pretrained(tmp / name)
            index[name] = ["transformers", cls]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))

    write_folder_atomically(folder, fill)
    return folder, count


def build_critic(preset: str, device: torch.device, *, grad_checkpointing: bool) -> Any:
    """LLaVA-OneVision of the preset's size, random weights, with the real image processor."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    from harness.models.critic import VLMCritic, freeze
    from harness.models.llava_onevision import LlavaOnevisionLayout
    from harness.models.tiny import IM_END, IM_START, IMAGE, PAD, UNK, build_tokenizer, chatml_template

    words = ["system", "user", "assistant", "Yes", "No", *VOCAB]
    tok = build_tokenizer(words, special=[PAD, UNK, IM_START, IM_END, IMAGE, "<video>"], model_max_length=32768,
                          extra={"eos_token": IM_END, "extra_special_tokens": {"image_token": IMAGE, "video_token": "<video>"}})
    template = chatml_template(IMAGE)
    tok.chat_template = template
    improc = LlavaOnevisionImageProcessor()  # SigLIP 384 px crops, anyres grid up to 6 x 6, CLIP mean/std
    text = Qwen2Config(**CRITIC_PRESETS[preset]["text"], max_position_embeddings=32768, pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id)
    config = LlavaOnevisionConfig(vision_config=SiglipVisionConfig(**SIGLIP_SO400M), text_config=text,
                                  image_token_index=tok.convert_tokens_to_ids(IMAGE), video_token_index=tok.convert_tokens_to_ids("<video>"),
                                  vision_feature_select_strategy="full", vision_feature_layer=-1,
                                  image_grid_pinpoints=improc.image_grid_pinpoints, vision_aspect_ratio="anyres_max_9",
                                  tie_word_embeddings=text.tie_word_embeddings)
    with building_on(device, torch.bfloat16):
        model = LlavaOnevisionForConditionalGeneration(config)
    freeze(model, grad_checkpointing=grad_checkpointing)
    processor = LlavaOnevisionProcessor(image_processor=improc, tokenizer=tok, video_processor=LlavaOnevisionVideoProcessor(),
                                        num_image_tokens=(384 // 14) ** 2, vision_feature_select_strategy="full",
                                        chat_template=template, image_token=IMAGE, vision_aspect_ratio="anyres_max_9")
    return VLMCritic(LlavaOnevisionLayout(model, processor), name=f"random {preset}")


def build_tiny(folder: Path, device: torch.device, args: argparse.Namespace) -> tuple[Any, Any]:
    """The same classes at toy size, through the ordinary loading code."""
    from harness.models.tiny import save_tiny_flux, save_tiny_llava_onevision, save_tiny_sd3

    flux = BACKBONE_PRESETS[args.backbone]["kind"] == "flux"
    if flux:
        path = save_tiny_flux(folder / "backbone", vocab=VOCAB, image_size=args.resolution)
        extra = {"max_sequence_length": 16}
    else:
        path = save_tiny_sd3(folder / "backbone", pixel_space=False, three_text_encoders=True, vocab=VOCAB,
                             image_size=args.resolution, dual_attention_layers=(0,), qk_norm="rms_norm", shift=3.0)
        extra = {}
    bb = load_backbone("flux" if flux else "sd3", path, device, args, extra)
    critic_path = save_tiny_llava_onevision(folder / "critic", vocab=VOCAB)
    spec = CRITICS.get("llava_onevision")
    critic = spec.build(from_dict(spec.config, {"path": str(critic_path), "dtype": args.dtype,
                                                "grad_checkpointing": args.grad_checkpointing}), device)
    return bb, critic


def load_backbone(name: str, path: Path, device: torch.device, args: argparse.Namespace, extra: dict) -> Any:
    spec = BACKBONES.get(name)
    cfg = {"path": str(path), "dtype": args.dtype, "trainable_dtype": args.trainable_dtype, "resolution": args.resolution,
           "grad_checkpointing": args.grad_checkpointing, "lora_rank": args.lora_rank, "lora_alpha": 2.0 * args.lora_rank, **extra}
    return spec.build(from_dict(spec.config, cfg), device)


def memory_estimate(backbone_params: int, critic_params: int, *, trainable_dtype: str, lora_rank: int) -> float:
    """GiB of weights + gradients + Adam state: the teacher (bf16), G and A, the critic (bf16). Activations come on top."""
    if lora_rank:
        per_trainable = 2 * backbone_params  # a bf16 copy of the base; the adapter is small
    else:
        per_trainable = (4 + 4 + 8 if trainable_dtype == "float32" else 2 + 2 + 4) * backbone_params
    return (2 * backbone_params + 2 * per_trainable + 2 * critic_params) / GB


# ---------------------------------------------------------------------------------------------
# The NP-Edit iteration


def iteration(bb, critic, G, A, teacher, opt_g, opt_a, data, args, gen) -> dict[str, float]:
    y_img, y, text_c, text_x, uncond, questions = data
    b = y.shape[0]
    dev = y.device
    noise = torch.randn(y.shape, generator=gen, device=dev)
    x0 = few_step_sample(G, text_c, y, noise, ts=[1.0, args.unroll_t], generator=gen)  # 2-step unroll, with gradients
    edited = bb.decode(x0)
    l_vlm, _ = vlm_loss(critic, edited, y_img, questions)
    t = 0.02 + 0.96 * torch.rand(b, generator=gen, device=dev)
    with torch.no_grad():
        x_t = renoise(x0.detach(), t, torch.randn(y.shape, generator=gen, device=dev))
        v_real = guided_velocity(teacher, x_t, t, text_x, uncond, args.guidance)
        v_fake = A(x_t, t, text_x, None)
        grad = dmd_gradient(x0.detach(), x_t, t, v_real, v_fake)
    loss = args.lambda_vlm * l_vlm + args.lambda_dmd * dmd_loss(x0, grad)
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in G.parameters() if p.requires_grad], 1.0)
    opt_g.step()
    aux = []
    for _ in range(args.n_aux):
        with torch.no_grad():
            x0 = few_step_sample(G, text_c, y, torch.randn(y.shape, generator=gen, device=dev), ts=[1.0, args.unroll_t], generator=gen)
        la = flow_loss(A, x0, torch.rand(b, generator=gen, device=dev), torch.randn(y.shape, generator=gen, device=dev), text_x)
        opt_a.zero_grad(set_to_none=True)
        la.backward()
        opt_a.step()
        aux.append(float(la.detach()))
    return {"loss_vlm": float(l_vlm.detach()), "loss_aux": sum(aux) / max(1, len(aux))}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no GPU is visible (use --device cpu --tiny for a smoke test)")
    torch.manual_seed(0)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_check-"))
    t_build = time.perf_counter()
    if args.tiny:
        if args.trainable_dtype == "auto":
            args.trainable_dtype = "float32"
        bb, critic = build_tiny(work, device, args)
        backbone_params = n_params(bb.transformer)
    else:
        critic = build_critic(args.critic, device, grad_checkpointing=args.grad_checkpointing)
        folder, backbone_params = write_backbone(args.backbone, work / args.backbone, device)
        if cuda:
            torch.cuda.empty_cache()
        critic_params = n_params(critic.model)
        free = torch.cuda.mem_get_info(device)[0] / GB if cuda else float("inf")
        if args.trainable_dtype == "auto":
            fits = memory_estimate(backbone_params, 0, trainable_dtype="float32", lora_rank=args.lora_rank) * 1.15 + 8 < free
            args.trainable_dtype = "float32" if fits else "bfloat16"
        est = memory_estimate(backbone_params, critic_params, trainable_dtype=args.trainable_dtype, lora_rank=args.lora_rank)
        print(f"[gpu_check] backbone {args.backbone}: {backbone_params / 1e9:.2f}B params; critic {args.critic}: {critic_params / 1e9:.2f}B; "
              f"trainable master weights {args.trainable_dtype}{f', LoRA rank {args.lora_rank}' if args.lora_rank else ''}; "
              f"estimated weights+grads+Adam {est:.1f} GiB (critic included), free {free:.1f} GiB", flush=True)
        if est - 2 * critic_params / GB > free and not args.force:
            raise SystemExit(f"[gpu_check] does not fit one GPU ({est:.1f} GiB estimated): use --lora-rank, --trainable-dtype bfloat16, "
                             "a smaller --critic, or shard the backbone over GPUs (backbone fsdp)")
        kind = BACKBONE_PRESETS[args.backbone]["kind"]
        bb = load_backbone(kind, folder, device, args, {"shift": BACKBONE_PRESETS[args.backbone].get("shift", 0.0)})
    G = bb.make_denoiser(trainable=True)
    A = bb.make_denoiser(trainable=True, lora=None)
    teacher = bb.make_denoiser(trainable=False)
    opt_g = torch.optim.Adam([p for p in G.parameters() if p.requires_grad], lr=2e-6, betas=(0.0, 0.9))
    opt_a = torch.optim.Adam([p for p in A.parameters() if p.requires_grad], lr=2e-6, betas=(0.0, 0.9))
    build_s = time.perf_counter() - t_build

    b = args.batch_size
    edits = [EDITS[i % len(EDITS)] for i in range(b)]
    gen = torch.Generator(device=device).manual_seed(0)
    low = torch.rand(b, 3, 8, 8, generator=gen, device=device) * 2 - 1
    y_img = torch.nn.functional.interpolate(low, size=(bb.image_size,) * 2, mode="bilinear", align_corners=False)
    with torch.no_grad():
        data = (y_img, bb.encode_image(y_img), bb.encode_text([e[1] for e in edits]), bb.encode_text([e[3] for e in edits]),
                bb.encode_text([""])[[0] * b], [questions_for(k, i, o) for k, i, o, _ in edits])
    assert all(len(q) == 2 for q in data[-1])  # two questions per sample, as the paper

    times, losses = [], {}
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.iters + 1):  # the first iteration warms up (allocator, kernels) and is not timed
        t0 = time.perf_counter()
        losses = iteration(bb, critic, G, A, teacher, opt_g, opt_a, data, args, gen)
        if cuda:
            torch.cuda.synchronize(device)
        if i > 0 or args.iters == 0:
            times.append(time.perf_counter() - t0)
        print(f"[gpu_check] iteration {i}{' (warm-up)' if i == 0 and args.iters else ''}: {time.perf_counter() - t0:.2f} s, {losses}", flush=True)
    sec = sum(times) / len(times)
    peak = torch.cuda.max_memory_allocated(device) / GB if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu", "tiny": args.tiny, "backbone": args.backbone,
        "critic": args.critic, "backbone_params": backbone_params, "critic_params": n_params(critic.model),
        "batch_size": b, "resolution": bb.image_size, "n_aux": args.n_aux, "unroll_t": args.unroll_t, "dtype": args.dtype,
        "trainable_dtype": args.trainable_dtype, "lora_rank": args.lora_rank, "grad_checkpointing": args.grad_checkpointing,
        "iters_timed": len(times), "sec_per_iter": sec, "sec_per_sample": sec / b,
        "peak_memory_gib": peak, "peak_memory_kind": "cuda max_memory_allocated" if cuda else "process max RSS",
        "build_seconds": build_s, "final_losses": losses,
    }
    print(f"[gpu_check] {result['device']}: {sec:.2f} s/iteration, {sec / b:.3f} s/sample (batch {b}, {bb.image_size} px, "
          f"n_aux {args.n_aux}), peak memory {peak:.1f} GiB ({result['peak_memory_kind']})", flush=True)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="toy-size models of the same classes (a smoke test; runs on CPU)")
    p.add_argument("--backbone", default="sd3.5-medium", choices=sorted(BACKBONE_PRESETS))
    p.add_argument("--critic", default="llava-onevision-7b", choices=sorted(CRITIC_PRESETS))
    p.add_argument("--batch-size", type=int, default=8, help="samples per GPU (paper: 32 over 4 GPUs)")
    p.add_argument("--resolution", type=int, default=None, help="pixels (default 1024; 32 with --tiny)")
    p.add_argument("--n-aux", type=int, default=10, help="auxiliary updates per generator update (paper: 10)")
    p.add_argument("--iters", type=int, default=3, help="timed iterations (after one warm-up)")
    p.add_argument("--unroll-t", type=float, default=0.5, help="time of the unroll's second step (paper: 0.25, 0.5 or 0.75)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="compute dtype and frozen weights")
    p.add_argument("--trainable-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="master weights of G and A (auto: float32 if it fits the free memory)")
    p.add_argument("--lora-rank", type=int, default=0, help="LoRA on G and A instead of full fine-tuning (0 = full)")
    p.add_argument("--no-grad-checkpointing", dest="grad_checkpointing", action="store_false")
    p.add_argument("--guidance", type=float, default=3.5, help="teacher CFG scale")
    p.add_argument("--lambda-vlm", type=float, default=0.01)
    p.add_argument("--lambda-dmd", type=float, default=0.5)
    p.add_argument("--workdir", default="", help="where the random-weight backbone folder is written (default: a temp dir)")
    p.add_argument("--force", action="store_true", help="run even when the memory estimate exceeds the free memory")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.resolution is None:
        args.resolution = 32 if args.tiny else 1024
    if args.tiny and args.trainable_dtype == "auto":
        args.trainable_dtype = "float32"
    if args.tiny and args.dtype == "bfloat16" and args.device == "cpu":
        args.dtype = "float32"  # bf16 autocast on CPU is slow and not what a GPU run measures
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
