"""Captions for scenes: clean ones from templates and synonyms, and the kinds of web noise.

A caption is first a plan (which objects, which words, which template) and then text, so that
hard noise can change exactly one attribute of a clean plan.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from demo.world.vocab import COLOURS, JUNK, POSITIONS, RELATIONS, SHAPES, SIZES, SLOTS, WORLD_COLOURS, WORLD_SHAPES
from demo.world.world import Scene, relation

# {mI}: object I with an article; {bI}: bare, alt-text style; {pI}: where object I is.
# A one-object caption always says where its object is. With colour and shape alone ("a red circle")
# a caption fits many images, and ITM's hard negatives, drawn by similarity from the batch, were
# often true pairs: 20% of one-object and 42% of two-object human images had another text true of
# them in their batch of 32 (the templates of 2e687d6); with the place said, 7% and 19%; with
# four colours and every size said too, 9% and 25% (`python -m bench.false_negatives`).
TEMPLATES: dict[int, list[str]] = {
    1: ["{m0} {p0}", "there is {m0} {p0}", "a picture of {m0} {p0}", "{b0} {p0}",
        "an image showing {m0} {p0}", "close-up of {m0} {p0}", "{p0}, {m0}"],
    2: ["{m0} {rel} {m1}", "{b0} {rel} {m1}", "there is {m0} {rel} {m1}", "{m0} and {m1}",
        "two shapes: {m0} and {m1}", "{m0} {p0} and {m1} {p1}", "a picture of {m0} {rel} {m1}",
        "{b0} and {b1}", "a photo with {m0} {rel} {m1}"],
    3: ["{m0}, {m1} and {m2}", "three shapes: {m0}, {m1} and {m2}", "{m0} {rel} {m1}, and {m2}",
        "{m0} {rel} {m1} and {m2} {p2}", "there are three objects: {m0}, {m1} and {m2}", "{b0}, {b1}, {b2}",
        "{m0} {p0}, {m1} {p1} and {m2} {p2}", "a picture of {m0} {rel} {m1} with {m2}", "{b0} {rel} {b1}, {b2}"],
}
NOISE_TYPES = ("mismatch", "wrong_attribute", "junk", "empty")
DEFAULT_MIX = {"mismatch": 0.35, "wrong_attribute": 0.35, "junk": 0.2, "empty": 0.1}
_OPPOSITE = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}


@dataclass(frozen=True)
class Mention:
    obj: int  # index into scene.objects
    colour: str
    shape: str
    size: str  # every mention says its object's size
    slot: str | None
    words: tuple[str, str, str, str | None]  # colour, shape, size and position words


@dataclass(frozen=True)
class Plan:
    template: str
    mentions: tuple[Mention, ...]
    rel: str | None = None  # how mention 0 stands to mention 1, when the template says
    rel_word: str | None = None


def _word(table: dict[str, list[str]], value: str, rng: np.random.Generator) -> str:
    words = table[value]
    return words[0] if len(words) == 1 or rng.uniform() < 0.6 else words[rng.integers(1, len(words))]


# Every mention names its object's size: a caption silent on size is true of both sizes, so in a
# batch it is a false negative for more images and never a negative that only size tells apart.
def _mention(scene: Scene, i: int, with_pos: bool, rng: np.random.Generator) -> Mention:
    o = scene.objects[i]
    slot = o.slot if with_pos else None
    words = (_word(COLOURS, o.colour, rng), _word(SHAPES, o.shape, rng), _word(SIZES, o.size, rng),
             _word(POSITIONS, slot, rng) if slot else None)
    return Mention(i, o.colour, o.shape, o.size, slot, words)


def describe(scene: Scene, rng: np.random.Generator) -> Plan:
    """A clean caption plan: every word in it is true of the scene."""
    n = len(scene.objects)
    template = str(rng.choice(TEMPLATES[n]))
    order = [int(i) for i in rng.permutation(n)]
    rel = rel_word = None
    if "{rel}" in template:
        pairs = [(a, b) for a in range(n) for b in range(n) if a != b and relation(scene.objects[a], scene.objects[b])]
        a, b = pairs[rng.integers(len(pairs))]
        order = [a, b] + [i for i in order if i not in (a, b)]
        rel = relation(scene.objects[a], scene.objects[b])
        if rel in ("left_of", "right_of") and rng.uniform() < 0.25:
            rel = "beside"
        rel_word = _word(RELATIONS, rel, rng)
    mentions = tuple(_mention(scene, i, f"{{p{k}}}" in template, rng) for k, i in enumerate(order))
    return Plan(template, mentions, rel, rel_word)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def realize(plan: Plan) -> str:
    def fill(m: re.Match) -> str:
        kind, idx = m.group(1), m.group(2)
        if kind == "rel":
            return plan.rel_word or ""
        men = plan.mentions[int(idx)]
        if kind == "p":
            return men.words[3] or ""
        bare = " ".join(w for w in (men.words[2], men.words[0], men.words[1]) if w)
        return _article(bare) if kind == "m" else bare

    return re.sub(r"\{(m|b|p|rel)(\d*)\}", fill, plan.template)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    return realize(describe(scene, rng))


def _matches(scene: Scene, men: Mention) -> list[int]:
    return [i for i, o in enumerate(scene.objects)
            if o.colour == men.colour and o.shape == men.shape and o.size == men.size
            and (men.slot is None or o.slot == men.slot)]


def corrupt(plan: Plan, scene: Scene, rng: np.random.Generator) -> tuple[Plan, str]:
    """Change one attribute so that the caption is false of the scene; returns (plan, attribute).

    Each change is false by construction (no object has the new value, or the objects named are
    unique so the flipped relation cannot hold for another pair): the judge is tested against this.
    """
    present = {a: {getattr(o, a) for o in scene.objects} for a in ("colour", "shape", "slot")}
    options: list[tuple[str, int]] = []
    for k, men in enumerate(plan.mentions):
        options.append(("colour", k))
        if set(WORLD_SHAPES) - present["shape"]:  # a wrong shape names one the world holds
            options.append(("shape", k))
        if men.slot is not None:
            options.append(("position", k))
        other = "small" if men.size == "large" else "large"
        if not any(o.size == other and o.colour == men.colour and o.shape == men.shape for o in scene.objects):
            options.append(("size", k))
    if plan.rel is not None and all(len(_matches(scene, m)) == 1 for m in plan.mentions[:2]):
        options.append(("relation", -1))
    kinds = sorted({a for a, _ in options})  # each kind of change equally likely, then which object
    attr = kinds[rng.integers(len(kinds))]
    ks = [k for a, k in options if a == attr]
    k = ks[rng.integers(len(ks))]
    if attr == "relation":
        horizontal = plan.rel in ("left_of", "right_of", "beside")
        true = relation(scene.objects[plan.mentions[0].obj], scene.objects[plan.mentions[1].obj])
        false = [_OPPOSITE[true]] * 3 + (["above", "below"] if horizontal else ["left_of", "right_of", "beside"])
        new = str(rng.choice(false))
        return replace(plan, rel=new, rel_word=_word(RELATIONS, new, rng)), attr
    men = plan.mentions[k]
    c, s, z, p = men.words
    if attr == "colour":
        value = str(rng.choice(sorted(set(WORLD_COLOURS) - present["colour"])))
        men = replace(men, colour=value, words=(_word(COLOURS, value, rng), s, z, p))
    elif attr == "shape":
        value = str(rng.choice(sorted(set(WORLD_SHAPES) - present["shape"])))
        men = replace(men, shape=value, words=(c, _word(SHAPES, value, rng), z, p))
    elif attr == "size":
        value = "small" if men.size == "large" else "large"
        men = replace(men, size=value, words=(c, s, _word(SIZES, value, rng), p))
    else:
        value = str(rng.choice(sorted(set(SLOTS) - present["slot"])))
        men = replace(men, slot=value, words=(c, s, z, _word(POSITIONS, value, rng)))
    mentions = plan.mentions[:k] + (men,) + plan.mentions[k + 1:]
    return replace(plan, mentions=mentions), attr


def junk(rng: np.random.Generator) -> str:
    """Alt-text that says nothing about the image: file names, boilerplate, calls to action."""
    pattern = str(rng.choice(JUNK))
    return pattern.format(n4=rng.integers(1000, 10000), n5=rng.integers(10000, 100000), k=rng.integers(1, 20),
                          m=rng.integers(20, 60), w=rng.choice([300, 468, 728]), h=rng.choice([60, 90, 250]))
