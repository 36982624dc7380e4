"""VIEScore with any judge: SC = min(SC sub-scores), PQ = min(PQ sub-scores), O = sqrt(SC * PQ).

Task "tie" (text-guided image editing): the SC request shows [source, edited] with the instruction;
task "sdig" (subject-driven generation): [subject image, generated] with the text prompt. The PQ
request shows the output alone. Both replies are JSON {"score": [s1, s2], "reasoning": ...}. A
sample is scored only when both replies parse; otherwise it is failed, with the reason kept. With
`judge.passes: N` each question's sub-scores are the means over its N replies, then min and sqrt.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from PIL import Image

from benchmarks.judges.base import JudgeRequest, JudgeRunner, parse_score_json
from benchmarks.judges.prompts import VIEPrompts

N_SUBSCORES = 2  # both tasks ask for two SC and two PQ sub-scores


@dataclass(frozen=True)
class VIEItem:
    """One output to judge. `load()` returns (conditioning images, output image), loaded only when asked."""

    id: str
    text: str  # the instruction (tie) or the text prompt (sdig)
    load: Callable[[], tuple[list[Image.Image], Image.Image]]


@dataclass
class VIEOutcome:
    id: str
    scores: dict[str, float] | None  # {"SC", "PQ", "Overall"} or None when failed
    sub_scores: dict[str, list[float]] | None = None
    error: str | None = None


def overall(sc: float, pq: float) -> float:
    return math.sqrt(sc * pq)


def score_items(runner: JudgeRunner, prompts: VIEPrompts, items: Sequence[VIEItem], *,
                progress: bool = True, desc: str = "VIEScore") -> list[VIEOutcome]:
    parse = partial(parse_score_json, n_scores=N_SUBSCORES, lo=0, hi=10)

    def make(pair: tuple[VIEItem, str]) -> tuple[JudgeRequest, Any]:
        item, kind = pair
        cond, out = item.load()
        if kind == "SC":
            return JudgeRequest(prompts.sc_for(item.text), (*cond, out)), parse
        return JudgeRequest(prompts.pq, (out,)), parse

    pairs = [(it, kind) for it in items for kind in ("SC", "PQ")]
    verdicts = runner.run(pairs, make, progress=progress, desc=desc)
    outcomes = []
    for i, it in enumerate(items):
        sc_v, pq_v = verdicts[2 * i], verdicts[2 * i + 1]
        if sc_v.ok and pq_v.ok:
            sc, pq = min(sc_v.value), min(pq_v.value)
            outcomes.append(VIEOutcome(it.id, {"SC": sc, "PQ": pq, "Overall": overall(sc, pq)},
                                       {"SC": sc_v.value, "PQ": pq_v.value}))
        else:
            errors = [f"{k}: {v.error}" for k, v in (("SC", sc_v), ("PQ", pq_v)) if not v.ok]
            outcomes.append(VIEOutcome(it.id, None, error="; ".join(errors)))
    return outcomes


def resize_to(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The edited image at the source's size, as the official GEdit script resizes it before judging."""
    image = image.convert("RGB")
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)
