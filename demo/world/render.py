"""Draw a scene: textured background, clutter, shapes (jittered, possibly overlapping), pixel noise.

The image is a pure function of the scene and the size, so the same seed gives the same bytes.
"""
from __future__ import annotations

import colorsys
import io
import math

import numpy as np
from PIL import Image, ImageDraw

from demo.world.world import Obj, Scene

SUPERSAMPLE = 2  # drawn at 2x and shrunk: smooth edges without PIL's missing anti-aliasing
JPEG_QUALITY = 90


def _muted(rng: np.random.Generator) -> np.ndarray:
    # Low saturation and mid value: every object colour, black and white included, stands out.
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.3), rng.uniform(0.38, 0.78))
    return np.array([r, g, b]) * 255


def _background(kind: str, side: int, rng: np.random.Generator) -> Image.Image:
    c1, c2 = _muted(rng), _muted(rng)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    theta = rng.uniform(0, math.pi)
    along = xx * math.cos(theta) + yy * math.sin(theta)
    if kind == "gradient":
        t = (along - along.min()) / (np.ptp(along) + 1e-9)
    elif kind == "stripes":
        t = 0.5 + 0.5 * np.sin(2 * math.pi * along / rng.uniform(0.08, 0.2))
    elif kind == "checker":
        cell = rng.uniform(0.08, 0.2)
        t = ((xx // cell + yy // cell) % 2).astype(np.float32)
    elif kind == "clouds":
        grid = rng.uniform(size=(rng.integers(3, 7),) * 2)
        t = np.asarray(Image.fromarray((grid * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC), np.float32) / 255
    else:  # plain, blobs
        t = np.zeros((side, side), np.float32)
    t = t[..., None] * np.float32(rng.uniform(0.35, 0.8))
    img = c1.astype(np.float32) * (1 - t) + c2.astype(np.float32) * t
    img += rng.standard_normal((side, side, 3), dtype=np.float32) * 6
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    if kind == "blobs":
        for _ in range(rng.integers(4, 10)):
            (x, y), r = rng.uniform(0, side, 2), rng.uniform(0.05, 0.2) * side
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in _muted(rng)))
    for _ in range(rng.integers(0, 3)):  # thin clutter lines: edges that are not objects
        pts = rng.uniform(0, side, 4)
        draw.line(list(pts), fill=tuple(int(v) for v in _muted(rng)), width=int(rng.integers(1, 3)))
    return out


def _polygon(obj: Obj, side: int) -> list[tuple[float, float]] | None:
    """The shape's outline in pixels; None for the circle (drawn as an ellipse)."""
    if obj.shape == "circle":
        return None
    if obj.shape == "square":
        pts = [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    elif obj.shape == "triangle":
        pts = [(0.0, -1.0), (0.93, 0.7), (-0.93, 0.7)]
    elif obj.shape == "diamond":
        pts = [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]
    elif obj.shape == "star":
        pts = [((1.0 if i % 2 == 0 else 0.45) * math.sin(i * math.pi / 5),
                -(1.0 if i % 2 == 0 else 0.45) * math.cos(i * math.pi / 5)) for i in range(10)]
    elif obj.shape == "cross":
        a, w = 0.95, 0.33
        pts = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")
    r, cx, cy = obj.scale * side / 2, obj.x * side, obj.y * side
    ca, sa = math.cos(math.radians(obj.angle)), math.sin(math.radians(obj.angle))
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def render(scene: Scene, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(scene.texture_seed)
    side = size * SUPERSAMPLE
    img = _background(scene.background, side, rng)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        outline = tuple(int(v * 0.55) for v in obj.rgb) if rng.uniform() < 0.3 else None
        width = SUPERSAMPLE if outline else 0
        poly = _polygon(obj, side)
        if poly is None:
            r, cx, cy = obj.scale * side / 2, obj.x * side, obj.y * side
            squash = rng.uniform(0.9, 1.0)  # circles are not all perfect
            draw.ellipse([cx - r, cy - r * squash, cx + r, cy + r * squash], fill=obj.rgb, outline=outline, width=width)
        else:
            draw.polygon(poly, fill=obj.rgb, outline=outline, width=width)
    small = np.asarray(img.resize((size, size), Image.LANCZOS), dtype=np.float32)
    small += rng.standard_normal(small.shape, dtype=np.float32) * np.float32(rng.uniform(0, 5))
    return Image.fromarray(np.clip(small, 0, 255).astype(np.uint8))


def render_jpeg(scene: Scene, size: int = 64) -> bytes:
    buf = io.BytesIO()
    render(scene, size).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()
