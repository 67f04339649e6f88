"""A threshold for a stated precision: the curve by hand, the chosen τ on a held-out split within
±0.03 of the target (and against the precision the score distributions give exactly), and
`capfilt calibrate` on labelled pairs scored by a run config's filter."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from scipy import stats

from models.errors import CapfiltError
from pipeline.calibrate import at, calibrate, curve, pick
from tests.fixtures_dedup import encode, photo
from tests.fixtures_run import config, run_checkpoint  # noqa: F401  (fixture)
from workflows.cli import main


def test_the_curve_and_the_pick_by_hand():
    scores, labels = [0.9, 0.8, 0.7, 0.6, 0.5, 0.5], [True, True, False, True, False, True]
    c = curve(scores, labels)
    assert c["threshold"].tolist() == [0.9, 0.8, 0.7, 0.6, 0.5]  # the tie at 0.5 is one threshold
    assert c["kept"].tolist() == [1, 2, 3, 4, 6]
    assert c["precision"].tolist() == pytest.approx([1, 1, 2 / 3, 3 / 4, 4 / 6])
    assert c["recall"].tolist() == pytest.approx([1 / 4, 2 / 4, 2 / 4, 3 / 4, 1])
    assert pick(scores, labels, 0.75) == {"threshold": 0.6, "precision": 0.75, "recall": 0.75, "kept": 4}
    assert pick(scores, labels, 0.8)["threshold"] == 0.8 and pick(scores, labels, 0.6)["threshold"] == 0.5
    assert at(scores, labels, 0.65) == {"threshold": 0.65, "kept": 3, "precision": 2 / 3, "recall": 0.5}
    assert pick([0.4, 0.3], [False, True], 0.9) is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_chosen_threshold_holds_its_precision_on_pairs_it_did_not_see(seed):
    """Matches score Beta(5, 2), mismatches Beta(2, 5), 30% matches: the exact precision at any τ is
    known, so the choice is checked on a held-out split and against the truth."""
    rng = np.random.default_rng(seed)
    n, share, target = 8000, 0.3, 0.9
    labels = rng.random(n) < share
    scores = np.where(labels, rng.beta(5, 2, n), rng.beta(2, 5, n))
    result = calibrate(scores, labels, target, holdout=0.5, seed=seed)
    held = result["held_out"]
    assert result["held_out_pairs"] == result["fit_pairs"] == 4000
    assert abs(held["precision"] - target) <= 0.03
    tau = result["threshold"]
    exact = share * stats.beta.sf(tau, 5, 2) / (share * stats.beta.sf(tau, 5, 2) + (1 - share) * stats.beta.sf(tau, 2, 5))
    assert abs(exact - target) <= 0.03
    assert held["recall"] == pytest.approx(stats.beta.sf(tau, 5, 2), abs=0.04)
    assert result["curve"]["threshold"] == sorted(result["curve"]["threshold"], reverse=True)


def test_an_unreachable_target_or_one_sided_labels_is_one_clear_error():
    with pytest.raises(CapfiltError, match="no threshold reaches precision 0.99"):
        calibrate([0.9, 0.8, 0.7, 0.6], [False, True, False, True], 0.99, holdout=0)
    with pytest.raises(CapfiltError, match="matches and mismatches"):
        calibrate([0.9, 0.8], [True, True], 0.9)


def test_capfilt_calibrate_scores_labelled_pairs_with_the_run_filter(tmp_path, run_checkpoint):
    images = [encode(photo(s, 48)) for s in range(12)]
    texts = [f"a picture of thing {s}" for s in range(12)]
    pairs = tmp_path / "pairs.parquet"  # each image with its text, and with the next image's
    pq.write_table(pa.table({"image": images * 2, "text": texts + texts[1:] + texts[:1],
                             "match": [True] * 12 + [False] * 12}), pairs)
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(config(tmp_path / "in", tmp_path / "out", run_checkpoint,
                                              mode="filter_only").to_dict()))
    (tmp_path / "in").mkdir()
    out = tmp_path / "calibration.json"
    assert main(["calibrate", "--config", str(run_yaml), "--pairs", str(pairs), "--target-precision", "0.5",
                 "--holdout", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    scored = pq.read_table(tmp_path / "calibration.scores.parquet").to_pydict()
    assert scored["match"] == [True] * 12 + [False] * 12 and len(set(scored["score"])) > 12
    s, y = np.array(scored["score"]), np.array(scored["match"])
    keep = s >= np.float32(result["threshold"])
    assert y[keep].mean() >= 0.5 and result["fit"]["kept"] == keep.sum()  # the precision it claims, by hand
    # the lowest such threshold: one score lower and the precision falls below the target
    lower = s[s < np.float32(result["threshold"])]
    assert not len(lower) or y[s >= lower.max()].mean() < 0.5
    assert result["scorer"] == "itm" and result["pairs"] == 24


def _calibrated(tmp_path, record: dict | None = None, **filter_section):
    from pipeline.config import RunConfig, build

    path = tmp_path / "calibration.json"
    if record is not None:
        path.write_text(json.dumps(record))
    values = {"input": {"path": str(tmp_path)}, "output": str(tmp_path / "out"), "mode": "filter_only",
              "filter": {"checkpoints": ["ckpt"], "calibration": str(path), **filter_section}}
    return build(RunConfig, values, "test")


RECORD = {"scorer": "itm", "checkpoints": ["ckpt"], "threshold": 0.37, "target_precision": 0.9, "fit_pairs": 10,
          "held_out_pairs": 10, "fit": {}, "held_out": None, "curve": {"threshold": [0.37], "precision": [0.9],
                                                                          "recall": [0.5]}}


def test_a_run_takes_its_threshold_from_the_calibration(tmp_path, monkeypatch):
    from pipeline.config import validate
    from pipeline.run import lineage

    monkeypatch.chdir(tmp_path)  # "ckpt" in the record and in the config: the same relative path
    cfg = validate(_calibrated(tmp_path, RECORD), check_paths=False)
    assert cfg.filter.threshold == 0.37 and cfg.filter.scoring.threshold == 0.37 and cfg.to_dict()["filter"]["threshold"] == 0.37
    validate(cfg, check_paths=False)  # validating again: the same threshold, no conflict
    got = lineage(cfg, {"models": []})
    assert got["threshold"] == 0.37 and got["calibration"]["curve"] == RECORD["curve"]
    assert got["calibration"]["path"] == str(tmp_path / "calibration.json")


@pytest.mark.parametrize("record, section, says", [
    (None, {}, "does not exist: write it with `capfilt calibrate"),
    ({"threshold": 0.4}, {}, "is not the output of `capfilt calibrate`"),
    ({**RECORD, "scorer": "itc"}, {}, "calibrates the itc scorer, but the run decides by itm"),
    ({**RECORD, "checkpoints": ["other"]}, {}, "was made with the filter checkpoints ['other']"),
    (RECORD, {"threshold": 0.5}, "filter.threshold=0.5 and filter.calibration (threshold 0.37) both say"),
])
def test_a_bad_calibration_is_one_clear_error(tmp_path, monkeypatch, record, section, says):
    from pipeline.config import validate

    monkeypatch.chdir(tmp_path)
    with pytest.raises(CapfiltError) as err:
        validate(_calibrated(tmp_path, record, **section), check_paths=False)
    assert says in str(err.value) and str(err.value).count("\n  - ") == 1, str(err.value)
