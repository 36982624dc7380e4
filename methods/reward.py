"""Rewards of edited images for RL baselines (Flow-GRPO, paper App. F), read from a VLM critic.

- `score`: the critic writes a 0-9 edit score for (reference, edited, instruction), with a prompt of
  this project's own wording in App. F's structure (role, answer format, rules, 0-9 scale, the
  instruction); the reply is parsed and the score divided by 9. A reply without a readable score is
  asked again with a short format reminder (`score_retries` times; greedy decoding makes repeating the
  same prompt pointless); if still unreadable, the sample gets no reward (NaN): the method leaves
  it out of its group's statistics and gives it advantage 0. Both are counted in the stats.
- `edit`: for critics that only answer Yes/No (the built-in world's), p(correct answer) =
  sigmoid(l_correct - l_other) over the Yes/No logits of the edit-verification question of App. E
  alone (for removal: "does the image have {object}", answer No). It is the Yes/No counterpart of
  App. F's edit score, which rates whether the instruction was carried out and nothing else: an
  unchanged copy earns little. This is the default for such critics.
- `yes_no`: the mean of p(correct answer) over the edit's App. E questions, the identity question
  included (`identity_question`): the probabilities NP-Edit's BCE loss maximises
  (methods/vlm_loss.py). It pays an unchanged copy for its identity answer, so RL with it is partly
  pushed toward copying; kept by name for comparison.
- `auto`: `score` when the critic writes readable scores, else `edit` (see `resolve_auto`).

Other rewards (e.g. a synthetic one in tests) register with `register_reward`.
A reward is a pure function of its images, so computing it in another thread changes nothing.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from methods.questions import Question, questions_for


class ReplyParseError(ValueError):
    pass


@dataclass
class Rewards:
    values: torch.Tensor  # (N,) float32 on CPU, in [0, 1]; NaN = no reward could be read
    stats: dict[str, float] = field(default_factory=dict)  # sums over the N samples (the caller averages)


class RewardModel(Protocol):
    def __call__(self, edited: torch.Tensor, refs: torch.Tensor, records: Sequence[Any]) -> Rewards:
        """edited, refs: (N, 3, H, W) in [-1, 1]; records: the N dataset records (instruction, edit_type, object)."""
        ...


@dataclass(frozen=True)
class RewardEntry:
    build: Callable[[Any, Any], RewardModel]  # (critic or None, method config) -> reward model
    needs_critic: bool = True
    help: str = ""


REWARDS: dict[str, RewardEntry] = {}


def register_reward(name: str, build: Callable[[Any, Any], RewardModel], *, needs_critic: bool = True,
                    help: str = "") -> None:
    if name == "auto" or (name in REWARDS and REWARDS[name].build is not build):
        raise ValueError(f"reward {name!r} is already registered")
    REWARDS[name] = RewardEntry(build, needs_critic, help)


def reward_names() -> list[str]:
    return sorted(REWARDS) + ["auto"]


# ---------------------------------------------------------------------------------------------
# score: the critic writes a 0-9 edit score


SCORE_PROMPT = (
    "You are an expert in image editing and a careful digital artist. Your job is to judge an image edit "
    "made by an AI system, following the rules below.\n"
    "Answer in exactly this form, and keep the reasoning to one short sentence:\n"
    "score : <one digit from 0 to 9>,\n"
    "reasoning : <why>\n"
    "RULES:\n"
    "You are shown two images: first the original image, then the result of editing it.\n"
    "Judge only how well the second image carries out the editing instruction.\n"
    "The edit may have failed, in which case the two images can look the same.\n"
    "Use the scale from 0 to 9: 0 means the edited image ignores the instruction entirely, "
    "9 means it carries out the instruction exactly.\n"
    "Editing instruction: {instruction}"
)
SCORE_REMINDER = (
    "The first image is an original, the second an edited version of it. How well does the second image carry "
    "out this editing instruction, from 0 (not at all) to 9 (exactly)? Reply with only 'score : <digit>'.\n"
    "Editing instruction: {instruction}"
)
SCORE_MAX = 9
_SCORE = re.compile(r"\bscore\**\s*[:=]\s*\**\s*(\d+)", re.IGNORECASE)
_BARE = re.compile(r"^\s*(\d+)\s*[.,]?\s*$")


def parse_score(reply: str, hi: int = SCORE_MAX) -> int:
    """The first 'score : <int>' of a reply (or a reply that is just a number), in [0, hi]."""
    if not reply or not reply.strip():
        raise ReplyParseError("empty reply")
    m = _SCORE.search(reply) or _BARE.match(reply)
    if m is None:
        raise ReplyParseError(f"no 'score : <int>' in {reply[:80]!r}")
    v = int(m.group(1))
    if not 0 <= v <= hi:
        raise ReplyParseError(f"score {v} is outside [0, {hi}]")
    return v


class ScoreReward:
    """r = score / 9 from the critic's generated reply (VLMCritic.generate, greedy)."""

    def __init__(self, critic: Any, *, retries: int = 1, max_new_tokens: int = 24):
        if not callable(getattr(critic, "generate", None)):
            raise TypeError(f"reward 'score' needs a critic that writes text (with generate()); "
                             f"{type(critic).__name__} has none: use reward 'yes_no'")
        self.critic, self.retries, self.max_new_tokens = critic, retries, max_new_tokens

    def score(self, ref: torch.Tensor, edited: torch.Tensor, instruction: str) -> tuple[int | None, int]:
        """(score or None, retries used)."""
        prompts = [SCORE_PROMPT] + [SCORE_REMINDER] * self.retries
        for k, p in enumerate(prompts):
            reply = self.critic.generate([ref, edited], p.format(instruction=instruction),
                                         max_new_tokens=self.max_new_tokens)
            try:
                return parse_score(reply), k
            except ReplyParseError:
                continue
        return None, self.retries

    def __call__(self, edited: torch.Tensor, refs: torch.Tensor, records: Sequence[Any]) -> Rewards:
        values, retried, failed = [], 0, 0
        for i, r in enumerate(records):
            s, k = self.score(refs[i], edited[i], r.instruction)
            retried += k
            failed += s is None
            values.append(float("nan") if s is None else s / SCORE_MAX)
        return Rewards(torch.tensor(values, dtype=torch.float32),
                       {"reward_retries": float(retried), "reward_unparsed": float(failed)})


# ---------------------------------------------------------------------------------------------
# yes_no: p(correct answer) to the App. E questions


def answer_probabilities(critic: Any, edited: torch.Tensor, refs: torch.Tensor,
                         questions: Sequence[Sequence[Question]]) -> tuple[torch.Tensor, torch.Tensor, list[Question]]:
    """p(correct answer) of every question (flattened), sigmoid of the Yes/No logit margin, and the
    sample index of each. questions[b] are the questions about sample b."""
    flat = [(b, q) for b, qs in enumerate(questions) for q in qs]
    if not flat:
        raise ValueError("no questions to ask the critic")
    logits = critic.next_token_logits([q.text for _, q in flat], edited, refs, [b for b, _ in flat],
                                      ref_mask=[q.two_images for _, q in flat]).float()
    yn = critic.yes_no_logits(logits)
    yes = torch.tensor([q.answer == "Yes" for _, q in flat], device=yn.device)
    margin = torch.where(yes, yn[:, 0] - yn[:, 1], yn[:, 1] - yn[:, 0])
    return torch.sigmoid(margin).cpu(), torch.tensor([b for b, _ in flat]), [q for _, q in flat]


class YesNoReward:
    """r = mean over the edit's App. E questions of p(correct answer) (identity question optional)."""

    def __init__(self, critic: Any, *, identity: bool = True, batch: int = 16):
        self.critic, self.identity, self.batch = critic, identity, batch

    def __call__(self, edited: torch.Tensor, refs: torch.Tensor, records: Sequence[Any]) -> Rewards:
        n = len(records)
        total = torch.zeros(n)
        count = torch.zeros(n)
        stats = {"edit": 0.0, "identity": 0.0}  # every edit has one question of each kind (identity: optional)
        asked = set()
        for s in range(0, n, self.batch):
            recs = records[s:s + self.batch]
            qs = [questions_for(r.edit_type, r.instruction, r.object, identity=self.identity) for r in recs]
            p, idx, flat = answer_probabilities(self.critic, edited[s:s + self.batch], refs[s:s + self.batch], qs)
            total.index_add_(0, idx + s, p)
            count.index_add_(0, idx + s, torch.ones_like(p))
            for pi, q in zip(p.tolist(), flat):
                stats[q.kind] += pi
                asked.add(q.kind)
        return Rewards(total / count, {f"p_{k}": v for k, v in stats.items() if k in asked})


register_reward("score", lambda critic, m: ScoreReward(critic, retries=m.score_retries,
                                                        max_new_tokens=m.score_max_tokens),
                help="the critic writes a 0-9 edit score (App. F), normalised to [0, 1]")
register_reward("edit", lambda critic, m: YesNoReward(critic, identity=False),
                help="p(correct answer) to the App. E edit-verification question, from the Yes/No logits")
register_reward("yes_no", lambda critic, m: YesNoReward(critic, identity=m.identity_question),
                help="mean p(correct answer) to the App. E questions (identity included), from the Yes/No logits")


def resolve_auto(critic: Any, refs: torch.Tensor, instructions: Sequence[str], *, max_new_tokens: int = 24) -> str:
    """'score' when the critic writes a readable score for at least half of the probe edits
    (each reference 'edited' into itself; greedy, so the choice is reproducible), else 'edit'."""
    if not callable(getattr(critic, "generate", None)):
        return "edit"
    ok = 0
    for ref, ins in zip(refs, instructions):
        reply = critic.generate([ref, ref], SCORE_PROMPT.format(instruction=ins), max_new_tokens=max_new_tokens)
        try:
            parse_score(reply)
            ok += 1
        except ReplyParseError:
            pass
    return "score" if 2 * ok >= len(instructions) else "edit"


def build_reward(name: str, critic: Any, method_cfg: Any) -> RewardModel:
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; known: {', '.join(reward_names())}")
    entry = REWARDS[name]
    if entry.needs_critic and critic is None:
        raise ValueError(f"reward {name!r} needs model.critic (a VLM)")
    return entry.build(critic, method_cfg)


__all__ = [
    "REWARDS",
    "SCORE_PROMPT",
    "ReplyParseError",
    "RewardModel",
    "Rewards",
    "ScoreReward",
    "YesNoReward",
    "answer_probabilities",
    "build_reward",
    "parse_score",
    "register_reward",
    "resolve_auto",
    "reward_names",
]
