"""bench.false_negatives' near misses against captions written by hand for a hand-built scene."""
from __future__ import annotations

import pytest

from bench.false_negatives import ATTRIBUTES, near_miss
from demo.world.world import Obj, Scene


def _scene(*objects: tuple[str, str, str, str]) -> Scene:
    xy = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75), "center": (0.5, 0.5)}
    return Scene(tuple(Obj(shape, colour, size, slot, *xy[slot], 0.3, 0.0, (200, 30, 30))
                       for shape, colour, size, slot in objects), "plain", 0)


ONE = _scene(("circle", "red", "small", "left"))
TWO = _scene(("circle", "red", "small", "left"), ("square", "blue", "large", "right"))


@pytest.mark.parametrize("scene,text,misses", [
    (ONE, "a small red circle on the left", set()),             # true: a near miss of nothing
    (ONE, "a red square on the left", {"shape"}),
    (ONE, "a large red circle on the left", {"size"}),
    (ONE, "a green circle on the left", {"colour"}),
    (ONE, "a red circle on the right", {"slot"}),
    (ONE, "a blue square on the right", set()),                  # two changes away
    (ONE, "a red circle and a blue square", set()),              # names two objects: no one change fits
    (TWO, "a red circle and a blue triangle", {"shape"}),
    (TWO, "a red circle to the left of a small blue square", {"size"}),
    (TWO, "a red square and a blue square", {"shape"}),
])
def test_near_misses_by_hand(scene: Scene, text: str, misses: set[str]) -> None:
    assert {a for a in ATTRIBUTES if near_miss(scene, text, a)} == misses
