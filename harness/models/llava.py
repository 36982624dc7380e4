"""LLaVA critics: transformers' LlavaForConditionalGeneration (a CLIP or SigLIP vision tower, a
projector and a causal LM such as Qwen2 or Llama), with a CLIP/SigLIP-style image processor
(llava-1.5, llava-interleave, and the built-in world's tiny critics)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from harness.models.critic import ClipStylePreprocess, VLMCritic, causal_lm_logits_at, freeze
from harness.registry import CRITICS, Spec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LlavaCriticConfig:
    name: str = "llava"
    path: str = ""  # folder or hub id of a LlavaForConditionalGeneration + its processor
    revision: str = ""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Recompute activations in the backward pass (gradients still reach the edited image).
    grad_checkpointing: bool = False
    # Round the differentiable preprocessing to 8-bit levels (straight-through), as the processor does.
    quantize: bool = False


class LlavaLayout:
    """VLMLayout of LlavaForConditionalGeneration: one fixed-size crop per image, features from
    `get_image_features` (vision tower layer + select strategy of the config, then the projector)."""

    def __init__(self, model: nn.Module, processor: Any, *, quantize: bool = False):
        self.model = model
        self.processor = processor
        cfg = model.config
        self.image_token_id = int(getattr(cfg, "image_token_id", None) or cfg.image_token_index)
        self.preprocess = ClipStylePreprocess.from_image_processor(processor.image_processor, quantize=quantize)
        vision = cfg.vision_config
        self.input_size = self.preprocess.output_size((vision.image_size, vision.image_size))

    def blank_image(self) -> Any:
        from PIL import Image

        h, w = self.input_size
        return Image.new("RGB", (w, h))

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        return self.preprocess(images).to(self.model.dtype)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        cfg = self.model.config
        out = self.model.model.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        )
        feats = getattr(out, "pooler_output", out)  # transformers 5 returns an output object, 4.x the features
        return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats

    def logits_at(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        return causal_lm_logits_at(self.model.model.language_model, self.model.lm_head, inputs_embeds, attention_mask, last)


def load_llava_critic(cfg: LlavaCriticConfig, device: str | torch.device | None = None) -> VLMCritic:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    if not cfg.path:
        raise ValueError("critic.path: empty; set it to a LLaVA folder or hub id")
    kw: dict[str, Any] = {"revision": cfg.revision or None}
    try:
        model = LlavaForConditionalGeneration.from_pretrained(cfg.path, dtype=DTYPES[cfg.dtype], **kw)
        processor = AutoProcessor.from_pretrained(cfg.path, **kw)
    except (OSError, ValueError) as e:
        raise ValueError(f"critic.path: cannot load a LLaVA model and processor from {cfg.path}: {e}") from e
    model.to(torch.device(device or "cpu"))
    freeze(model, grad_checkpointing=cfg.grad_checkpointing)
    return VLMCritic(LlavaLayout(model, processor, quantize=cfg.quantize), name=f"llava:{cfg.path}")


CRITICS.register("llava", Spec(LlavaCriticConfig, build=load_llava_critic, help="LlavaForConditionalGeneration (CLIP/SigLIP + causal LM)"))

__all__ = ["LlavaCriticConfig", "LlavaLayout", "load_llava_critic"]
