"""Qwen2.5-VL critics: transformers' Qwen2_5_VLForConditionalGeneration (a windowed ViT with 14 px
patches, temporal patch 2 and a 2 x 2 patch merger, and a Qwen2.5 LM with M-RoPE) with its
Qwen2_5_VLProcessor.

The processor resizes each image to `smart_resize` (both sides multiples of patch x merge = 28,
the pixel count within [min_pixels, max_pixels], aspect ratio kept), normalises it, and flattens it
into patches in merge-window order (2 x 2 neighbouring patches consecutive), each patch repeated
over the temporal axis (a still image is a 2-frame video); `image_grid_thw` = (1, h/14, w/14).
`QwenPatchPreprocess` reproduces this with differentiable torch ops. The LM's 3-D rotary positions
are computed by the model's own `get_rope_index` from the input ids and every image's grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from harness.models.critic import VLMCritic, load_vlm, resize, to_unit
from harness.registry import CRITICS, Spec


@dataclass
class QwenVLCriticConfig:
    name: str = "qwen2_5_vl"
    path: str = ""  # folder or hub id of a Qwen2_5_VLForConditionalGeneration + its processor
    revision: str = ""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    grad_checkpointing: bool = False
    quantize: bool = False  # round the differentiable preprocessing to 8-bit levels (straight-through)
    # Pixel budget of an image after smart_resize (0 = the processor's: 56*56 .. 28*28*1280); a lower
    # max_pixels means fewer image tokens and less memory.
    min_pixels: int = 0
    max_pixels: int = 0
    attn_implementation: Literal["", "eager", "sdpa", "flash_attention_2"] = ""

    def validate(self) -> None:
        if self.min_pixels < 0 or self.max_pixels < 0:
            raise ValueError(f"min_pixels and max_pixels must be >= 0 (0 = the processor's), got {self.min_pixels}, {self.max_pixels}")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")


def smart_resize(h: int, w: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's target size: sides multiples of `factor`, area within [min_pixels, max_pixels]."""
    if max(h, w) / min(h, w) > 200:
        raise ValueError(f"Qwen2.5-VL needs an aspect ratio below 200, got {max(h, w) / min(h, w):.1f} ({h}x{w})")
    hb, wb = round(h / factor) * factor, round(w / factor) * factor
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb, wb = max(factor, math.floor(h / beta / factor) * factor), max(factor, math.floor(w / beta / factor) * factor)
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hb, wb


@dataclass(frozen=True)
class QwenPatchPreprocess:
    """Qwen2VLImageProcessor as differentiable torch ops."""

    patch: int
    merge: int
    temporal: int
    min_pixels: int
    max_pixels: int
    resample: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    quantize: bool = False

    @classmethod
    def from_image_processor(cls, ip: Any, *, quantize: bool = False) -> "QwenPatchPreprocess":
        size = dict(ip.size)
        resample = int(getattr(ip.resample, "value", ip.resample))
        return cls(int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size), int(size["shortest_edge"]),
                   int(size["longest_edge"]), resample, tuple(ip.image_mean), tuple(ip.image_std), quantize)

    def grid(self, hw: tuple[int, int]) -> tuple[int, int, int]:
        """image_grid_thw of an image of size `hw`: (1, rows, columns) of patches."""
        h, w = smart_resize(hw[0], hw[1], self.patch * self.merge, self.min_pixels, self.max_pixels)
        return 1, h // self.patch, w // self.patch

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) in [-1, 1] -> (pixel_values (N * gh * gw, 3 * T * p * p), image_grid_thw (N, 3))."""
        x = to_unit(images)
        n = x.shape[0]
        _, gh, gw = self.grid(tuple(x.shape[-2:]))
        p, m, t = self.patch, self.merge, self.temporal
        x = resize(x, (gh * p, gw * p), self.resample, quantize=self.quantize)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(3, 1, 1)
        x = (x - mean) / std
        # (N, C, gh/m, m, p, gw/m, m, p) -> (N, gh/m, gw/m, m, m, C, p, p): merge windows, then the patches in each
        x = x.reshape(n, 3, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, t, -1, -1)  # each patch repeated over time: (.., C, T, p, p)
        pixel_values = x.reshape(n * gh * gw, 3 * t * p * p)
        grid = torch.tensor([[1, gh, gw]] * n, device=images.device)
        return pixel_values, grid


class QwenVLLayout:
    """VLMLayout of Qwen2_5_VLForConditionalGeneration (see the module docstring)."""

    needs_image_sizes = True

    def __init__(self, model: nn.Module, processor: Any, *, min_pixels: int = 0, max_pixels: int = 0, quantize: bool = False):
        self.model = model
        self.processor = processor
        ip = processor.image_processor
        if min_pixels or max_pixels:  # the processor must count the same tokens as the differentiable path
            ip.size = {"shortest_edge": min_pixels or ip.size["shortest_edge"], "longest_edge": max_pixels or ip.size["longest_edge"]}
        self.image_token_id = int(model.config.image_token_id)
        self.preprocess = QwenPatchPreprocess.from_image_processor(ip, quantize=quantize)
        vision = model.config.vision_config
        if (self.preprocess.patch, self.preprocess.merge, self.preprocess.temporal) != (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size):
            raise ValueError("the processor's patch/merge/temporal sizes differ from the vision tower's")

    def blank_image(self) -> Any:
        from PIL import Image

        side = self.preprocess.patch * self.preprocess.merge * 8
        return Image.new("RGB", (side, side))

    def pixel_values(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"pixel_values", "image_grid_thw"} as the processor gives them, images one after another."""
        pv, grid = self.preprocess(images)
        return {"pixel_values": pv.to(self.model.dtype), "image_grid_thw": grid}

    def image_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model.model.get_image_features(pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
        feats = getattr(out, "pooler_output", out)  # one (tokens, D) per image, all of one size
        return torch.stack(list(feats))

    def logits_at(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, last: torch.Tensor,
                  *, image_sizes: list[list[tuple[int, int]]]) -> torch.Tensor:
        """Next-token logits at `last` with the model's M-RoPE positions (image_sizes: (h, w) of each
        prompt's images, in order)."""
        m = self.model.model
        grid = torch.tensor([self.preprocess.grid(hw) for hw_list in image_sizes for hw in hw_list], device=input_ids.device)
        types = (input_ids == self.image_token_id).int()
        position_ids, _ = m.get_rope_index(input_ids, types, image_grid_thw=grid, attention_mask=attention_mask)
        out = m.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        hidden = out.last_hidden_state[torch.arange(input_ids.shape[0], device=last.device), last]
        return self.model.lm_head(hidden).float()


def load_qwen2_5_vl_critic(cfg: QwenVLCriticConfig, device: str | torch.device | None = None) -> VLMCritic:
    from transformers import Qwen2_5_VLForConditionalGeneration

    model, processor = load_vlm(Qwen2_5_VLForConditionalGeneration, cfg, device, what="a Qwen2.5-VL model")
    layout = QwenVLLayout(model, processor, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, quantize=cfg.quantize)
    return VLMCritic(layout, name=f"qwen2_5_vl:{cfg.path}")


CRITICS.register("qwen2_5_vl", Spec(QwenVLCriticConfig, build=load_qwen2_5_vl_critic,
                                    help="Qwen2_5_VLForConditionalGeneration (dynamic resolution, M-RoPE)"))

__all__ = ["QwenPatchPreprocess", "QwenVLCriticConfig", "QwenVLLayout", "load_qwen2_5_vl_critic", "smart_resize"]
