"""The paper's eleven edit types, the names a VLM or a public dataset gives them, and the object a
removal is about.

The paper (Sec. 3 and App. D) uses ten local types: local color change, local texture, adjust (shape
change), add, remove, replace, bg, style, action, text manipulation; and customization (free-form).
The harness names them as the instruction format does (`harness.data.instructions.InstructionRecord`).
"""
from __future__ import annotations

import re

LOCAL_TYPES = ("color", "texture", "adjust", "add", "remove", "replace", "background", "style", "action", "text")
EDIT_TYPES = LOCAL_TYPES + ("customization",)

# The paper's names for the types in its proposal prompt (App. D), the defaults of a prompt file's `type_names`.
PAPER_NAMES = {
    "color": "local color change", "texture": "local texture", "adjust": "adjust (shape change)", "add": "add",
    "remove": "remove", "replace": "replace", "background": "bg", "style": "style", "action": "action",
    "text": "text manipulation", "customization": "customization",
}

# Other words a VLM writes for a type (normalised: lower case, letters and digits only, single spaces).
_SYNONYMS = {
    "color": ("colour", "color change", "colour change", "local colour change", "recolor", "recolour"),
    "texture": ("material", "texture change", "material change", "local material"),
    "adjust": ("shape", "shape change", "adjust shape", "adjustment", "resize"),
    "add": ("insertion", "insert", "addition", "add object", "object addition"),
    "remove": ("removal", "delete", "object removal", "remove object"),
    "replace": ("replacement", "swap", "object replacement", "replace object", "object swap"),
    "background": ("bg change", "background change", "change background", "background replacement", "bg replacement"),
    "style": ("stylization", "stylisation", "style change", "style transfer"),
    "action": ("pose", "motion", "action change", "pose change", "motion change"),
    "text": ("text editing", "text change", "text edit", "text manipulation"),
    "customization": ("personalization", "personalisation", "customisation"),
}


def normalize(name: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", name.lower()).split())


def alias_table(type_names: dict[str, str] | None = None) -> dict[str, str]:
    """normalised alias -> edit type: our names, the paper's prompt names (with and without their
    parenthesis), a prompt file's own names, and common synonyms."""
    table: dict[str, str] = {}
    for t in EDIT_TYPES:
        names = [t, PAPER_NAMES[t], *_SYNONYMS.get(t, ())]
        if type_names and t in type_names:
            names.append(type_names[t])
        for n in names:
            table[normalize(n)] = t
            table[normalize(re.sub(r"\(.*?\)", "", n))] = t
    table.pop("", None)
    return table


def parse_type(name: str, table: dict[str, str]) -> str | None:
    """The edit type a reply's 'Type:' names, or None. Tolerates numbering ('4) add') and brackets ('[add]')."""
    key = normalize(re.sub(r"^\s*\d+\s*[).:-]\s*", "", name))
    return table.get(key)


_REMOVE = re.compile(
    r"^\s*(?:please\s+)?(?:remove|erase|delete|take\s+out|get\s+rid\s+of|eliminate)\s+(?:all\s+)?(?:the\s+|a\s+|an\s+)?"
    r"(?P<obj>.+?)(?=\s+(?:from|so|while|leaving|and\s+(?:fill|replace|extend|restore|seamlessly|make|keep))\b|[,.;:!]|$)",
    re.IGNORECASE)


def removed_object(instruction: str) -> str:
    """The object a removal instruction names ('remove the red car from the street' -> 'red car'), '' if none.

    Plain text parsing of the instruction's own words (never a guess): used when the source gives no
    object name, since the removal question of App. E ('does the image have {object}') needs one."""
    m = _REMOVE.match(instruction)
    if not m:
        return ""
    obj = m.group("obj").strip()
    return obj if 0 < len(obj.split()) <= 12 else ""


def with_article(obj: str) -> str:
    """'backpack' -> 'a backpack', 'orange cat' -> 'an orange cat'; kept as is when it has an article or is plural-looking."""
    words = obj.split()
    if not words or words[0].lower() in ("a", "an", "the", "this", "that", "my", "his", "her", "their", "its"):
        return obj
    return ("an " if words[0][0].lower() in "aeiou" else "a ") + obj
