"""bench.itm_signal's minimal pairs: the true caption holds, the changed one is a near miss on the
attribute asked for (bench.false_negatives' one-change check, an independent reading)."""
from __future__ import annotations

import numpy as np
import pytest

from bench.false_negatives import near_miss
from bench.itm_signal import minimal_pairs
from demo.world import is_correct
from demo.world.world import sample_scene


@pytest.mark.parametrize("attribute", ["shape", "size"])
def test_minimal_pairs_change_one_attribute(attribute: str) -> None:
    rng = np.random.default_rng(3)
    scenes = [sample_scene(rng, (1, 2)) for _ in range(60)]
    pairs = minimal_pairs(scenes, (attribute,))
    assert len(pairs) >= 30  # most scenes allow the change (not when every other shape is in the scene)
    for i, true, wrong in pairs:
        assert is_correct(scenes[i], true), true
        assert near_miss(scenes[i], wrong, attribute), (true, wrong)
