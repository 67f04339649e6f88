"""Scenes of the synthetic world: one to three shapes with colour, size and place on a background.

A scene holds everything the renderer needs (so an image is a pure function of its scene) and
everything a judge needs to say whether a caption is true.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from demo.world.vocab import RGB, SIZES, SLOTS, WORLD_COLOURS, WORLD_SHAPES

# Smooth grounds (render.py still draws stripes, checks and blobs, which no scene draws now); their
# share in the gain of shape reading was not measured apart from the shapes' and sizes'.
BACKGROUNDS = ["plain", "gradient", "clouds"]
N_OBJECTS_P = {1: 0.35, 2: 0.40, 3: 0.25}
SLOT_XY = {"left": (0.25, 0.5), "center": (0.5, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75)}
# Diameter as a fraction of the image side: a small object spans about 2.5 patches of 8 px at 64 px.
SIZE_SCALE = {"small": 0.3, "large": 0.46}


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    slot: str
    x: float  # centre, fraction of the image side
    y: float
    scale: float  # diameter, fraction of the image side
    angle: float  # degrees
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str
    texture_seed: int  # the background texture and pixel noise come from here

    def to_dict(self) -> dict[str, Any]:
        objs = [{f: getattr(o, f) for f in Obj.__dataclass_fields__} for o in self.objects]  # asdict is slow
        return {"objects": objs, "background": self.background, "texture_seed": self.texture_seed}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Scene":
        objs = tuple(Obj(**{**o, "rgb": tuple(o["rgb"])}) for o in d["objects"])
        return cls(objects=objs, background=d["background"], texture_seed=int(d["texture_seed"]))

    @classmethod
    def from_json(cls, s: str) -> "Scene":
        return cls.from_dict(json.loads(s))


def relation(a: Obj, b: Obj) -> str | None:
    """How a stands to b: left_of, right_of, above, below; None when they share no row or column."""
    (ca, ra), (cb, rb) = SLOTS[a.slot], SLOTS[b.slot]
    if ra == rb and ca != cb:
        return "left_of" if ca < cb else "right_of"
    if ca == cb and ra != rb:
        return "above" if ra < rb else "below"
    return None


# Two objects sit on opposite sides (left and right, or top and bottom): they always have a relation
# to state, and two large ones do not cover each other as a side and the centre would.
_OPPOSITE_PAIRS = [("left", "right"), ("top", "bottom")]


def _jitter_rgb(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    shade = rng.uniform(0.85, 1.1)
    out = np.asarray(rgb, float) * shade + rng.normal(0, 6, 3)
    return tuple(int(v) for v in np.clip(out, 0, 255))


def sample_scene(rng: np.random.Generator, counts: tuple[int, ...] = tuple(N_OBJECTS_P)) -> Scene:
    """A random scene with one of `counts` objects (N_OBJECTS_P's odds, renormalised over them)."""
    odds = [N_OBJECTS_P[c] for c in counts]
    n = int(rng.choice(list(counts), p=[o / sum(odds) for o in odds]))
    if n == 2:
        slots = list(_OPPOSITE_PAIRS[rng.integers(len(_OPPOSITE_PAIRS))])
    else:
        slots = [str(s) for s in rng.choice(list(SLOTS), size=n, replace=False)]
    objs = []
    for slot in slots:
        shape = str(rng.choice(list(WORLD_SHAPES)))
        colour = str(rng.choice(list(WORLD_COLOURS)))
        size = str(rng.choice(list(SIZES)))
        x, y = (v + rng.uniform(-0.05, 0.05) for v in SLOT_XY[slot])
        objs.append(Obj(shape, colour, size, slot, round(float(x), 4), round(float(y), 4),
                        round(float(SIZE_SCALE[size] * rng.uniform(0.9, 1.1)), 4),
                        round(float(rng.uniform(-15, 15)), 2), _jitter_rgb(RGB[colour], rng)))
    rng.shuffle(objs)  # drawing order decides who occludes whom
    return Scene(tuple(objs), str(rng.choice(BACKGROUNDS)), int(rng.integers(2**31)))

