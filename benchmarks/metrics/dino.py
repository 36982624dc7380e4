"""DINO image embeddings (DreamBooth's DINO metric: ViT-S/16 CLS-token cosine similarity) via timm.

The backbone is configurable: a timm model name plus an optional local weights file, so clusters
without hub access load from disk. Preprocessing is timm's evaluation transform for that model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from harness.config import nohash

if TYPE_CHECKING:
    import torch


@dataclass
class DinoConfig:
    model: str = "vit_small_patch16_224.dino"  # timm name; the DreamBooth metric uses DINO ViT-S/16
    weights: str = ""  # local weights file (.safetensors/.pth/.bin); '' = timm's own download (needs hub access)
    batch_size: int = nohash(32)


def resolve_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


class DinoEmbedder:
    def __init__(self, cfg: DinoConfig, device: str = "auto"):
        import timm
        from timm.data import create_transform, resolve_data_config

        self.cfg = cfg
        self.device = resolve_device(device)
        kwargs: dict[str, Any] = {"pretrained": True, "num_classes": 0}
        if cfg.weights:
            kwargs["pretrained_cfg_overlay"] = {"file": cfg.weights}
        try:
            self.net = timm.create_model(cfg.model, **kwargs).eval().to(self.device)
        except (RuntimeError, OSError, ValueError) as e:
            hint = f"weights file {cfg.weights!r}" if cfg.weights else "no dino.weights given (so timm tried its hub download)"
            raise RuntimeError(f"dino: cannot build timm model {cfg.model!r} with {hint}: {e}") from e
        self.transform = create_transform(**resolve_data_config({}, model=self.net))

    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        """L2-normalised pooled features (the CLS token for DINO ViTs), float32 on the CPU."""
        import torch

        feats = []
        for i in range(0, len(images), self.cfg.batch_size):
            x = torch.stack([self.transform(im.convert("RGB")) for im in images[i:i + self.cfg.batch_size]])
            with torch.inference_mode():
                feats.append(self.net(x.to(self.device)).float().cpu())
        if not feats:
            return torch.zeros(0, self.net.num_features)
        return torch.nn.functional.normalize(torch.cat(feats), dim=-1)

    def meta(self) -> dict[str, Any]:
        return {"model": self.cfg.model, "weights": self.cfg.weights or "timm default"}
