"""Exact rendering of scenes: flat colours, no anti-aliasing, so every pixel can be read back."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from harness.toyworld.scenes import PALETTE, Obj, Scene, WorldConfig


@lru_cache(maxsize=None)
def shape_mask(shape: str, side: int) -> np.ndarray:
    """The shape filling a side x side box, sampled at pixel centres (bool, read-only)."""
    # Integer geometry (2 * pixel-centre offset from the box centre) keeps every shape symmetric.
    d = 2 * np.arange(side) + 1 - side
    dx, dy = np.abs(d)[None, :], np.abs(d)[:, None]
    rows = np.arange(side)[:, None]
    if shape == "circle":
        m = dx**2 + dy**2 <= side**2
    elif shape == "square":
        m = np.ones((side, side), bool)
    elif shape == "triangle":  # apex at the top centre; a row's half-width reaches its lower edge
        m = np.broadcast_to(dx <= rows + 1, (side, side)).copy()
    elif shape == "diamond":
        m = dx + dy <= side
    else:
        raise ValueError(f"unknown shape {shape!r}")
    m.setflags(write=False)
    return m


def _period(cfg_size: int) -> int:
    """Pattern period in pixels: 4 at 32x32, scaled with the image."""
    return max(2, 2 * round(cfg_size / 16))


def _erode(m: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        p = np.pad(m, 1)
        m = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m


@lru_cache(maxsize=None)
def object_pixels(img_size: int, grid: int, side: int, shape: str, pos: int, pattern: str, style: str) -> np.ndarray:
    """Pixels of a side x side object in a grid cell of an img_size image (bool HxW, read-only)."""
    m = shape_mask(shape, side).copy()
    if style == "outline":
        m &= ~_erode(m, max(1, img_size // 32))
    else:
        half = _period(img_size) // 2
        yy, xx = np.indices(m.shape) // half
        if pattern == "striped":
            m &= yy % 2 == 0
        elif pattern == "checkered":
            m &= (yy + xx) % 2 == 0
        elif pattern != "solid":
            raise ValueError(f"unknown pattern {pattern!r}")
    cell = img_size / grid
    row, col = divmod(pos, grid)
    top, left = round((row + 0.5) * cell - side / 2), round((col + 0.5) * cell - side / 2)
    out = np.zeros((img_size, img_size), bool)
    out[top : top + side, left : left + side] = m
    out.setflags(write=False)
    return out


def object_mask(obj: Obj, style: str, cfg: WorldConfig) -> np.ndarray:
    """Pixels drawn in the object's colour (bool HxW, read-only)."""
    return object_pixels(cfg.size, cfg.grid, cfg.size_px(obj.size), obj.shape, obj.pos, obj.pattern, style)


def render(scene: Scene, cfg: WorldConfig) -> np.ndarray:
    """The scene as a uint8 array (size, size, 3)."""
    img = np.empty((cfg.size, cfg.size, 3), np.uint8)
    img[:] = PALETTE[scene.background]
    for obj in scene.objects:
        img[object_mask(obj, scene.style, cfg)] = PALETTE[obj.color]
    return img


def to_pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(img, np.uint8), "RGB")


def render_pil(scene: Scene, cfg: WorldConfig) -> Image.Image:
    return to_pil(render(scene, cfg))
