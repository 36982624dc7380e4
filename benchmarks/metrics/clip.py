"""CLIP image and text embeddings (DreamBooth's CLIP-I and CLIP-T) via open_clip.

The backbone is configurable: an open_clip model name with a pretrained tag or weights file, or
`local-dir:/folder` holding `open_clip_config.json` and the weights (the layout of open_clip models
on the HF hub, for clusters without hub access). The tokenizer is the model's own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from benchmarks.metrics.dino import resolve_device
from harness.config import nohash

if TYPE_CHECKING:
    import torch


@dataclass
class ClipConfig:
    model: str = "ViT-B-32"  # open_clip name, or 'local-dir:/path/to/folder'
    pretrained: str = "openai"  # a tag or a weights file; ignored for 'local-dir:' models
    batch_size: int = nohash(32)


class ClipEmbedder:
    def __init__(self, cfg: ClipConfig, device: str = "auto"):
        import open_clip

        self.cfg = cfg
        self.device = resolve_device(device)
        local = cfg.model.startswith("local-dir:")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                cfg.model, pretrained=None if local else (cfg.pretrained or None))
            self.tokenizer = open_clip.get_tokenizer(cfg.model)
        except (RuntimeError, OSError, ValueError) as e:
            raise RuntimeError(f"clip: cannot build open_clip model {cfg.model!r} (pretrained={cfg.pretrained!r}): {e}; "
                               "without hub access give a weights file or 'local-dir:FOLDER'") from e
        self.net = model.eval().to(self.device)
        self.preprocess = preprocess

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        import torch

        feats = []
        for i in range(0, len(images), self.cfg.batch_size):
            x = torch.stack([self.preprocess(im.convert("RGB")) for im in images[i:i + self.cfg.batch_size]])
            with torch.inference_mode():
                feats.append(self.net.encode_image(x.to(self.device)).float().cpu())
        return torch.nn.functional.normalize(torch.cat(feats), dim=-1) if feats else torch.zeros(0)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        import torch

        feats = []
        for i in range(0, len(texts), self.cfg.batch_size):
            tokens = self.tokenizer(texts[i:i + self.cfg.batch_size]).to(self.device)
            with torch.inference_mode():
                feats.append(self.net.encode_text(tokens).float().cpu())
        return torch.nn.functional.normalize(torch.cat(feats), dim=-1) if feats else torch.zeros(0)

    def meta(self) -> dict[str, Any]:
        return {"model": self.cfg.model, "pretrained": None if self.cfg.model.startswith("local-dir:") else self.cfg.pretrained}
