"""Tiny randomly initialised editing pipelines and Z-Image folders of the real diffusers classes, saved
with `save_pretrained` and loadable with `<Pipeline>.from_pretrained(path)`: they stand in for
FLUX.1-Kontext-dev, Qwen-Image-Edit(-2509), FLUX.2-klein and Z-Image in tests (no hub downloads).

- `save_tiny_editor(folder, "FluxKontextPipeline" | "QwenImageEditPipeline" | "QwenImageEditPlusPipeline"
  | "Flux2KleinPipeline")`: the pipeline's own components (transformer, VAE, text encoder(s),
  tokenizer(s), processor, scheduler) at toy widths.
- `save_tiny_zimage(folder)`: a ZImagePipeline folder (ZImageTransformer2DModel, AutoencoderKL, Qwen3
  text encoder with a chat template) for the Z-Image backbone.

Sizes: the Qwen-Image pipelines always encode the input image at about 1024 x 1024 pixels for the VAE
(their design), so their tiny VAE is kept narrow; the other pipelines work at the images' own size.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from harness.models.tiny import (
    IM_END, IM_START, PAD, UNK, build_tokenizer, chatml_template, save_tiny_flux, save_tiny_qwen2_5_vl,
    write_folder_atomically,
)

EDITOR_PIPELINES = ("FluxKontextPipeline", "QwenImageEditPipeline", "QwenImageEditPlusPipeline", "Flux2KleinPipeline")


def _save_pipeline(folder: str | os.PathLike, pipe) -> Path:
    return write_folder_atomically(folder, lambda tmp: pipe.save_pretrained(tmp))


def _qwen3_text_encoder(*, hidden: int, layers: int, heads: int, vocab: Sequence[str] | None, max_length: int):
    """A tiny Qwen3ForCausalLM and a chat-templated fast tokenizer (ChatML, as Qwen3's)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_tokenizer(None if vocab is None else ["system user assistant", *vocab],
                                special=[PAD, UNK, IM_START, IM_END], model_max_length=max_length,
                                extra={"eos_token": IM_END})
    tokenizer.chat_template = chatml_template("")
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         head_dim=hidden // heads, max_position_embeddings=max_length + 64,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                         tie_word_embeddings=False)
    return Qwen3ForCausalLM(config).eval(), tokenizer


def save_tiny_editor(folder: str | os.PathLike, pipeline: str, *, vocab: Sequence[str] | None = None,
                     seed: int = 0) -> Path:
    """Write a tiny random editing pipeline of class `pipeline` (one of EDITOR_PIPELINES)."""
    torch.manual_seed(seed)
    if pipeline == "FluxKontextPipeline":
        return save_tiny_flux(folder, kontext=True, guidance_embeds=True, vocab=vocab, seed=seed)
    if pipeline in ("QwenImageEditPipeline", "QwenImageEditPlusPipeline"):
        return _save_tiny_qwen_image_edit(folder, pipeline, vocab=vocab, seed=seed)
    if pipeline == "Flux2KleinPipeline":
        return _save_tiny_flux2_klein(folder, vocab=vocab, seed=seed)
    raise ValueError(f"no tiny builder for {pipeline!r}; known: {', '.join(EDITOR_PIPELINES)}")


def _save_tiny_qwen_image_edit(folder, pipeline: str, *, vocab, seed: int) -> Path:
    import diffusers
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import AutoProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    with tempfile.TemporaryDirectory() as tmp:  # the tiny Qwen2.5-VL of the critics, loaded back
        vl = save_tiny_qwen2_5_vl(Path(tmp) / "vl", vocab=vocab, text_dim=32, text_layers=1, vision_layers=1, seed=seed)
        text_encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(vl).eval()
        tokenizer = AutoTokenizer.from_pretrained(vl)
        processor = AutoProcessor.from_pretrained(vl)
    torch.manual_seed(seed)
    z = 4
    # 8x downsampling (3 stages) like the real VAE, so the ~1024 px condition image makes 64 x 64 tokens
    vae = AutoencoderKLQwenImage(base_dim=4, z_dim=z, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 temperal_downsample=[False, True, True], latents_mean=[0.0] * z, latents_std=[1.0] * z)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=4 * z, out_channels=z, num_layers=1,
                                              attention_head_dim=16, num_attention_heads=2,
                                              joint_attention_dim=text_encoder.config.text_config.hidden_size,
                                              axes_dims_rope=(4, 6, 6))
    scheduler = FlowMatchEulerDiscreteScheduler(  # Qwen-Image's scheduler settings
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0,
        shift_terminal=0.02, use_dynamic_shifting=True, time_shift_type="exponential")
    cls = getattr(diffusers, pipeline)
    pipe = cls(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, processor=processor,
               transformer=transformer)
    return _save_pipeline(folder, pipe)


def _save_tiny_flux2_klein(folder, *, vocab, seed: int, distilled: bool = True) -> Path:
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel

    # the pipeline reads hidden states 9, 18 and 27 of the text encoder: it needs 27 layers
    text_encoder, tokenizer = _qwen3_text_encoder(hidden=16, layers=27, heads=2, vocab=vocab, max_length=512)
    latent = 4
    vae = AutoencoderKLFlux2(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=latent,
                             norm_num_groups=8, sample_size=32, use_quant_conv=False, use_post_quant_conv=False)
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=4 * latent, num_layers=1, num_single_layers=1,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=3 * 16,
                                          timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=distilled)
    return _save_pipeline(folder, pipe)


def save_tiny_zimage(folder: str | os.PathLike, *, vocab: Sequence[str] | None = None, latent_channels: int = 4,
                     dim: int = 32, n_layers: int = 1, n_heads: int = 2, text_hidden: int = 16, max_length: int = 64,
                     shift: float = 6.0, seed: int = 0) -> Path:
    """Write a tiny random Z-Image folder (ZImagePipeline layout): ZImageTransformer2DModel (2 x 2 patches,
    RoPE over (frame, row, column)), a FLUX-style AutoencoderKL, a Qwen3 text encoder whose second-to-last
    hidden states are the caption features, and a static-shift FlowMatchEulerDiscreteScheduler."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    torch.manual_seed(seed)
    text_encoder, tokenizer = _qwen3_text_encoder(hidden=text_hidden, layers=2, heads=2, vocab=vocab, max_length=max_length)
    head = dim // n_heads
    rope = [head - 2 * (3 * head // 8), 3 * head // 8, 3 * head // 8]  # the real split is 32/48/48 of 128
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=latent_channels,
                                           dim=dim, n_layers=n_layers, n_refiner_layers=1, n_heads=n_heads,
                                           n_kv_heads=n_heads, cap_feat_dim=text_hidden, axes_dims=rope,
                                           axes_lens=[max_length + 64, 64, 64])
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=latent_channels, norm_num_groups=8, sample_size=32, scaling_factor=0.3611,
                        shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                          transformer=transformer)
    return _save_pipeline(folder, pipe)


__all__ = ["EDITOR_PIPELINES", "save_tiny_editor", "save_tiny_zimage"]
