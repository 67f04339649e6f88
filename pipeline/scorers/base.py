"""The scorer protocol: what the filter stage asks of a way to score texts against their images.

A *kind* of scorer (ScorerKind) is one file: its name (the config's `filter.scorer` and the
columns `web_<name>`, `caption_<name>`), a score function of one model, its default threshold
and the range its scores lie in. Built on a run's checkpoints it gives a Scorer: one model's
scores, or an ensemble (a scorer of scorers: the mean of its members' scores).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import numpy as np

from pipeline.loaders import Models, load_filter


class Scorer(Protocol):
    def __call__(self, pixels: np.ndarray, texts: list[str], image_index: list[int]) -> np.ndarray:
        """A float32 score per text; text t belongs to the image pixels[image_index[t]]."""


@dataclass(frozen=True)
class ScorerKind:
    name: str
    # (model, pixels (N, S, S, 3) uint8, texts, image_index) -> float32 score per text; each image
    # is best encoded once however many texts it has
    score: Callable[..., np.ndarray]
    threshold: float             # the default: a text is kept when its score reaches it
    bounds: tuple[float, float]  # where scores and thresholds lie
    label: str                   # what a score is, in words ("ITM match probability")
    method: str                  # how a text is scored, for the dataset card ("an image-text matching (ITM) head")
    load: Callable = load_filter  # checkpoint -> the model `score` reads (pipeline/loaders.py)

    def build(self, checkpoints: Sequence[str], models: Models) -> Scorer:
        """This kind on the run's checkpoints: several make an ensemble."""
        return Ensemble([_Bound(self.score, models.get(self.load, c)) for c in checkpoints])


@dataclass(frozen=True)
class _Bound:
    score: Callable[..., np.ndarray]
    model: object

    def __call__(self, pixels, texts, image_index) -> np.ndarray:
        return self.score(self.model, pixels, texts, image_index)


@dataclass(frozen=True)
class Ensemble:
    """A scorer of scorers: the mean of its members' scores (BLIP's filters, averaged)."""
    members: Sequence[Scorer]

    def __call__(self, pixels, texts, image_index) -> np.ndarray:
        return np.mean([m(pixels, texts, image_index) for m in self.members], axis=0)


_KINDS: dict[str, ScorerKind] = {}


def register(kind: ScorerKind) -> ScorerKind:
    """Called once by each scorer file (pipeline/scorers/registry.py imports them all)."""
    if kind.name in _KINDS:
        raise ValueError(f"two scorers are named {kind.name!r}")
    _KINDS[kind.name] = kind
    return kind


def registered() -> MappingProxyType:
    return MappingProxyType(_KINDS)
