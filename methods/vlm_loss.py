"""VLM editing loss (paper, Eq. 4): binary cross-entropy over the Yes/No logits of the critic,
or, as the ablation, the standard cross-entropy over the full vocabulary."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from harness.models.base import Critic
from methods.questions import Question


def vlm_loss(
    critic: Critic,
    edited: torch.Tensor,
    ref: torch.Tensor,
    questions: list[list[Question]],
    *,
    mode: Literal["bce", "ce"] = "bce",
    temperature: float = 1.0,
    weights: dict[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_VLM = -sum_j w_j log p(a_j), averaged over the batch; w_j = weights[kind of question j] (default 1).

    edited, ref: (B, 3, H, W) images in [-1, 1]; questions[b] are the questions about sample b.
    bce: p(a_j) = sigmoid((l_a - l_not_a) / temperature) over the Yes/No logits only.
    ce:  p(a_j) = softmax over the whole vocabulary, at the answer's first token.
    """
    flat = [(b, q) for b, qs in enumerate(questions) for q in qs]
    if not flat:
        return edited.sum() * 0.0, {}
    index = [b for b, _ in flat]
    logits = critic.next_token_logits(
        [q.text for _, q in flat], edited, ref, index, ref_mask=[q.two_images for _, q in flat]
    ).float()
    yes = torch.tensor([q.answer == "Yes" for _, q in flat], device=logits.device)
    yn = critic.yes_no_logits(logits)  # (Q, 2)
    margin = torch.where(yes, yn[:, 0] - yn[:, 1], yn[:, 1] - yn[:, 0])
    if mode == "bce":
        per_q = -F.logsigmoid(margin / temperature)
    elif mode == "ce":
        target = torch.tensor([critic.yes_ids[0] if q.answer == "Yes" else critic.no_ids[0] for _, q in flat],
                              device=logits.device)
        per_q = F.cross_entropy(logits, target, reduction="none")
    else:
        raise ValueError(f"mode must be 'bce' or 'ce', got {mode!r}")
    if weights:
        per_q = per_q * torch.tensor([weights.get(q.kind, 1.0) for _, q in flat], device=per_q.device)
    loss = per_q.sum() / len(questions)
    p = torch.sigmoid(margin.detach())
    stats = {"p_correct": float(p.mean())}
    for kind in ("edit", "identity"):
        sel = [i for i, (_, q) in enumerate(flat) if q.kind == kind]
        if sel:
            stats[f"p_{kind}"] = float(p[sel].mean())
    return loss, stats
