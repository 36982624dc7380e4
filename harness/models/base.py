"""Interfaces of the models a method trains with: a generator backbone and a VLM critic.

Images cross these interfaces as float tensors (B, 3, H, W) in [-1, 1]; latents are whatever the
backbone's VAE makes (the identity in pixel space).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@dataclass
class TextEmbedding:
    """Text conditioning of a diffusers flow transformer."""

    hidden: torch.Tensor  # (B, L, D): encoder_hidden_states
    pooled: torch.Tensor  # (B, P): pooled_projections

    def __getitem__(self, idx) -> "TextEmbedding":
        return TextEmbedding(self.hidden[idx], self.pooled[idx])

    def to(self, *args, **kwargs) -> "TextEmbedding":
        return TextEmbedding(self.hidden.to(*args, **kwargs), self.pooled.to(*args, **kwargs))

    @staticmethod
    def cat(items: list["TextEmbedding"]) -> "TextEmbedding":
        return TextEmbedding(torch.cat([i.hidden for i in items]), torch.cat([i.pooled for i in items]))


def cached_text_embedding(cache: "OrderedDict[str, tuple[torch.Tensor, torch.Tensor]]", prompts: list[str],
                          encode_one: Any, size: int) -> TextEmbedding:
    """Each prompt's (hidden, pooled) from an LRU cache, encoded one prompt per forward when missing (an
    embedding must not depend on which prompts shared its batch, or resumed runs would drift from
    uninterrupted ones); the cache keeps at least this call's prompts."""
    if isinstance(prompts, str):
        raise TypeError("encode_text takes a list of prompts, not a string")
    for p in dict.fromkeys(p for p in prompts if p not in cache):
        cache[p] = encode_one(p)
    rows = []
    for p in prompts:
        cache.move_to_end(p)
        rows.append(cache[p])
    out = TextEmbedding(torch.stack([h for h, _ in rows]), torch.stack([q for _, q in rows]))
    while len(cache) > max(size, len(set(prompts))):
        cache.popitem(last=False)
    return out


@runtime_checkable
class Denoiser(Protocol):
    """A flow transformer with reference-image conditioning: v = D(x_t, t, text, ref).

    x_t = (1 - t) x + t eps, v = eps - x (t = 1 is pure noise). `ref` are clean reference latents
    (detached) concatenated to the target tokens along the sequence; None = plain text-to-image.
    """

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, text: TextEmbedding, ref: torch.Tensor | None = None) -> torch.Tensor: ...

    def parameters(self): ...


@runtime_checkable
class Backbone(Protocol):
    """The pretrained text-to-image model's frozen parts (text encoders, VAE) and a factory of
    denoisers (generator G_theta, auxiliary A_phi, teacher) that start from its pretrained weights."""

    image_size: int  # working resolution in pixels (square)
    shift: float  # time shift of the few-step sampler: t' = s t / (1 + (s - 1) t)

    def encode_text(self, prompts: list[str]) -> TextEmbedding: ...

    def encode_image(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def latent_shape(self) -> tuple[int, int, int]: ...

    def make_denoiser(self, *, trainable: bool) -> nn.Module: ...


@runtime_checkable
class Critic(Protocol):
    """A frozen VLM answering questions about (reference, edited) image pairs.

    `next_token_logits` returns the logits of the first answer token for each question, over the full
    vocabulary. Question q looks at edited[index[q]] (and ref[index[q]] first, when ref is given).
    The preprocessing of `edited` is differentiable; `ref` is encoded without gradient.
    """

    yes_ids: list[int]  # token ids that spell "Yes" as the first answer token (with/without leading space)
    no_ids: list[int]

    def next_token_logits(
        self,
        questions: list[str],
        edited: torch.Tensor,
        ref: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor: ...
