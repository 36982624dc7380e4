"""The builder's prompt file (App. D's prompts with the user's examples) and the parsers of the VLM's replies.

A prompt file is YAML (see harness/data/prompts/default.yaml for every key). Its version is a hash of
its content (and of the example image's bytes), recorded in every record the builder writes, so data
made with different prompts never mix unnoticed. The parsers raise ReplyParseError on a reply they
cannot trust; the judge runner then asks again and, after its retries, counts the request as failed:
nothing is ever filled in for a reply that failed.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.judges.base import ReplyParseError
from harness.data.edit_types import LOCAL_TYPES, PAPER_NAMES, alias_table, parse_type

DEFAULT_PROMPTS = Path(__file__).with_name("prompts") / "default.yaml"

# (section, key, placeholders the template must contain)
_TEMPLATES = (
    ("proposal", "system", ()),
    ("proposal", "user", ("type_list", "n", "good_examples", "bad_examples")),
    ("validity", "system", ()),
    ("validity", "user", ("edit_type", "instruction", "caption")),
    ("customization", "system", ()),
    ("customization", "prominence", ()),
    ("customization", "prominence_single", ()),
    ("customization", "backgrounds", ("object",)),
    ("caption", "system", ()),
    ("caption", "user", ()),
)


class PromptFileError(ValueError):
    pass


@dataclass(frozen=True)
class Example:
    instruction: str
    object: str = ""


@dataclass
class PromptSet:
    path: Path
    name: str
    raw: dict[str, Any]
    type_names: dict[str, str]
    good: dict[str, list[Example]]
    bad: list[dict[str, str]]
    example_image: Path | None
    version: str
    aliases: dict[str, str] = field(default_factory=dict)

    def text(self, section: str, key: str) -> str:
        return self.raw[section][key]

    # ---- (a) proposals --------------------------------------------------------------------

    def proposal(self, types: list[str], n: int, rng: random.Random) -> str:
        """The proposal prompt for `types` asking for `n` instructions; one good example per type is
        drawn with `rng` (App. D: 'we randomly select an edit instruction for each editing type')."""
        missing = [t for t in types if not self.good.get(t)]
        if missing:
            raise PromptFileError(f"{self.path}: key 'proposal.good_examples' has no example for {missing} "
                                  f"(every type the build asks for needs at least one)")
        type_list = ", ".join(f"{i}) {self.type_names[t]}" for i, t in enumerate(types, 1))
        goods = []
        for i, t in enumerate(types, 1):
            ex = rng.choice(self.good[t])
            lines = [f"Good example {i}:", f"- Instruction: {ex.instruction}", f"- Type: {self.type_names[t]}"]
            if ex.object:
                lines.append(f"- Object: {ex.object}")
            goods.append("\n".join(lines))
        bads = []
        for i, b in enumerate(self.bad, 1):
            bads.append("\n".join([f"Bad example {i}:", f"- Instruction: {b['instruction']}", f"- Type: {b['type']}",
                                   f"- Reasoning: {b['reasoning']}"]))
        return self.text("proposal", "user").format(type_list=type_list, n=n, good_examples="\n\n".join(goods),
                                                    bad_examples="\n\n".join(bads))

    # ---- (b) validity and c^x ----------------------------------------------------------------

    def validity(self, edit_type: str, instruction: str, caption: str) -> str:
        return self.text("validity", "user").format(edit_type=self.type_names.get(edit_type, edit_type),
                                                    instruction=instruction, caption=caption)

    # ---- (d) customization -------------------------------------------------------------------

    def prominence(self) -> str:
        return self.text("customization", "prominence" if self.example_image else "prominence_single")

    def backgrounds(self, obj: str) -> str:
        return self.text("customization", "backgrounds").format(object=obj)


def _placeholders(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


def load_prompts(path: str | Path | None = None) -> PromptSet:
    """Read and check a prompt file; every mistake is one line naming the file and the key."""
    path = Path(path) if path else DEFAULT_PROMPTS
    if not path.is_file():
        raise PromptFileError(f"{path}: prompt file not found (start from {DEFAULT_PROMPTS})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise PromptFileError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise PromptFileError(f"{path}: expected a mapping at the top level")
    for section, key, needed in _TEMPLATES:
        sec = raw.get(section)
        if not isinstance(sec, dict) or not isinstance(sec.get(key), str) or not sec[key].strip():
            raise PromptFileError(f"{path}: key '{section}.{key}' must be a non-empty text")
        try:
            found = _placeholders(sec[key])
        except ValueError as e:
            raise PromptFileError(f"{path}: key '{section}.{key}': {e} (write literal braces as {{{{ and }}}})") from None
        unknown = sorted(found - set(needed))
        if unknown:
            raise PromptFileError(f"{path}: key '{section}.{key}': unknown placeholders {unknown} "
                                  f"(allowed: {list(needed) or 'none'}; literal braces are {{{{ and }}}})")
        absent = [p for p in needed if p not in found]
        if absent:
            raise PromptFileError(f"{path}: key '{section}.{key}' must contain {['{' + p + '}' for p in absent]}")
    names = raw.get("type_names") or {}
    if not isinstance(names, dict) or set(names) - set(LOCAL_TYPES):
        raise PromptFileError(f"{path}: key 'type_names' must map edit types ({', '.join(LOCAL_TYPES)}) to names")
    type_names = {**PAPER_NAMES, **{k: str(v) for k, v in names.items()}}
    good_raw = raw["proposal"].get("good_examples") or {}
    if not isinstance(good_raw, dict) or set(good_raw) - set(LOCAL_TYPES):
        raise PromptFileError(f"{path}: key 'proposal.good_examples' must map edit types "
                              f"({', '.join(LOCAL_TYPES)}) to lists of examples")
    good: dict[str, list[Example]] = {}
    for t, items in good_raw.items():
        if not isinstance(items, list):
            raise PromptFileError(f"{path}: key 'proposal.good_examples.{t}' must be a list")
        exs = []
        for i, it in enumerate(items):
            if isinstance(it, str):
                exs.append(Example(it))
            elif isinstance(it, dict) and isinstance(it.get("instruction"), str):
                exs.append(Example(it["instruction"], str(it.get("object") or "")))
            else:
                raise PromptFileError(f"{path}: key 'proposal.good_examples.{t}[{i}]': expected a text or "
                                      "{instruction: ..., object: ...}")
        good[t] = exs
    bad = raw["proposal"].get("bad_examples") or []
    if not isinstance(bad, list) or not all(isinstance(b, dict) and {"instruction", "type", "reasoning"} <= b.keys()
                                            for b in bad):
        raise PromptFileError(f"{path}: key 'proposal.bad_examples' must be a list of "
                              "{instruction: ..., type: ..., reasoning: ...}")
    example = raw["customization"].get("example_image")
    example_path = None
    h = hashlib.sha256(json.dumps(raw, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    if example:
        example_path = (path.parent / str(example)).resolve()
        if not example_path.is_file():
            raise PromptFileError(f"{path}: key 'customization.example_image': file not found: {example_path}")
        h.update(example_path.read_bytes())
    return PromptSet(path=path, name=str(raw.get("name") or path.stem), raw=raw, type_names=type_names, good=good,
                     bad=[{k: str(b[k]) for k in ("instruction", "type", "reasoning")} for b in bad],
                     example_image=example_path, version=h.hexdigest()[:12], aliases=alias_table(type_names))


# ---------------------------------------------------------------------------------------------
# Reply parsers


_FIELD = re.compile(r"^(?:[\s>*#\-•]|\d+\s*[.)])*[*_]*\s*(?P<key>[A-Za-z][A-Za-z ^_]*?)\s*[*_]*\s*:\s*[*_]*\s*(?P<value>.*?)\s*[*_]*\s*$")


def _fields(reply: str) -> list[tuple[str, str]]:
    """(lower-case key, value) for every 'Key: value' line, markdown bullets, bold and numbering stripped."""
    out = []
    for line in reply.splitlines():
        m = _FIELD.match(line)
        if m:
            out.append((" ".join(m.group("key").lower().replace("_", " ").split()), m.group("value").strip().strip('"')))
    return out


@dataclass(frozen=True)
class Proposal:
    edit_type: str
    instruction: str
    object: str = ""


@dataclass
class Proposals:
    items: list[Proposal]
    off_type: int = 0  # parsed items whose type is not one the build asked for
    duplicates: int = 0


def parse_proposals(reply: str, allowed: list[str], aliases: dict[str, str], n: int) -> Proposals:
    """Items of 'Instruction: ... / Type: ... [/ Object: ...]' in the reply, in order, at most `n`;
    an item of a type outside `allowed` is counted, not kept. No usable item: ReplyParseError."""
    items: list[dict[str, str]] = []
    for key, value in _fields(reply):
        if key in ("instruction", "edit instruction"):
            items.append({"instruction": value})
        elif items and key in ("type", "edit type") and "type" not in items[-1]:
            items[-1]["type"] = value
        elif items and key in ("object", "object name") and "object" not in items[-1]:
            items[-1]["object"] = value
    out = Proposals([])
    seen = set()
    for it in items:
        if not it.get("instruction") or not it.get("type"):
            continue
        t = parse_type(it["type"], aliases)
        if t not in allowed:
            out.off_type += 1
            continue
        key = " ".join(it["instruction"].lower().split())
        if key in seen:
            out.duplicates += 1
            continue
        seen.add(key)
        obj = it.get("object", "")
        out.items.append(Proposal(t, it["instruction"], "" if obj.lower() in ("", "na", "n/a", "none") else obj))
    if not out.items:
        raise ReplyParseError("no 'Instruction: ... Type: ...' item of an allowed edit type in the reply"
                              if items else "no 'Instruction:' line in the reply")
    out.items = out.items[:n]
    return out


@dataclass(frozen=True)
class Validity:
    valid: bool
    caption: str  # c^x ('' when invalid)
    reasoning: str = ""


def parse_validity(reply: str) -> Validity:
    f = dict(reversed(_fields(reply)))  # the first occurrence of each key wins
    verdict = f.get("validity", "").lower()
    word = re.match(r"[a-z]+", verdict)
    if not word or word.group(0) not in ("valid", "invalid"):
        raise ReplyParseError(f"no 'Validity: valid|invalid' line (got {verdict[:40]!r})")
    reasoning = f.get("reasoning", "")
    if word.group(0) == "invalid":
        return Validity(False, "", reasoning)
    caption = f.get("edited image caption", f.get("edited caption", ""))
    if caption.upper() in ("", "NA", "N/A", "NONE"):
        raise ReplyParseError("valid, but no 'Edited image caption:' for the edited image")
    return Validity(True, caption, reasoning)


@dataclass(frozen=True)
class Prominence:
    prominent: bool
    object: str = ""


def parse_prominence(reply: str) -> Prominence:
    f = dict(reversed(_fields(reply)))
    out = f.get("output", "").lower()
    if out.startswith("true"):
        obj = f.get("object name", f.get("object", "")).strip().strip('"').strip()
        if not obj or obj.lower() in ("na", "n/a", "none"):
            raise ReplyParseError("'Output: True' without an 'Object Name:'")
        return Prominence(True, obj)
    if out.startswith("false"):
        return Prominence(False)
    raise ReplyParseError(f"no 'Output: True|False' line (got {out[:40]!r})")


_NUMBERED = re.compile(r"^[\s\-*•]*(\d+)\s*[.)]\s*(?P<text>\S.*)$")


def parse_backgrounds(reply: str, k: int = 3) -> list[str]:
    """Up to `k` numbered background captions; [] when the VLM answers None (the object is a scene)."""
    caps = [m.group("text").strip().strip('"') for m in map(_NUMBERED.match, reply.splitlines()) if m]
    caps = [c for c in caps if c and c.lower().rstrip(".") not in ("none", "na", "n/a")]
    if caps:
        return caps[:k]
    if re.fullmatch(r"\W*none\W*", reply.strip(), re.IGNORECASE):
        return []
    raise ReplyParseError("no numbered background caption and no 'None'")


def parse_caption(reply: str) -> str:
    text = re.sub(r"^\s*(?:\*\*)?caption(?:\*\*)?\s*:\s*", "", reply.strip(), flags=re.IGNORECASE).strip().strip('"')
    if len(text.split()) < 2:
        raise ReplyParseError(f"not a caption: {reply[:60]!r}")
    return text
