"""Is a caption true of a scene? Reads colour, shape, size, position, relation and count words.

Used by evaluation to score any text (web alt-text, a captioner's output) against the generator's
truth. A caption is correct when it names at least one object and every claim it makes holds for
some assignment of its named objects to distinct objects of the scene; words it does not know are
ignored, so fluent filler neither helps nor hurts. It is complete when it is correct and names
every object with its colour and shape.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from demo.world.vocab import COLOURS, GENERIC_NOUNS, NUMBERS, SHAPES, SIZES
from demo.world.world import Scene, relation

_IMG = r"(?: of the (?:image|picture|photo|frame|scene|canvas))?"
_SIDE = r"(?: side| hand side| part| edge)?"
_NOT_REL = rf"(?!{_SIDE} of\b)"  # "on the left" is a place, "on the left of X" a relation


def _place(word: str) -> str:
    return rf"\b(?:on|at|to|in|towards|near) the {word}{_SIDE}{_IMG}\b{_NOT_REL}"


# Order matters: places before relations, longer phrases first.
_PHRASES: list[tuple[str, str]] = [
    (_place("left"), " <pos:left> "),
    (_place("right"), " <pos:right> "),
    (_place("top") + r"|\bon top\b(?! of\b)|\bin the upper part" + _IMG, " <pos:top> "),
    (_place("bottom") + r"|\bin the lower part" + _IMG, " <pos:bottom> "),
    (rf"\b(?:in|at|near) the (?:center|centre|middle){_IMG}\b|\bcentered\b", " <pos:center> "),
    (r"\b(?:(?:to|on|at) the left(?: side| hand side)? of|left of)\b", " <rel:left_of> "),
    (r"\b(?:(?:to|on|at) the right(?: side| hand side)? of|right of)\b", " <rel:right_of> "),
    (r"\b(?:above|over|on top of|on the top of)\b", " <rel:above> "),
    (r"\b(?:below|under|underneath|beneath)\b", " <rel:below> "),
    (r"\b(?:beside|next to|alongside|by the side of)\b", " <rel:beside> "),
]


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


def _lexicon() -> dict[str, tuple[str, str, bool]]:
    """word -> (kind, value, plural); multiword names are joined with '_' before lookup."""
    lex: dict[str, tuple[str, str, bool]] = {}
    for kind, table in (("colour", COLOURS), ("size", SIZES)):
        for value, words in table.items():
            lex.update({w: (kind, value, False) for w in words})
    for value, words in SHAPES.items():
        for w in words:
            w = w.replace(" ", "_")
            lex[w], lex[_plural(w)] = ("shape", value, False), ("shape", value, True)
    for w in GENERIC_NOUNS + ["one"]:
        lex[w], lex[_plural(w)] = ("generic", "", False), ("generic", "", True)
    return lex


_LEX = _lexicon()
_MULTIWORD = sorted({w for ws in SHAPES.values() for w in ws if " " in w}, key=len, reverse=True)


@dataclass
class Claim:
    """One named object: what the caption says about it (None: says nothing)."""
    colour: set[str] = field(default_factory=set)
    size: set[str] = field(default_factory=set)
    shape: str | None = None
    slot: str | None = None


@dataclass
class Parsed:
    claims: list[Claim]
    relations: list[tuple[int, str, int]]  # (claim a, relation, claim b)
    counts: list[int]  # "two shapes": the scene holds exactly this many objects


@dataclass(frozen=True)
class Verdict:
    correct: bool
    complete: bool
    reason: str


def _tokens(text: str) -> list[str]:
    t = " " + re.sub(r"[^a-z0-9,:;]+", " ", text.lower()) + " "
    t = re.sub(r"([,:;])", r" \1 ", t)
    for w in _MULTIWORD:
        t = re.sub(rf"\b{w}(s|es)?\b", lambda m, w=w: w.replace(" ", "_") + (m.group(1) or ""), t)
    for pattern, token in _PHRASES:
        t = re.sub(pattern, token, t)
    return t.split()


def parse(text: str) -> Parsed:
    out = Parsed([], [], [])
    number: int | None = None
    adj = Claim()
    pending_pos: str | None = None
    pending_rel: tuple[int, str] | None = None

    def reset() -> None:
        nonlocal number, adj
        number, adj = None, Claim()

    for tok in _tokens(text):
        if tok.startswith("<pos:"):
            slot = tok[5:-1]
            if out.claims and out.claims[-1].slot is None and pending_rel is None:
                out.claims[-1].slot = slot
            else:
                pending_pos = slot
            reset()
        elif tok.startswith("<rel:"):
            if out.claims:
                pending_rel = (len(out.claims) - 1, tok[5:-1])
            reset()
        elif tok in NUMBERS and not (tok == "one" and (adj.colour or adj.size)):
            number = NUMBERS[tok]
            adj = Claim()
        elif tok in _LEX:
            kind, value, plural = _LEX[tok]
            if kind in ("colour", "size"):
                getattr(adj, kind).add(value)
                continue
            has_adj = bool(adj.colour or adj.size)
            if kind == "generic" and plural and not has_adj:
                if number:
                    out.counts.append(number)
                reset()
                continue
            times = (number if number and number > 1 else 2) if plural else 1
            first = len(out.claims)
            for _ in range(times):
                out.claims.append(Claim(set(adj.colour), set(adj.size), value or None, pending_pos))
            pending_pos = None
            if pending_rel is not None:
                out.relations.append((pending_rel[0], pending_rel[1], first))
                pending_rel = None
            reset()
        elif tok in (",", ":", ";", "and", "with", "or"):
            reset()
    return out


def _fits(claim: Claim, obj: Any) -> bool:
    return (all(c == obj.colour for c in claim.colour) and all(s == obj.size for s in claim.size)
            and claim.shape in (None, obj.shape) and claim.slot in (None, obj.slot))


def _holds(a: Any, rel: str, b: Any) -> bool:
    truth = relation(a, b)
    return truth in ("left_of", "right_of") if rel == "beside" else truth == rel


def _assign(scene: Scene, p: Parsed) -> list[int] | None:
    """An injective map claims -> objects satisfying every claim and relation, or None."""
    objs = scene.objects

    def go(k: int, used: list[int]) -> list[int] | None:
        if k == len(p.claims):
            ok = all(_holds(objs[used[a]], r, objs[used[b]]) for a, r, b in p.relations)
            return list(used) if ok else None
        for i, o in enumerate(objs):
            if i not in used and _fits(p.claims[k], o):
                found = go(k + 1, used + [i])
                if found is not None:
                    return found
        return None

    return go(0, [])


def as_scene(scene: Scene | dict | str) -> Scene:
    """A Scene from a Scene, its dict or JSON, or a truth row holding one under 'scene'."""
    if isinstance(scene, Scene):
        return scene
    if isinstance(scene, str):
        scene = json.loads(scene)
    if "scene" in scene:
        return as_scene(scene["scene"])
    return Scene.from_dict(scene)


def judge(scene: Scene | dict | str, text: str | None) -> Verdict:
    scene = as_scene(scene)
    p = parse(text or "")
    if not p.claims:
        return Verdict(False, False, "names no object")
    if any(n != len(scene.objects) for n in p.counts):
        return Verdict(False, False, f"says {p.counts[0]} objects, the scene has {len(scene.objects)}")
    if len(p.claims) > len(scene.objects):
        return Verdict(False, False, f"names {len(p.claims)} objects, the scene has {len(scene.objects)}")
    found = _assign(scene, p)
    if found is None:
        return Verdict(False, False, "no objects in the scene fit what it says")
    complete = len(found) == len(scene.objects) and all(c.colour and c.shape for c in p.claims)
    return Verdict(True, complete, "ok")


def is_correct(scene: Scene | dict | str, text: str | None) -> bool:
    return judge(scene, text).correct
