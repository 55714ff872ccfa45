"""Procedural captioned video clips with real spatiotemporal structure: the toy model's training data.

Each clip is one or two coloured shapes (circle, square, triangle) that move, bounce, rotate or change colour over a
textured background, with a caption that says what happens ("a red circle moving right on a striped background").
Motion is in pixels per frame and continues for any clip length, so a model trained on N frames can be asked for
2N or 4N (length extension): a shape keeps moving and bounces off the borders.

Shapes are drawn from signed distances with a one-pixel soft edge (anti-aliased, which a small VAE reproduces far
better than hard edges). Everything is seeded: ``make_clip(seed, ...)`` is the same clip on every machine.

Example:
    >>> from radial_diffusers.toy.scenes import make_clip
    >>> video, caption = make_clip(3, frames=17, height=64, width=64)
    >>> video.shape, video.dtype            # (F, H, W, 3) uint8
    ((17, 64, 64, 3), dtype('uint8'))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["COLOURS", "SHAPES", "MOTIONS", "BACKGROUNDS", "Sprite", "Scene", "random_scene", "render", "caption",
           "make_clip"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (235, 210, 40),
    "white": (240, 240, 240), "purple": (150, 60, 200),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("moving left", "moving right", "moving up", "moving down", "bouncing", "rotating", "changing colour")
BACKGROUNDS = ("dark", "striped", "checkered", "grassy")
_NUMBER = {1: "a", 2: "two"}


@dataclass(frozen=True)
class Sprite:
    """One shape: centre ``(x, y)`` and ``size`` (half-width) as fractions of the frame, velocity ``(vx, vy)`` in
    frame fractions per frame, ``spin`` in radians per frame, and a colour that may fade to ``colour_to``."""

    shape: str
    colour: str
    x: float
    y: float
    size: float
    vx: float = 0.0
    vy: float = 0.0
    spin: float = 0.0
    colour_to: str | None = None


@dataclass(frozen=True)
class Scene:
    """Sprites (all with the same shape and motion), their motion word, and the background."""

    sprites: tuple[Sprite, ...]
    motion: str
    background: str
    tint: tuple[int, int, int]  # the background's base colour


def random_scene(rng: np.random.Generator) -> Scene:
    """A scene drawn from ``rng``: shape, colour(s), motion, background, one or two sprites."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    motion = MOTIONS[rng.integers(len(MOTIONS))]
    if motion == "rotating" and shape == "circle":  # a rotating circle looks still
        shape = SHAPES[1 + rng.integers(2)]
    count = 2 if motion == "bouncing" and rng.random() < 0.5 else 1
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    names = list(COLOURS)
    colour = names[rng.integers(len(names))]
    speed = rng.uniform(0.012, 0.022)  # frame fractions per frame: a shape crosses the frame in 45-80 frames
    sprites = []
    for i in range(count):
        size = rng.uniform(0.12, 0.18)
        x, y = rng.uniform(0.25, 0.75, size=2)
        vx = vy = spin = 0.0
        colour_to = None
        if motion == "moving left":
            vx, x = -speed, rng.uniform(0.55, 0.8)
        elif motion == "moving right":
            vx, x = speed, rng.uniform(0.2, 0.45)
        elif motion == "moving up":
            vy, y = -speed, rng.uniform(0.55, 0.8)
        elif motion == "moving down":
            vy, y = speed, rng.uniform(0.2, 0.45)
        elif motion == "bouncing":
            angle = rng.uniform(0, 2 * math.pi)
            vx, vy = 1.3 * speed * math.cos(angle), 1.3 * speed * math.sin(angle)
            if count == 2:
                x = 0.3 if i == 0 else 0.7
        elif motion == "rotating":
            spin = rng.choice([-1.0, 1.0]) * rng.uniform(0.06, 0.1)
            size = rng.uniform(0.18, 0.24)
        else:  # changing colour
            colour_to = names[(names.index(colour) + 1 + rng.integers(len(names) - 1)) % len(names)]
        sprites.append(Sprite(shape, colour, float(x), float(y), float(size), vx, vy, float(spin), colour_to))
    tint = tuple(int(c) for c in rng.integers(30, 110, size=3))
    return Scene(tuple(sprites), motion, background, tint)


def caption(scene: Scene) -> str:
    """What happens in ``scene``, in words ("two purple squares bouncing on a checkered background")."""
    first = scene.sprites[0]
    n = len(scene.sprites)
    noun = first.shape + ("s" if n > 1 else "")
    what = scene.motion
    if first.colour_to is not None:
        what = f"changing colour to {first.colour_to}"
    return f"{_NUMBER[n]} {first.colour} {noun} {what} on a {scene.background} background"


def _bounce(p: float, v: float, t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Positions at frames ``t`` of a point starting at ``p`` with velocity ``v``, reflected at ``lo``/``hi``."""
    span = hi - lo
    q = np.mod(p - lo + v * t, 2 * span)
    return lo + np.where(q > span, 2 * span - q, q)


def _background(scene: Scene, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    base = np.asarray(scene.tint, np.float32)
    if scene.background == "striped":
        pattern = 0.5 + 0.5 * np.sign(np.sin(xx * 2 * math.pi * 5 + yy * 2 * math.pi * 2))
    elif scene.background == "checkered":
        pattern = ((np.floor(xx * 6) + np.floor(yy * 6)) % 2).astype(np.float32)
    elif scene.background == "grassy":
        pattern = 0.5 + 0.5 * np.sin(xx * 37.0) * np.sin(yy * 23.0 + xx * 5.0)
        base = np.asarray((40, 120 + scene.tint[1] // 4, 40), np.float32)
    else:  # dark
        pattern = np.zeros_like(xx)
        base = base * 0.35
    image = base[None, None] * (0.7 + 0.5 * pattern[..., None])
    image += rng.normal(0.0, 4.0, size=image.shape).astype(np.float32)  # fixed film grain: texture, not flicker
    return image


def _coverage(sprite: Sprite, cx: float, cy: float, angle: float, yy: np.ndarray, xx: np.ndarray,
              pixel: float) -> np.ndarray:
    """The sprite's anti-aliased coverage in [0, 1] at centre ``(cx, cy)`` rotated by ``angle``."""
    dx, dy = xx - cx, yy - cy
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    r = sprite.size
    if sprite.shape == "circle":
        dist = np.sqrt(u * u + v * v) - r
    elif sprite.shape == "square":
        dist = np.maximum(np.abs(u), np.abs(v)) - 0.85 * r
    else:  # equilateral triangle pointing up (before rotation): three half-planes
        k = math.sqrt(3.0)
        dist = np.maximum(np.maximum(v - 0.5 * r, (-k * u - v) / 2 - 0.5 * r), (k * u - v) / 2 - 0.5 * r)
    return np.clip(0.5 - dist / pixel, 0.0, 1.0)


def render(scene: Scene, frames: int, height: int, width: int, seed: int = 0,
           coverage: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The clip of ``scene``: ``(frames, height, width, 3)`` uint8 RGB. Positions are frame fractions, so the same
    scene renders at any size; ``seed`` only fixes the background's grain.

    With ``coverage=True`` also the shapes' coverage ``(frames, height, width)`` float32 in [0, 1] (1 on a shape, 0
    on the background, anti-aliased at the edges): training weights its losses with it, since the shapes are a small
    part of each frame and a loss averaged over pixels is mostly background."""
    if frames < 1 or height < 8 or width < 8:
        raise ValueError(f"render needs frames >= 1 and height, width >= 8, got {frames}x{height}x{width}")
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    aspect = width / height
    xx = xx * aspect  # isotropic units: a circle stays round at any aspect ratio
    pixel = 1.0 / height
    background = _background(scene, yy, xx / aspect, rng)
    t = np.arange(frames, dtype=np.float32)
    out = np.empty((frames, height, width, 3), np.uint8)
    covered = np.zeros((frames, height, width), np.float32) if coverage else None
    tracks = []
    for sp in scene.sprites:
        margin = sp.size
        xs = _bounce(sp.x * aspect, sp.vx, t, margin, aspect - margin)
        ys = _bounce(sp.y, sp.vy, t, margin, 1.0 - margin)
        tracks.append((sp, xs, ys))
    for f in range(frames):
        image = background.copy()
        for sp, xs, ys in tracks:
            colour = np.asarray(COLOURS[sp.colour], np.float32)
            if sp.colour_to is not None:
                mix = 0.5 - 0.5 * math.cos(math.pi * min(1.0, f / max(1, 24)))  # a smooth change over 24 frames
                colour = (1 - mix) * colour + mix * np.asarray(COLOURS[sp.colour_to], np.float32)
            alpha = _coverage(sp, float(xs[f]), float(ys[f]), sp.spin * f, yy, xx, pixel)[..., None]
            image = image * (1 - alpha) + colour * alpha
            if covered is not None:
                np.maximum(covered[f], alpha[..., 0], out=covered[f])
        out[f] = np.clip(image, 0, 255).astype(np.uint8)
    return (out, covered) if covered is not None else out


def make_clip(seed: int, frames: int, height: int, width: int) -> tuple[np.ndarray, str]:
    """Clip number ``seed``: ``(video (F, H, W, 3) uint8, caption)``, the same on every machine."""
    scene = random_scene(np.random.default_rng(seed))
    return render(scene, frames, height, width, seed=seed), caption(scene)
