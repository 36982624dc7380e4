"""Scenes of the built-in world: one or two flat-coloured shapes on a plain background.

A scene is pure data (no pixels): its background colour, one global drawing style, and its
objects, each with a shape, colour, size, grid cell and fill pattern. `render` draws it exactly,
`parse` reads it back from pixels, and edits map a scene to the exact scene it should become.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, get_args

import numpy as np

# Named colours, chosen far apart in RGB so that the nearest palette colour is never in doubt.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 50, 170),
    "orange": (250, 130, 20),
    "pink": (240, 120, 190),
    "cyan": (40, 210, 220),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "diamond")
# Side of an object's bounding box as a fraction of the largest size that fits a grid cell.
SIZE_FRACTION = {"small": 0.6, "medium": 0.8, "large": 1.0}
PATTERNS = ("solid", "striped", "checkered")
CaptionOrder = Literal["random", "reading"]
CAPTION_ORDERS = get_args(CaptionOrder)
STYLES = ("filled", "outline")  # outline: only the shapes' borders are drawn, so patterns do not apply
GRID_NAMES = {
    2: ("top left", "top right", "bottom left", "bottom right"),
    3: ("top left", "top center", "top right",
        "middle left", "center", "middle right",
        "bottom left", "bottom center", "bottom right"),
}


@dataclass
class WorldConfig:
    """Everything that defines the built-in world. Plain types, so it can sit inside a run config."""

    size: int = 32  # image side in pixels
    # The default is the "simple world" (2x2 grid, 3 shapes, 4 colours, 2 backgrounds): the world
    # whose toy teacher and critics came closest to their quality bars on a 2-core CPU (docs/toyworld-search.md).
    grid: int = 2  # objects sit at the centres of a grid x grid layout of cells (2 or 3)
    shapes: list[str] = field(default_factory=lambda: ["circle", "square", "triangle"])  # + "diamond"
    colors: list[str] = field(default_factory=lambda: ["red", "green", "blue", "yellow"])  # + "purple", "orange"
    backgrounds: list[str] = field(default_factory=lambda: ["white", "black"])  # + "gray"
    sizes: list[str] = field(default_factory=lambda: ["small", "large"])  # smallest first
    patterns: list[str] = field(default_factory=lambda: ["solid", "striped"])  # + "checkered"
    styles: list[str] = field(default_factory=lambda: list(STYLES))
    max_objects: int = 2
    p_two: float = 0.35  # probability that a sampled scene has two objects
    p_outline: float = 0.2  # probability of the outline style (when both styles are enabled)
    p_solid: float = 0.5  # probability of the solid pattern; other patterns share the rest
    test_fraction: float = 0.1  # share of all scenes held out for the benchmark (by a hash of the scene)
    # Captions also name each object's cell ("a red circle in the top left"); sizes stay unnamed,
    # so c^x still does not pin the target down. Off: captions name no position.
    caption_positions: bool = field(default=False, metadata={"hash": "unless_default"})
    # The order in which a two-object caption names its objects: "random", or "reading" (the object
    # in the earlier cell, row by row, first), a convention that breaks the symmetry between the two
    # phrases without naming a cell. It did not help a teacher bind (docs/toyworld-search.md, ninth follow-up).
    caption_order: CaptionOrder = field(default="random", metadata={"hash": "unless_default"})

    def validate(self) -> None:
        def check(key: str, values: list[str], allowed: Any, min_len: int = 1) -> None:
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ValueError(f"{key}: unknown {bad}; allowed: {', '.join(allowed)}")
            if len(set(values)) != len(values) or len(values) < min_len:
                raise ValueError(f"{key}: need at least {min_len} distinct values, got {values}")

        if self.grid not in GRID_NAMES:
            raise ValueError(f"grid: {self.grid} is not allowed; allowed: {sorted(GRID_NAMES)}")
        if self.size < 8 * self.grid:
            raise ValueError(f"size: {self.size} is too small for a {self.grid}x{self.grid} grid "
                             f"(need >= {8 * self.grid})")
        if not 1 <= self.max_objects <= min(2, self.grid**2):
            raise ValueError(f"max_objects: must be 1 or 2, got {self.max_objects}")
        check("shapes", self.shapes, SHAPES)
        check("colors", self.colors, PALETTE, self.max_objects + 1)  # + 1: a colour edit needs a free colour
        check("backgrounds", self.backgrounds, PALETTE)
        if set(self.colors) & set(self.backgrounds):
            raise ValueError(f"colors and backgrounds must not overlap; both have "
                             f"{sorted(set(self.colors) & set(self.backgrounds))}")
        check("sizes", self.sizes, SIZE_FRACTION)
        if [SIZE_FRACTION[s] for s in self.sizes] != sorted(SIZE_FRACTION[s] for s in self.sizes):
            raise ValueError(f"sizes: list them smallest first, got {self.sizes}")
        check("patterns", self.patterns, PATTERNS)
        if "solid" not in self.patterns:
            raise ValueError("patterns: must include 'solid'")
        check("styles", self.styles, STYLES)
        if self.caption_order not in CAPTION_ORDERS:
            raise ValueError(f"caption_order: {self.caption_order!r} is not allowed; allowed: {', '.join(CAPTION_ORDERS)}")
        for key in ("p_two", "p_outline", "p_solid", "test_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key}: must be in [0, 1], got {getattr(self, key)}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction: must be strictly between 0 and 1, got {self.test_fraction}")

    @property
    def positions(self) -> tuple[str, ...]:
        """Names of the grid cells, in row-major order (an object's `pos` indexes this)."""
        return GRID_NAMES[self.grid]

    def size_px(self, size: str) -> int:
        """Side in pixels of the bounding box of an object of this size."""
        return max(3, round(SIZE_FRACTION[size] * (self.size // self.grid)))


# The larger world the project started from (3x3 grid, every shape, 6 colours, 3 backgrounds); its
# teacher and critics were not learnable on a 2-core CPU budget (docs/toyworld-search.md). As `pretrain --set`:
#   world.grid=3 "world.shapes=[circle,square,triangle,diamond]"
#   "world.colors=[red,green,blue,yellow,purple,orange]" "world.backgrounds=[white,black,gray]"
FULL_WORLD = {"grid": 3, "shapes": list(SHAPES), "colors": ["red", "green", "blue", "yellow", "purple", "orange"],
              "backgrounds": ["white", "black", "gray"]}


def full_world(**changes: Any) -> WorldConfig:
    fresh = {k: list(v) if isinstance(v, list) else v for k, v in FULL_WORLD.items()}
    return WorldConfig(**{**fresh, **changes})


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    pos: int  # index into WorldConfig.positions
    pattern: str = "solid"
    id: int = 0  # identity of the object across an edit (source and target share it); not drawn

    def attrs(self) -> tuple[str, str, str, int, str]:
        return (self.shape, self.color, self.size, self.pos, self.pattern)


@dataclass(frozen=True)
class Scene:
    background: str
    style: str
    objects: tuple[Obj, ...]

    def key(self) -> tuple:
        """What the scene looks like, independent of object ids and order."""
        return (self.background, self.style, tuple(sorted(o.attrs() for o in self.objects)))

    def same_as(self, other: "Scene") -> bool:
        return self.key() == other.key()

    def colors(self) -> set[str]:
        return {o.color for o in self.objects}

    def occupied(self) -> set[int]:
        return {o.pos for o in self.objects}

    def find(self, obj_id: int) -> Obj | None:
        return next((o for o in self.objects if o.id == obj_id), None)

    def with_object(self, obj: Obj) -> "Scene":
        """The scene with the object of the same id replaced by `obj` (or `obj` appended)."""
        if self.find(obj.id) is None:
            return replace(self, objects=self.objects + (obj,))
        return replace(self, objects=tuple(obj if o.id == obj.id else o for o in self.objects))

    def without(self, obj_id: int) -> "Scene":
        return replace(self, objects=tuple(o for o in self.objects if o.id != obj_id))

    def next_id(self) -> int:
        return max((o.id for o in self.objects), default=-1) + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Scene":
        return cls(d["background"], d["style"], tuple(Obj(**o) for o in d["objects"]))


def check_scene(scene: Scene, cfg: WorldConfig) -> None:
    """Raise ValueError unless the scene is one the world can draw and read back unambiguously."""
    problems = []
    if scene.background not in cfg.backgrounds:
        problems.append(f"background {scene.background!r} not in {cfg.backgrounds}")
    if scene.style not in cfg.styles:
        problems.append(f"style {scene.style!r} not in {cfg.styles}")
    if not 1 <= len(scene.objects) <= cfg.max_objects:
        problems.append(f"{len(scene.objects)} objects (allowed 1..{cfg.max_objects})")
    for o in scene.objects:
        if o.shape not in cfg.shapes or o.color not in cfg.colors or o.size not in cfg.sizes:
            problems.append(f"object {o} uses a shape, colour or size outside the world")
        if not 0 <= o.pos < len(cfg.positions):
            problems.append(f"object {o} has position {o.pos} outside 0..{len(cfg.positions) - 1}")
        if o.pattern not in cfg.patterns or (scene.style == "outline" and o.pattern != "solid"):
            problems.append(f"object {o} has pattern {o.pattern!r} (outline scenes are always 'solid')")
    if len(scene.colors()) != len(scene.objects):
        problems.append("two objects share a colour")
    if len(scene.occupied()) != len(scene.objects):
        problems.append("two objects share a grid cell")
    if len({o.id for o in scene.objects}) != len(scene.objects):
        problems.append("two objects share an id")
    if problems:
        raise ValueError(f"invalid scene {scene}: " + "; ".join(problems))


def split_of(scene: Scene, cfg: WorldConfig) -> str:
    """'test' for the held-out share of all possible scenes, else 'train' (a stable hash of the scene)."""
    digest = hashlib.sha256(repr(scene.key()).encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < cfg.test_fraction else "train"


def _pick(rng: np.random.Generator, values: list[str] | tuple[str, ...]) -> str:
    return values[int(rng.integers(len(values)))]


def sample_pattern(rng: np.random.Generator, cfg: WorldConfig, style: str) -> str:
    others = [p for p in cfg.patterns if p != "solid"]
    if style == "outline" or not others or rng.random() < cfg.p_solid:
        return "solid"
    return _pick(rng, others)


def sample_style(rng: np.random.Generator, cfg: WorldConfig) -> str:
    if len(cfg.styles) == 1:
        return cfg.styles[0]
    return "outline" if rng.random() < cfg.p_outline else "filled"


def sample_scene(
    rng: np.random.Generator, cfg: WorldConfig, n_objects: int | None = None, split: str | None = None
) -> Scene:
    """A random scene; same generator state -> same scene. `split` ('train' | 'test') rejects scenes
    of the other split, so training data never shows a benchmark reference."""
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
    if n_objects is not None and not 1 <= n_objects <= cfg.max_objects:
        raise ValueError(f"n_objects must be in 1..{cfg.max_objects}, got {n_objects}")
    for _ in range(10_000):
        n = n_objects or (2 if cfg.max_objects >= 2 and rng.random() < cfg.p_two else 1)
        style = sample_style(rng, cfg)
        cells = rng.choice(len(cfg.positions), size=n, replace=False)
        colors = rng.choice(len(cfg.colors), size=n, replace=False)
        objects = tuple(
            Obj(shape=_pick(rng, cfg.shapes), color=cfg.colors[int(c)], size=_pick(rng, cfg.sizes),
                pos=int(p), pattern=sample_pattern(rng, cfg, style), id=i)
            for i, (p, c) in enumerate(zip(cells, colors))
        )
        scene = Scene(background=_pick(rng, cfg.backgrounds), style=style, objects=objects)
        if split is None or split_of(scene, cfg) == split:
            return scene
    raise RuntimeError(f"no {split!r} scene with {n_objects} objects found in 10000 draws; "
                       f"check world.test_fraction={cfg.test_fraction}")
