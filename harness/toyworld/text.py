"""Captions and edit instructions of the built-in world, and the vocabulary they use.

Captions name each object's colour, shape and pattern, the background and the drawing style, but
never an object's size, nor (unless the world's `caption_positions` is on) its position: a
text-to-image model given the caption of an edited scene (c^x) cannot reproduce the edit target
without looking at the reference image.
Every phrase comes from the tables below, so `vocabulary` can list all words the world can say.
"""
from __future__ import annotations

import re
import string

import numpy as np

from harness.toyworld.scenes import Obj, Scene, WorldConfig

CAPTIONS = {
    "filled": (
        "{objects} on a {background} background",
        "a picture of {objects} on a {background} background",
        "{objects} against a {background} background",
    ),
    "outline": (
        "an outline drawing of {objects} on a {background} background",
        "{objects} drawn in outline on a {background} background",
    ),
}

INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "color": (
        "make the {object} {color}",
        "change the color of the {object} to {color}",
        "turn the {object} {color}",
        "paint the {object} {color}",
    ),
    "texture": (
        "make the {object} {pattern}",
        "give the {object} a {pattern} fill",
        "change the {object} to a {pattern} pattern",
    ),
    "adjust_bigger": ("make the {object} bigger", "enlarge the {object}", "make the {object} larger"),
    "adjust_smaller": ("make the {object} smaller", "shrink the {object}", "make the {object} a bit smaller"),
    "adjust_shape": (
        "change the shape of the {object} to a {shape}",
        "reshape the {object} into a {shape}",
        "turn the {object} into a {shape} of the same color",
    ),
    "add": ("add {new} {place}", "put {new} {place}", "draw {new} {place}"),
    "remove": ("remove the {object}", "delete the {object}", "take away the {object}", "erase the {object}"),
    "replace": ("replace the {object} with {new}", "swap the {object} for {new}", "substitute {new} for the {object}"),
    "background": (
        "change the background to {background}",
        "make the background {background}",
        "set the background color to {background}",
        "put the shapes on a {background} background",
    ),
    "style_outline": (
        "turn the picture into an outline drawing",
        "draw the shapes as outlines only",
        "make it a line drawing",
    ),
    "style_filled": (
        "fill in the shapes",
        "turn the outline drawing into filled shapes",
        "draw the shapes filled with color",
    ),
    "action": ("move the {object} {to_place}", "shift the {object} {to_place}", "slide the {object} {to_place}"),
    # Paper, Appendix E.2: the free-form (customization) prompt, then a description of the new setting.
    "customization": ("Generate the main object shown in the first image in a different setting and pose: {setting}",),
    "noop": ("keep the image unchanged", "do nothing", "leave the picture as it is"),
}
SETTINGS = ("on a {background} background {place}", "{place}, against a {background} background")


def words(text: str) -> list[str]:
    """The word-level tokens of a text (lower case; punctuation marks are tokens of their own)."""
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())


def _choose(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def object_name(obj: Obj) -> str:
    """How texts refer to an object: its colour and shape (unique within a scene), no article."""
    return f"{obj.color} {obj.shape}"


def describe(obj: Obj, style: str, size: bool = False) -> str:
    """'a striped red circle' (solid is implied; patterns do not apply to outline drawings)."""
    words_ = [obj.size] if size else []
    if style == "filled" and obj.pattern != "solid":
        words_.append(obj.pattern)
    return article(" ".join(words_ + [obj.color, obj.shape]))


def place(pos: int, cfg: WorldConfig) -> str:
    return f"in the {cfg.positions[pos]}"


def to_place(pos: int, cfg: WorldConfig) -> str:
    return f"to the {cfg.positions[pos]}"


def caption(scene: Scene, rng: np.random.Generator, world: WorldConfig | None = None) -> str:
    """A caption that names what is in the scene but not how big, nor where unless
    `world.caption_positions` (c^y / c^x)."""
    objs = [describe(o, scene.style) for o in scene.objects]
    if world is not None and world.caption_positions:
        objs = [f"{d} {place(o.pos, world)}" for d, o in zip(objs, scene.objects)]
    if len(objs) > 1:
        order = rng.permutation(len(objs))  # drawn in either order, so that the generator's later draws agree
        if world is not None and world.caption_order == "reading":
            order = np.argsort([o.pos for o in scene.objects], kind="stable")
        objs = [objs[i] for i in order]
    template = _choose(rng, CAPTIONS[scene.style])
    return template.format(objects=" and ".join(objs), background=scene.background)


def instruction(kind: str, rng: np.random.Generator, **slots: str) -> str:
    """A natural instruction of the given kind (a key of INSTRUCTIONS), template chosen by `rng`."""
    if kind not in INSTRUCTIONS:
        raise KeyError(f"unknown instruction kind {kind!r}; known: {', '.join(INSTRUCTIONS)}")
    return _choose(rng, INSTRUCTIONS[kind]).format(**slots)


def setting(background: str, pos: int, cfg: WorldConfig, rng: np.random.Generator) -> str:
    return _choose(rng, SETTINGS).format(background=background, place=place(pos, cfg))


def noop_instruction(rng: np.random.Generator) -> str:
    """A 'do nothing' instruction (paper, App. E: a regularising task whose target is the input)."""
    return instruction("noop", rng)


def vocabulary(cfg: WorldConfig) -> list[str]:
    """Every word the world's captions and instructions can use, sorted."""
    texts: list[str] = []
    for group in (*CAPTIONS.values(), *INSTRUCTIONS.values(), SETTINGS):
        for template in group:
            texts.append(" ".join(lit for lit, *_ in string.Formatter().parse(template)))
    texts += ["a an in the to"]
    texts += cfg.shapes + cfg.colors + cfg.backgrounds + cfg.sizes + cfg.patterns + list(cfg.positions)
    return sorted({w for t in texts for w in words(t)})
