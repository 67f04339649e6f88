"""Best of N: which of an image's N synthetic captions are kept (`captioner.keep`, `top_k`),
checked by hand on scores given, and the config's checks of the two keys."""
from __future__ import annotations

import numpy as np
import pytest

from models.errors import CapfiltError
from pipeline.config import RunConfig, build, validate
from pipeline.stages import Decide

TAU = 0.5
WEB = [0.7, 0.2, np.nan]
CAPTIONS = [[0.9, 0.3, 0.6, 0.8], [0.4, 0.45, 0.1, 0.2], [0.55, 0.55, 0.2, 0.9]]


def _batch():
    n = len(WEB)
    return {"key": np.array([f"k{i}" for i in range(n)], dtype=object),
            "url": np.array([f"http://127.0.0.1/{i}.jpg" for i in range(n)], dtype=object),
            "web_text": np.array(["web 0", "web 1", ""], dtype=object),
            "image": np.array([b"x"] * n, dtype=object), "source_shard": np.array(["00000"] * n, dtype=object),
            "error": np.array([""] * n, dtype=object), "width": np.full(n, 8, np.int32), "height": np.full(n, 8, np.int32),
            "web_itm": np.array(WEB, np.float32),
            "captions": np.array([[f"c{i}{j}" for j in range(4)] for i in range(n)] + [None], dtype=object)[:n],
            "caption_itm": np.array([np.array(c, np.float32) for c in CAPTIONS] + [None], dtype=object)[:n]}


def _kept(keep, top_k=1):
    return [r["kept_texts"] for r in Decide("capfilt", TAU, keep=keep, top_k=top_k)(_batch()).to_pylist()]


def test_threshold_keeps_every_caption_that_reaches_it():
    assert _kept("threshold") == [["c00", "c03", "web 0", "c02"], [], ["c23", "c20", "c21"]]


def test_top_k_keeps_the_k_best_captions_whatever_their_score():
    # the web text is still judged by the threshold alone; a tie goes to the caption written first
    assert _kept("top_k", 2) == [["c00", "c03", "web 0"], ["c11", "c10"], ["c23", "c20"]]


def test_both_keeps_the_k_best_of_those_that_reach_the_threshold():
    assert _kept("both", 1) == [["c00", "web 0"], [], ["c23"]]
    assert _kept("both", 3) == [["c00", "c03", "web 0", "c02"], [], ["c23", "c20", "c21"]]


def test_the_keep_keys_are_checked_with_the_rest(tmp_path):
    cfg = build(RunConfig, {"input": {"path": str(tmp_path)}, "output": str(tmp_path / "o"), "mode": "filter_only",
                            "filter": {"checkpoints": ["x"]},
                            "captioner": {"keep": "best", "num_captions": 2, "top_k": 3}}, "test")
    with pytest.raises(CapfiltError) as err:
        validate(cfg, check_paths=False)
    assert "captioner.keep='best'" in str(err.value)
    cfg.captioner.keep = "both"
    with pytest.raises(CapfiltError, match="top_k=3 keeps more captions than the captioner.num_captions=2"):
        validate(cfg, check_paths=False)
