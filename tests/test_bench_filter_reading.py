"""bench.filter_reading's AUC against hand counts of ordered pairs."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from bench.filter_reading import auc


def _pairs(pos, neg) -> float:  # the definition: share of (positive, negative) pairs in order, ties half
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)) / (len(pos) * len(neg))


@pytest.mark.parametrize("pos,neg,expected", [([3, 4], [1, 2], 1.0), ([1, 2], [3, 4], 0.0), ([1, 3], [2], 0.5),
                                              ([1.0], [1.0], 0.5), ([0.9, 0.2, 0.6], [0.2, 0.5], 4.5 / 6)])
def test_auc_by_hand(pos, neg, expected) -> None:
    assert auc(np.array(pos), np.array(neg)) == pytest.approx(expected)


def test_auc_is_the_share_of_ordered_pairs() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 6, 40).astype(float), rng.integers(0, 5, 30).astype(float)  # many ties
    assert auc(pos, neg) == pytest.approx(_pairs(pos, neg))
