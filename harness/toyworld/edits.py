"""Edits of the built-in world: an instruction and the exact scene it should produce.

Each edit type changes its input in one intended way only (the target's render is the answer):

  color          one object's colour (to a colour not in the scene)
  texture        one object's fill pattern (filled drawings only)
  adjust         one object's size (one step bigger/smaller) or its shape, keeping colour and pattern
  add            a new object of a named size, colour, shape and pattern in a named free cell (1-object scenes)
  remove         one object of a two-object scene (never the only object; paper, App. D)
  replace        one object by one of another shape and colour (and named pattern), same size and place
  background     the background colour
  style          the global drawing style: filled <-> outline (outline drawings have no patterns)
  action         one object moves to a named free cell
  customization  the only object, same identity, in a new setting: new background and new cell
                 (paper, App. E.2 prompt template)

The paper's text-manipulation edit is not part of this world: glyphs do not fit 32x32 shapes.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from harness.toyworld import text
from harness.toyworld.scenes import Obj, Scene, WorldConfig, sample_pattern, sample_scene

EDIT_TYPES = ("color", "texture", "adjust", "add", "remove", "replace", "background", "style", "action",
              "customization")


@dataclass(frozen=True)
class Edit:
    edit_type: str
    instruction: str  # c
    object: str  # the object the edit is about ('' for global edits), as `text.object_name` writes it
    source: Scene  # the reference y
    target: Scene  # the edited scene; render(target) is x
    caption_ref: str = ""  # c^y
    caption_edit: str = ""  # c^x
    detail: dict[str, Any] = field(default_factory=dict, compare=False)  # e.g. {'change': 'size'}

    def to_dict(self) -> dict[str, Any]:
        return {"edit_type": self.edit_type, "instruction": self.instruction, "object": self.object,
                "source": self.source.to_dict(), "target": self.target.to_dict(),
                "caption_ref": self.caption_ref, "caption_edit": self.caption_edit, "detail": self.detail}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Edit":
        return cls(d["edit_type"], d["instruction"], d["object"], Scene.from_dict(d["source"]),
                   Scene.from_dict(d["target"]), d.get("caption_ref", ""), d.get("caption_edit", ""),
                   d.get("detail", {}))


def _pick(rng: np.random.Generator, values: list) -> Any:
    return values[int(rng.integers(len(values)))]


def _free_cells(scene: Scene, cfg: WorldConfig) -> list[int]:
    return [p for p in range(len(cfg.positions)) if p not in scene.occupied()]


def _free_colors(scene: Scene, cfg: WorldConfig) -> list[str]:
    return [c for c in cfg.colors if c not in scene.colors()]


# Each maker returns (target, instruction, object name, detail) or None when the edit does not apply.
_Made = tuple[Scene, str, str, dict[str, Any]] | None


def _color(s: Scene, rng: np.random.Generator, cfg: WorldConfig) -> _Made:
    obj, colors = _pick(rng, list(s.objects)), _free_colors(s, cfg)
    if not colors:
        return None
    new = replace(obj, color=_pick(rng, colors))
    name = text.object_name(obj)
    return s.with_object(new), text.instruction("color", rng, object=name, color=new.color), name, {}


def _texture(s: Scene, rng: np.random.Generator, cfg: WorldConfig) -> _Made:
    obj = _pick(rng, list(s.objects))
    patterns = [p for p in cfg.patterns if p != obj.pattern]
    if s.style != "filled" or not patterns:
        return None
    new = replace(obj, pattern=_pick(rng, patterns))
    name = text.object_name(obj)
    return s.with_object(new), text.instruction("texture", rng, object=name, pattern=new.pattern), name, {}


def _adjust(s: Scene, rng: np.random.Generator, cfg: WorldConfig) -> _Made:
    obj = _pick(rng, list(s.objects))
    name = text.object_name(obj)
    shapes = [sh for sh in cfg.shapes if sh != obj.shape]
    if shapes and (len(cfg.sizes) == 1 or rng.random() < 0.5):
        new = replace(obj, shape=_pick(rng, shapes))
        return s.with_object(new), text.instruction("adjust_shape", rng, object=name, shape=new.shape), name, \
            {"change": "shape"}
    if len(cfg.sizes) == 1:
        return None
    i = cfg.sizes.index(obj.size)
    step = 1 if i == 0 else -1 if i == len(cfg.sizes) - 1 else int(_pick(rng, [1, -1]))
    new = replace(obj, size=cfg.sizes[i + step])
    kind = "adjust_bigger" if step > 0 else "adjust_smaller"
    return s.with_object(new), text.instruction(kind, rng, object=name), name, {"change": "size"}


def _add(s: Scene, rng: np.random.Generator, cfg: WorldConfig) -> _Made:
    cells, colors = _free_cells(s, cfg), _free_colors(s, cfg)
    if len(s.objects) >= cfg.max_objects or not cells or not colors:
        return None
    new = Obj(shape=_pick(rng, cfg.shapes), color=_pick(rng, colors), size=_pick(rng, cfg.sizes),
              pos=_pick(rng, cells), pattern=sample_pattern(rng, cfg, s.style), id=s.next_id())
    instr = text.instruction("add", rng, new=text.describe(new, s.style, size=True), place=text.place(new.pos, cfg))
    return s.with_object(new), instr, text.object_name(new), {}


def _remove(s: Scene, rng: np.random.Generator, cfg: WorldConfig) -> _Made:
    if len(s.objects) < 2:
        return None
    obj = _pick(rng, list(s.objects))
    name = text.object_name(obj)
    return s.without(obj.id), text.instruction("remove", rng, object=name), name, {}


def _replace(s: Scene, rng: np.random.Generator, cfg: WorldConfig) -> _Made:
    obj = _pick(rng, list(s.objects))
    shapes, colors = [sh for sh in cfg.shapes if sh != obj.shape], _free_colors(s, cfg)
    if not shapes or not colors:
        return None
    new = replace(obj, shape=_pick(rng, shapes), color=_pick(rng, colors), pattern=sample_pattern(rng, cfg, s.style))
    name = text.object_name(obj)
    instr = text.instruction("replace", rng, object=name, new=text.describe(new, s.style))
    return s.with_object(new), instr, name, {}


def _background(s: Scene, rng: np.random.Generator, cfg: WorldConfig) -> _Made:
    options = [b for b in cfg.backgrounds if b != s.background]
    if not options:
        return None
    bg = _pick(rng, options)
    return replace(s, background=bg), text.instruction("background", rng, background=bg), "", {}


def _style(s: Scene, rng: np.random.Generator, cfg: WorldConfig) -> _Made:
    if len(cfg.styles) < 2:
        return None
    style = "outline" if s.style == "filled" else "filled"
    # Patterns do not exist in outline drawings; filling an outline drawing gives solid shapes.
    objects = tuple(replace(o, pattern="solid") for o in s.objects)
    return replace(s, style=style, objects=objects), text.instruction(f"style_{style}", rng), "", {}


def _action(s: Scene, rng: np.random.Generator, cfg: WorldConfig) -> _Made:
    obj, cells = _pick(rng, list(s.objects)), _free_cells(s, cfg)
    if not cells:
        return None
    new = replace(obj, pos=_pick(rng, cells))
    name = text.object_name(obj)
    instr = text.instruction("action", rng, object=name, to_place=text.to_place(new.pos, cfg))
    return s.with_object(new), instr, name, {}


def _customization(s: Scene, rng: np.random.Generator, cfg: WorldConfig) -> _Made:
    backgrounds, cells = [b for b in cfg.backgrounds if b != s.background], _free_cells(s, cfg)
    if len(s.objects) != 1 or not backgrounds or not cells:
        return None
    bg, pos = _pick(rng, backgrounds), _pick(rng, cells)
    (obj,) = s.objects
    target = replace(s, background=bg, objects=(replace(obj, pos=pos),))
    instr = text.instruction("customization", rng, setting=text.setting(bg, pos, cfg, rng))
    return target, instr, text.object_name(obj), {}


_MAKERS: dict[str, Callable[[Scene, np.random.Generator, WorldConfig], _Made]] = {
    "color": _color, "texture": _texture, "adjust": _adjust, "add": _add, "remove": _remove,
    "replace": _replace, "background": _background, "style": _style, "action": _action,
    "customization": _customization,
}
# Scenes each edit type needs (None: any number of objects).
_N_OBJECTS: dict[str, int | None] = {"add": 1, "remove": 2, "customization": 1}


def check_edit_type(edit_type: str) -> None:
    if edit_type not in _MAKERS:
        raise ValueError(f"unknown edit type {edit_type!r}; the built-in world supports: {', '.join(EDIT_TYPES)}")


def make_edit(scene: Scene, edit_type: str, rng: np.random.Generator, cfg: WorldConfig) -> Edit | None:
    """An edit of `scene` of the given type, with its exact target and captions; None if the type
    does not apply to this scene (e.g. removing the only object)."""
    check_edit_type(edit_type)
    made = _MAKERS[edit_type](scene, rng, cfg)
    if made is None:
        return None
    target, instr, obj, detail = made
    return Edit(edit_type, instr, obj, scene, target, text.caption(scene, rng, cfg), text.caption(target, rng, cfg), detail)


def supported_edit_types(cfg: WorldConfig) -> list[str]:
    """The edit types this world config can express, in canonical order."""
    possible = {
        "color": True,
        "texture": len(cfg.patterns) > 1 and "filled" in cfg.styles,
        "adjust": len(cfg.sizes) > 1 or len(cfg.shapes) > 1,
        "add": cfg.max_objects >= 2,
        "remove": cfg.max_objects >= 2,
        "replace": len(cfg.shapes) > 1,
        "background": len(cfg.backgrounds) > 1,
        "style": len(cfg.styles) > 1,
        "action": True,
        "customization": len(cfg.backgrounds) > 1,
    }
    return [t for t in EDIT_TYPES if possible[t]]


def sample_edit(rng: np.random.Generator, cfg: WorldConfig, edit_type: str, split: str | None = None) -> Edit:
    """A random edit of the given type on a random scene it applies to."""
    check_edit_type(edit_type)
    if edit_type not in supported_edit_types(cfg):
        raise ValueError(f"edit type {edit_type!r} cannot be expressed in this world config; "
                         f"supported: {', '.join(supported_edit_types(cfg))}")
    for _ in range(1000):
        scene = sample_scene(rng, cfg, n_objects=_N_OBJECTS.get(edit_type), split=split)
        edit = make_edit(scene, edit_type, rng, cfg)
        if edit is not None:
            return edit
    raise RuntimeError(f"no scene of this world admits a {edit_type!r} edit (check the world config)")
