"""Reading a scene back from pixels, by analysis-by-synthesis.

Every pixel is snapped to the nearest colour of the world's palette; the background is the most
frequent background colour; each object colour's pixels are explained greedily by the drawable
object (shape x size x cell x pattern, placed up to `jitter` pixels off its cell) of best IoU;
the drawing style is the one whose objects explain the pixels best. On a rendered scene this
recovers the scene exactly; on a model's output it finds the scene the output most resembles,
and `pixel_error` against `reconstruct`'s clean image says how far the output is from a clean scene.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from harness.toyworld.render import object_pixels
from harness.toyworld.scenes import PALETTE, Obj, Scene, WorldConfig

MIN_IOU = 0.3  # a colour blob explained worse than this by any object is noise, not an object


def as_array(image: Image.Image | np.ndarray, cfg: WorldConfig) -> np.ndarray:
    """The image as uint8 (size, size, 3); other sizes are resized (area-averaged when shrinking)."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected a uint8 HxWx3 array, got {arr.dtype} {arr.shape}")
        if arr.shape[:2] == (cfg.size, cfg.size):
            return arr
        image = Image.fromarray(arr, "RGB")
    image = image.convert("RGB")
    if image.size != (cfg.size, cfg.size):
        shrink = image.size[0] >= cfg.size and image.size[1] >= cfg.size
        image = image.resize((cfg.size, cfg.size), Image.Resampling.BOX if shrink else Image.Resampling.NEAREST)
    return np.asarray(image, np.uint8)


def pixel_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel RGB distance in [0, 1] (1 = black vs white)."""
    d = a.astype(np.float32) - b.astype(np.float32)
    return np.sqrt((d**2).sum(-1) / 3.0) / 255.0


def _palette(cfg: WorldConfig) -> tuple[list[str], np.ndarray]:
    names = list(cfg.backgrounds) + list(cfg.colors)
    return names, np.array([PALETTE[n] for n in names], np.float32)


def snap(img: np.ndarray, cfg: WorldConfig) -> np.ndarray:
    """Index (into backgrounds + colors) of the nearest palette colour of every pixel, HxW."""
    _, rgb = _palette(cfg)
    d = ((img.astype(np.float32)[:, :, None, :] - rgb[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


_Candidates = tuple[list[tuple[str, str, int, str]], np.ndarray, np.ndarray]


def shift_mask(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The mask moved by (dy, dx) pixels; what leaves the image is dropped."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = \
        mask[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    return out


@lru_cache(maxsize=16)
def _candidates(size: int, grid: int, sides: tuple[tuple[str, int], ...], shapes: tuple[str, ...],
                patterns: tuple[str, ...], style: str, jitter: int) -> _Candidates:
    attrs, masks = [], []
    offsets = sorted(((dy, dx) for dy in range(-jitter, jitter + 1) for dx in range(-jitter, jitter + 1)),
                     key=lambda o: abs(o[0]) + abs(o[1]))  # exact placements first: they win ties
    for dy, dx in offsets:
        for shape in shapes:
            for size_name, side in sides:
                for pos in range(grid * grid):
                    for pattern in patterns if style == "filled" else ("solid",):
                        mask = object_pixels(size, grid, side, shape, pos, pattern, style)
                        attrs.append((shape, size_name, pos, pattern))
                        masks.append(shift_mask(mask, dy, dx).ravel())
    stacked = np.stack(masks)
    return attrs, stacked, stacked.sum(1)


def candidate_objects(cfg: WorldConfig, style: str) -> _Candidates:
    """(shape, size, cell, pattern) of every object the world can draw in `style`, also placed up to
    `jitter(cfg)` pixels off its cell, with its pixels (flattened bool masks, one row each) and areas."""
    sides = tuple((s, cfg.size_px(s)) for s in cfg.sizes)
    return _candidates(cfg.size, cfg.grid, sides, tuple(cfg.shapes), tuple(cfg.patterns), style, jitter(cfg))


def jitter(cfg: WorldConfig) -> int:
    """How far (pixels) an object may sit off its cell and still be recognised: a model's output
    rarely hits the grid exactly. The parsed scene puts it in its cell; `reconstruct` draws it
    where it was found."""
    return min(2, max(1, cfg.size // 16))  # 2 pixels at 32x32; capped to keep the candidate set small


def _fit_objects(labels: np.ndarray, background: int, style: str, cfg: WorldConfig) -> tuple[list[Obj], np.ndarray]:
    """The objects explaining each object colour's pixels, and the palette index of every pixel
    when these objects are drawn where they were found (flattened)."""
    attrs, masks, area = candidate_objects(cfg, style)
    min_pixels = max(2, int(area.min()) // 2)
    flat = labels.ravel()
    drawn = np.full_like(flat, background)
    objects = []
    for i, color in enumerate(cfg.colors, start=len(cfg.backgrounds)):
        blob = flat == i
        for _ in range(cfg.grid * cfg.grid):
            pixels = np.flatnonzero(blob)
            if len(pixels) < min_pixels:
                break
            inter = masks[:, pixels].sum(1)
            iou = inter / (area + len(pixels) - inter)
            k = int(iou.argmax())
            if iou[k] < MIN_IOU:
                break
            shape, size, pos, pattern = attrs[k]
            objects.append(Obj(shape=shape, color=color, size=size, pos=pos, pattern=pattern))
            drawn[masks[k]] = i
            blob = blob & ~masks[k]
    objects.sort(key=lambda o: (o.pos, o.color))
    return [Obj(*o.attrs(), id=j) for j, o in enumerate(objects)], drawn


def reconstruct(image: Image.Image | np.ndarray, cfg: WorldConfig) -> tuple[Scene, np.ndarray]:
    """The scene an image shows, and the clean image of that scene with each object drawn where it
    was found (up to `jitter` pixels off its cell): what the image would be without noise or artifacts."""
    img = as_array(image, cfg)
    labels = snap(img, cfg)
    bg_counts = np.bincount(labels.ravel(), minlength=len(cfg.backgrounds) + len(cfg.colors))[: len(cfg.backgrounds)]
    bg = int(bg_counts.argmax())
    best, best_drawn, best_err = None, None, None
    for style in cfg.styles:  # the style whose objects explain the pixels best; ties go to the first
        objects, drawn = _fit_objects(labels, bg, style, cfg)
        err = int((drawn != labels.ravel()).sum())
        if best_err is None or err < best_err:
            best, best_drawn, best_err = Scene(cfg.backgrounds[bg], style, tuple(objects)), drawn, err
    assert best is not None and best_drawn is not None
    rgb = _palette(cfg)[1].astype(np.uint8)
    return best, rgb[best_drawn].reshape(img.shape)


def parse(image: Image.Image | np.ndarray, cfg: WorldConfig) -> Scene:
    """The scene an image shows (exact for rendered scenes). The result may break the world's rules
    (no objects, shared colours or cells) when the image is not a clean scene."""
    return reconstruct(image, cfg)[0]
