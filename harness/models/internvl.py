"""InternVL critics: transformers-native InternVLForConditionalGeneration (the "-hf" checkpoints:
InternViT, pixel shuffle 0.5, an MLP projector, a Qwen2 LM) with its InternVLProcessor.

The processor (GotOcr2 image processor with `crop_to_patches`, InternVLProcessor's default) tiles an
image into `size` crops on the grid (columns x rows, between min_patches and max_patches tiles) whose
aspect ratio is closest to the image's, resizing the whole image onto that grid, and appends a
thumbnail (the whole image resized to one crop) when there is more than one tile. Each tile becomes
`image_seq_length` tokens between <img> and </img>. `TilePreprocess` reproduces this with
differentiable torch ops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from harness.models.critic import VLMCritic, causal_lm_logits_at, load_vlm, resize, to_unit
from harness.registry import CRITICS, Spec


@dataclass
class InternVLCriticConfig:
    name: str = "internvl"
    path: str = ""  # folder or hub id of an InternVLForConditionalGeneration ("-hf" checkpoint) + its processor
    revision: str = ""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    grad_checkpointing: bool = False
    quantize: bool = False  # round the differentiable preprocessing to 8-bit levels (straight-through)
    # Most tiles per image (0 = the processor's max_patches, 12 for the real models); fewer = less memory.
    max_tiles: int = 0
    attn_implementation: Literal["", "eager", "sdpa", "flash_attention_2"] = ""

    def validate(self) -> None:
        if self.max_tiles < 0:
            raise ValueError(f"max_tiles must be >= 0 (0 = the processor's), got {self.max_tiles}")


def tile_grid(hw: tuple[int, int], tile: tuple[int, int], min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(columns, rows) of the tiling whose aspect ratio is closest to the image's; on ties the one
    with more tiles while the image covers more than half of their area (as GotOcr2's processor)."""
    h, w = hw
    grids = sorted(((c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if min_tiles <= c * r <= max_tiles),
                   key=lambda g: g[0] * g[1])
    best, best_diff = (1, 1), float("inf")
    for c, r in grids:
        diff = abs(w / h - c / r)
        if diff < best_diff:
            best, best_diff = (c, r), diff
        elif diff == best_diff and w * h > 0.5 * tile[0] * tile[1] * c * r:
            best = (c, r)
    return best


@dataclass(frozen=True)
class TilePreprocess:
    """InternVL's dynamic tiling (GotOcr2ImageProcessor, crop_to_patches) as differentiable torch ops."""

    tile: tuple[int, int]  # (h, w) of a tile: 448 x 448 for the real models
    min_tiles: int
    max_tiles: int
    resample: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    quantize: bool = False

    @classmethod
    def from_image_processor(cls, ip: Any, *, max_tiles: int = 0, quantize: bool = False) -> "TilePreprocess":
        size = dict(ip.size)
        resample = int(getattr(ip.resample, "value", ip.resample))
        return cls((size["height"], size["width"]), int(ip.min_patches), int(max_tiles or ip.max_patches), resample,
                   tuple(ip.image_mean), tuple(ip.image_std), quantize)

    def n_tiles(self, hw: tuple[int, int]) -> int:
        """Crops per image of size `hw`: the tiles, plus the thumbnail when there are several."""
        c, r = tile_grid(hw, self.tile, self.min_tiles, self.max_tiles)
        return c * r + (1 if c * r > 1 else 0)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, crops, 3, th, tw): tiles row by row, then the thumbnail."""
        x = to_unit(images)
        (th, tw), n = self.tile, x.shape[0]
        c, r = tile_grid(tuple(x.shape[-2:]), self.tile, self.min_tiles, self.max_tiles)
        canvas = resize(x, (r * th, c * tw), self.resample, quantize=self.quantize)
        crops = canvas.unfold(-2, th, th).unfold(-2, tw, tw).permute(0, 2, 3, 1, 4, 5).reshape(n, c * r, 3, th, tw)
        if c * r > 1:
            thumb = resize(x, (th, tw), self.resample, quantize=self.quantize)
            crops = torch.cat([crops, thumb.unsqueeze(1)], dim=1)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(3, 1, 1)
        return (crops - mean) / std


class InternVLLayout:
    """VLMLayout of InternVLForConditionalGeneration (see the module docstring)."""

    def __init__(self, model: nn.Module, processor: Any, *, max_tiles: int = 0, quantize: bool = False):
        self.model = model
        self.processor = processor
        if max_tiles:  # the processor must count the same tiles as the differentiable path
            processor.image_processor.max_patches = max_tiles
        self.image_token_id = int(model.config.image_token_id)
        self.preprocess = TilePreprocess.from_image_processor(processor.image_processor, max_tiles=max_tiles, quantize=quantize)
        vision = tuple(model.config.vision_config.image_size)
        if self.preprocess.tile != vision:
            raise ValueError(f"processor tiles are {self.preprocess.tile} px but the vision tower takes {vision} px")

    def blank_image(self) -> Any:
        from PIL import Image

        h, w = self.preprocess.tile
        return Image.new("RGB", (w, h))

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """(N, crops, 3, th, tw) in the model's dtype; the model's `pixel_values` is its flatten(0, 1)."""
        return self.preprocess(images).to(self.model.dtype)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        cfg = self.model.config
        n, crops = pixel_values.shape[:2]
        feats = self.model.model.get_image_features(
            pixel_values=pixel_values.flatten(0, 1), vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        )
        feats = getattr(feats, "pooler_output", feats)  # (N * crops, seq, D)
        return feats.reshape(n, crops * feats.shape[1], feats.shape[-1])

    def logits_at(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        return causal_lm_logits_at(self.model.model.language_model, self.model.lm_head, inputs_embeds, attention_mask, last)


def load_internvl_critic(cfg: InternVLCriticConfig, device: str | torch.device | None = None) -> VLMCritic:
    from transformers import InternVLForConditionalGeneration

    model, processor = load_vlm(InternVLForConditionalGeneration, cfg, device, what="a transformers-native InternVL model (an '-hf' checkpoint)")
    layout = InternVLLayout(model, processor, max_tiles=cfg.max_tiles, quantize=cfg.quantize)
    return VLMCritic(layout, name=f"internvl:{cfg.path}")


CRITICS.register("internvl", Spec(InternVLCriticConfig, build=load_internvl_critic,
                                  help="InternVLForConditionalGeneration ('-hf' checkpoints; dynamic 448 px tiling)"))

__all__ = ["InternVLCriticConfig", "InternVLLayout", "TilePreprocess", "load_internvl_critic", "tile_grid"]
