"""The VLM steps of the paper's Appendix D, for one reference image, through the judge layer.

    (a) propose    instructions of the asked-for edit types (balanced, exact placements, single edits)
    (b) check      the validity question for every candidate, which also writes c^x
    (c) caption    c^y, when the corpus has no caption
    (d) customize  a prominent central object? then three new background captions for it

Every request goes through the judge layer (benchmarks.judges): its OpenAI-compatible client (retries
with backoff, key from the environment, every stored text scrubbed of it), its preflight and its
on-disk cache keyed by model, decoding parameters, prompt and image content. A reply the parser cannot
read is asked again (vlm.parse_retries) and then counted as failed; a failed step contributes nothing
(no caption, no instruction, no c^x is ever made up).
"""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from benchmarks.judges.base import JudgeFatalError, JudgeRequest, JudgeRunner, Verdict, build_judge, preflight
from benchmarks.judges.cache import JudgeCache
from harness import config as C
from harness.data.edit_types import LOCAL_TYPES, removed_object, with_article
from harness.data.prompts import (PromptSet, parse_backgrounds, parse_caption, parse_proposals, parse_prominence,
                                  parse_validity)
from harness.registry import JUDGES
from methods.questions import CUSTOMIZATION_PROMPT

BACKEND = "openai_api"


def load_vlm_config(path: str | None, overrides: list[str] = ()) -> Any:
    """The VLM's judge config: a YAML file of the `openai_api` judge's keys (configs/judges/*.yaml) with
    `vlm.KEY=VALUE` overrides; ConfigError naming the file or the override and the key."""
    raw = C.read_yaml(path) if path else {}
    raw.setdefault("name", BACKEND)
    if raw["name"] != BACKEND:
        raise C.ConfigError(f"{path}: key 'name': the builder talks to an OpenAI-compatible endpoint "
                            f"(name: {BACKEND}), got {raw['name']!r}")
    bad = [o for o in overrides if not o.split("=", 1)[0].startswith("vlm.")]
    if bad:
        raise C.ConfigError(f"command-line override {bad[0]!r}: VLM settings are vlm.KEY=VALUE, e.g. vlm.model=Qwen2.5-VL-32B-Instruct")
    data, keys = C.resolve_dict({"vlm": raw}, list(overrides))
    return C.build_section(JUDGES, data["vlm"], str(path or "<defaults>"), "vlm", keys)


class VLM:
    """One VLM behind the judge layer's runner: cached, retried, scrubbed, counted."""

    def __init__(self, cfg: Any, cache_dir: Path):
        self.cfg = cfg
        self.runner = JudgeRunner(build_judge(cfg), JudgeCache(cache_dir), parse_retries=int(cfg.parse_retries),
                                  retry_failed=bool(cfg.retry_failed), passes=1, preflight=False)
        self.concurrency = int(cfg.concurrency)
        self.preflight_calls = 0

    @property
    def model(self) -> str:
        return self.cfg.model

    def identity(self) -> dict[str, Any]:
        return self.runner.judge.identity()

    def preflight(self) -> None:
        """One cheap request (endpoint, key, model); JudgeFatalError (one line naming the key) if it fails."""
        try:
            self.preflight_calls += preflight(self.cfg)
        except JudgeFatalError as e:  # the judge layer names its keys judge.*; here they are vlm.*
            raise JudgeFatalError(str(e).replace("judge.", "vlm.").replace("judge preflight", "VLM preflight")) from e

    def ask(self, system: str, prompt: str, images: tuple[Image.Image, ...], parse: Callable[[str], Any]) -> Verdict:
        return self.runner.ask(JudgeRequest(prompt, images, system=system), parse)

    def stats(self) -> dict[str, int]:
        s = self.runner.stats
        return {"calls": s.calls + self.preflight_calls, "preflight_calls": self.preflight_calls,
                "cache_hits": s.cache_hits, "failed_requests": s.failed}


def failure_kind(v: Verdict) -> str:
    return "unparsable" if (v.error or "").startswith("unparsable reply") else "request"


@dataclass
class Outcome:
    """What the steps made of one image: records (without id and image), counts, and the failures."""

    records: list[dict[str, str]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    failures: list[dict[str, str]] = field(default_factory=list)

    def fail(self, stage: str, v: Verdict) -> None:
        kind = failure_kind(v)
        self.counts[f"failed_{stage}_{kind}"] += 1
        self.failures.append({"stage": stage, "kind": kind, "error": v.error or ""})


# ---------------------------------------------------------------------------------------------
# The steps


def caption(vlm: VLM, P: PromptSet, image: Image.Image) -> Verdict:
    """(c) c^y for a reference whose corpus has none (our prompt: the paper takes c^y from its corpus)."""
    return vlm.ask(P.text("caption", "system"), P.text("caption", "user"), (image,), parse_caption)


def check(vlm: VLM, P: PromptSet, image: Image.Image, edit_type: str, instruction: str, caption_ref: str) -> Verdict:
    """(b) the validity question; a valid verdict carries c^x."""
    return vlm.ask(P.text("validity", "system"), P.validity(edit_type, instruction, caption_ref), (image,), parse_validity)


def annotate_image(vlm: VLM, P: PromptSet, image: Image.Image, corpus_caption: str | None, *, types: list[str],
                   per_image: int, customization: bool, rng: random.Random,
                   example: Image.Image | None = None) -> Outcome:
    """Steps (a)-(d) for one reference image."""
    out = Outcome()
    if corpus_caption:
        cap = corpus_caption
        out.counts["captions_from_corpus"] += 1
    else:
        v = caption(vlm, P, image)
        if not v.ok:
            out.fail("caption", v)
            return out  # no c^y, no records: nothing is made up
        cap = v.value
        out.counts["captions_from_vlm"] += 1

    local = [t for t in LOCAL_TYPES if t in types]
    if local:
        v = vlm.ask(P.text("proposal", "system"), P.proposal(local, per_image, rng), (image,),
                    lambda r: parse_proposals(r, local, P.aliases, per_image))
        if not v.ok:
            out.fail("proposal", v)
        else:
            out.counts["proposals"] += len(v.value.items)
            out.counts["proposals_off_type"] += v.value.off_type
            out.counts["proposals_duplicate"] += v.value.duplicates
            for prop in v.value.items:
                obj = prop.object
                if prop.edit_type == "remove":
                    obj = obj or removed_object(prop.instruction)
                    if not obj:
                        out.counts["remove_without_object"] += 1  # the removal question needs the object
                        continue
                verdict = check(vlm, P, image, prop.edit_type, prop.instruction, cap)
                if not verdict.ok:
                    out.fail("validity", verdict)
                elif not verdict.value.valid:
                    out.counts["rejected_invalid"] += 1
                else:
                    out.records.append({"edit_type": prop.edit_type, "instruction": prop.instruction, "object": obj,
                                        "caption_ref": cap, "caption_edit": verdict.value.caption})

    if customization:
        images = (example, image) if example is not None else (image,)
        v = vlm.ask(P.text("customization", "system"), P.prominence(), images, parse_prominence)
        if not v.ok:
            out.fail("prominence", v)
        elif not v.value.prominent:
            out.counts["customization_not_prominent"] += 1
        else:
            out.counts["customization_prominent"] += 1
            obj = v.value.object
            b = vlm.ask(P.text("customization", "system"), P.backgrounds(obj), (image,), parse_backgrounds)
            if not b.ok:
                out.fail("backgrounds", b)
            elif not b.value:
                out.counts["customization_scene_not_object"] += 1
            for scene in (b.value or []) if b.ok else []:
                out.records.append({"edit_type": "customization", "instruction": CUSTOMIZATION_PROMPT.format(scene=scene),
                                    "object": obj, "caption_ref": cap, "caption_edit": f"{with_article(obj)} {scene}"})
    return out
