"""A canned VLM for the dataset builder's tests, on top of the judge tests' loopback OpenAI-compatible
server (tests/judge_server.py): it recognises which App. D step a request is (caption, proposal,
validity, prominence, backgrounds) and answers it with well-formed replies derived from the request,
unless a test overrides a step with its own function (malformed, failing, invalid replies...).

    vlm = CannedVLM()
    with ChatServer(vlm) as server: ... server.judged ... vlm.seen["validity"]
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from harness.data.edit_types import PAPER_NAMES, LOCAL_TYPES
from tests.judge_server import Recorded, Response, reply

# One instruction per type, in the built-in world's words (the tiny test models' vocabulary).
INSTRUCTIONS = {
    "color": ("make the red circle blue", "circle"),
    "texture": ("give the red circle stripes", "circle"),
    "adjust": ("make the red circle larger", "circle"),
    "add": ("add a green square at the top left", "square"),
    "remove": ("remove the red circle", "red circle"),
    "replace": ("replace the red circle with a green triangle", "red circle"),
    "background": ("make the background yellow", "background"),
    "style": ("draw the shapes as outlines", "image"),
    "action": ("move the red circle to the bottom right", "red circle"),
    "text": ("write hello on the red circle", "red circle"),
}
_NAME_TO_TYPE = {v: k for k, v in PAPER_NAMES.items()}


def stage_of(rec: Recorded) -> str:
    text = rec.text
    if "Validity:" in text and "Edit instruction:" in text:
        return "validity"
    if "Object Name" in text:
        return "prominence"
    if "Good example" in text:
        return "proposal"
    if "background captions" in text:
        return "backgrounds"
    if "caption" in rec.system.lower():
        return "caption"
    return "unknown"


def asked_types(rec: Recorded) -> list[str]:
    """The edit types a proposal prompt lists, in order."""
    line = re.search(r"edit types you may use are: (.*)", rec.text).group(1)
    return [_NAME_TO_TYPE[m.strip()] for m in re.findall(r"\d+\) ([^,]+?)(?=, \d+\)|$)", line)]


def asked_n(rec: Recorded) -> int:
    return int(re.search(r"Now write (\d+)", rec.text).group(1))


def proposal_reply(types: list[str]) -> str:
    items = []
    for i, t in enumerate(types, 1):
        instr, obj = INSTRUCTIONS[t]
        items.append(f"{i}. - Instruction: {instr}\n   - Type: {PAPER_NAMES[t]}\n   - Object: {obj}")
    return "Here are the instructions:\n\n" + "\n\n".join(items)


def default_proposal(rec: Recorded) -> Response:
    return reply(proposal_reply(asked_types(rec)[:asked_n(rec)]))


def default_validity(rec: Recorded) -> Response:
    instr = re.search(r"Edit instruction: (.*)", rec.text.split("Output format")[0]).group(1)
    return reply(f"Validity: valid\nReasoning: the shapes are there.\nEdited image caption: the image after: {instr}")


def default_caption(rec: Recorded) -> Response:
    return reply("a red circle on a white background")


def default_prominence(rec: Recorded) -> Response:
    return reply("Output: True\nReasoning: one object in the center.\nObject Name: red circle")


def default_backgrounds(rec: Recorded) -> Response:
    return reply("1. on a blue background at the top left\n2. on a green background at the bottom right\n"
                 "3. on a yellow background in the middle")


class CannedVLM:
    """The responder of a ChatServer; `overrides[stage]` replaces a step's answer; `seen` counts requests per step."""

    def __init__(self, **overrides: Callable[[Recorded], Response]):
        self.steps: dict[str, Callable[[Recorded], Response]] = {
            "caption": default_caption, "proposal": default_proposal, "validity": default_validity,
            "prominence": default_prominence, "backgrounds": default_backgrounds,
        }
        self.steps.update(overrides)
        self.seen: Counter = Counter()

    def __call__(self, rec: Recorded) -> Response:
        stage = stage_of(rec)
        self.seen[stage] += 1
        if stage not in self.steps:
            return Response(status=400, raw=b'{"error": {"message": "canned VLM: unknown request"}}')
        return self.steps[stage](rec)


__all__ = ["CannedVLM", "INSTRUCTIONS", "LOCAL_TYPES", "asked_n", "asked_types", "proposal_reply", "stage_of"]
