"""The filter's scorers (pipeline/scorers): ITM and ITC behind one protocol, ensembles, the
decision by either, and the run config's scorer section. Plain dicts, no Ray."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from models.errors import CapfiltError
from models.filter import Filter
from models.pretrain import BlipPretrain
from pipeline import identity as ident
from pipeline import rerun
from pipeline.config import RunConfig, build, validate
from pipeline.decode import Decode
from pipeline.schema import Scoring
from pipeline.scorers.registry import KINDS
from pipeline.stages import Decide, FilterStage

TEXTS = ["a red square", "", "a small blue circle left of a green star"]


def _jpeg(colour):
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_cfg, tiny_tokenizer):
    root = tmp_path_factory.mktemp("scorers")
    for seed in (0, 1):
        torch.manual_seed(seed)
        BlipPretrain(tiny_cfg).save_pretrained(root / f"ckpt{seed}", tokenizer=tiny_tokenizer)
    return [str(root / "ckpt0"), str(root / "ckpt1")]


@pytest.fixture(scope="module")
def batch():
    n = len(TEXTS)
    raw = {"key": np.array([f"k{i}" for i in range(n)], dtype=object),
           "url": np.array([f"http://127.0.0.1/{i}.jpg" for i in range(n)], dtype=object),
           "web_text": np.array(TEXTS, dtype=object),
           "image": np.array([_jpeg((200, 20, 20)), _jpeg((0, 0, 250)), b"broken"], dtype=object),
           "source_shard": np.array(["00000"] * n, dtype=object), "error": np.array([None] * n, dtype=object)}
    out = Decode(64)(raw)
    out["captions"] = np.array([["a red thing", "a square"], ["blue"], []] + [None], dtype=object)[:n]
    return out


def _reference(model: Filter, pixels, text: str, kind: str) -> float:
    """One (image, text) pair scored alone, through the model's public API: the ITM head's match
    probability, or the cosine of the normalised ITC features computed here."""
    if kind == "itm":
        return float(model.itm(pixels[None], [text])[0])
    image, txt = model.features(pixels[None], [text])
    return float(np.dot(image[0].numpy(), txt[0].numpy()))


def test_the_registered_scorers():
    assert list(KINDS) == ["itm", "itc"]
    assert KINDS["itm"].threshold == 0.5 and KINDS["itm"].bounds == (0.0, 1.0)
    assert KINDS["itc"].bounds == (-1.0, 1.0) and -1.0 < KINDS["itc"].threshold < 1.0


@pytest.mark.parametrize("kind", ["itm", "itc"])
def test_each_scorer_scores_every_text_as_its_model_does(checkpoints, batch, kind):
    stage = FilterStage(checkpoints[:1], 64, device="cpu", scorers=("itm", "itc"))
    out = stage(batch)
    model = Filter.from_pretrained(checkpoints[0], image_size=64, device="cpu")
    px = batch["pixels"]
    assert out[f"web_{kind}"][0] == pytest.approx(_reference(model, px[0], TEXTS[0], kind), abs=1e-5)
    assert np.isnan(out[f"web_{kind}"][1]) and np.isnan(out[f"web_{kind}"][2])  # empty web text; failed row
    expected = [_reference(model, px[1], "blue", kind)]
    np.testing.assert_allclose(out[f"caption_{kind}"][1], expected, atol=1e-5)
    assert len(out[f"caption_{kind}"][2]) == 0  # the failed row's captions are not scored
    assert len(stage.models.loaded) == 1  # ITM and ITC of one checkpoint share its model


def test_an_ensemble_is_the_mean_of_its_members(checkpoints, batch):
    both = FilterStage(checkpoints, 64, device="cpu", scorers=("itm", "itc"))(batch)
    alone = [FilterStage([c], 64, device="cpu", scorers=("itm", "itc"))(batch) for c in checkpoints]
    for kind in ("itm", "itc"):
        assert both[f"web_{kind}"][0] == pytest.approx((alone[0][f"web_{kind}"][0] + alone[1][f"web_{kind}"][0]) / 2,
                                                       abs=1e-6)
        np.testing.assert_allclose(both[f"caption_{kind}"][0],
                                   (alone[0][f"caption_{kind}"][0] + alone[1][f"caption_{kind}"][0]) / 2, atol=1e-6)
    # a compared scorer leaves the deciding one's scores as they are
    itm_only = FilterStage(checkpoints, 64, device="cpu")(batch)
    assert "web_itc" not in itm_only
    np.testing.assert_array_equal(itm_only["web_itm"], both["web_itm"])


def test_the_first_scorer_decides_and_the_others_are_carried():
    n = 3
    batch = {"key": np.array(["a", "b", "c"], dtype=object), "url": np.array(["u"] * n, dtype=object),
             "web_text": np.array(["w0", "w1", "w2"], dtype=object), "image": np.array([b"x"] * n, dtype=object),
             "source_shard": np.array(["0"] * n, dtype=object), "error": np.array([""] * n, dtype=object),
             "width": np.full(n, 8), "height": np.full(n, 8),
             "captions": np.array([["c0"], ["c1"], ["c2"]], dtype=object),
             "web_itc": np.array([0.31, 0.1, -0.2], np.float32),
             "caption_itc": np.array([np.array([0.05], np.float32), np.array([0.4], np.float32),
                                      np.array([0.29], np.float32)], dtype=object),
             "web_itm": np.array([0.1, 0.9, 0.9], np.float32),
             "caption_itm": np.array([np.array([0.9], np.float32)] * n, dtype=object)}
    table = Decide("capfilt", 0.3, scorers=("itc", "itm"))(batch)
    assert table.schema.equals(Scoring("itc", 0.3, (("itm", 0.5),)).staging_schema())
    rows = table.to_pylist()
    assert [r["status"] for r in rows] == ["kept", "kept", "dropped"]  # ITM would keep all three
    assert rows[0]["kept_texts"] == ["w0"] and rows[1]["kept_texts"] == ["c1"]
    assert rows[1]["kept_scores"] == pytest.approx([0.4]) and rows[2]["web_itm"] == pytest.approx(0.9)


def _cfg(**filter_):
    return build(RunConfig, {"input": {"path": "x"}, "output": "y", "captioner": {"checkpoint": "c"},
                             "filter": {"checkpoints": ["f"], **filter_}}, "cfg")


def test_the_scorer_config_and_its_defaults():
    default = _cfg()
    assert default.filter.scoring == Scoring("itm", 0.5) and default.to_dict()["filter"]["threshold"] == 0.5
    itc = _cfg(scorer="itc", compare={"itm": None})
    assert itc.filter.scoring == Scoring("itc", KINDS["itc"].threshold, (("itm", 0.5),))
    assert itc.to_dict()["filter"]["compare"] == {"itm": 0.5}
    assert build(RunConfig, itc.to_dict(), "again").filter.scoring == itc.filter.scoring  # round trip
    validate(_cfg(scorer="itc", threshold=-0.25, compare={"itm": 0.7}), check_paths=False)  # cosines may be negative


@pytest.mark.parametrize("filter_, expected", [
    ({"scorer": "clip"}, "filter.scorer='clip': use one of ('itm', 'itc')"),
    ({"threshold": -0.25}, "filter.threshold=-0.25 must be within [0, 1]"),
    ({"scorer": "itc", "threshold": 1.5}, "filter.threshold=1.5 must be within [-1, 1]"),
    ({"compare": {"itm": 0.5}}, "filter.compare.itm: itm decides already"),
    ({"compare": {"itx": 0.5}}, "filter.compare.itx: no scorer of that name"),
    ({"compare": {"itc": "high"}}, "filter.compare.itc must be a threshold"),
    ({"compare": {"itc": 2}}, "filter.compare.itc=2 must be within [-1, 1]"),
    ({"threshold": "high"}, "cfg.filter.threshold must be a float"),
])
def test_scorer_mistakes_are_named(filter_, expected):
    with pytest.raises(CapfiltError) as err:
        validate(_cfg(**filter_), check_paths=False)
    assert expected in str(err.value)


def test_the_scorer_choice_is_part_of_the_run_identity():
    a, b = ident.params(_cfg()), ident.params(_cfg(scorer="itc", compare={"itm": None}))
    changes = rerun.diff({"params": a}, {"params": b})
    assert 'filter.scorer "itm" -> "itc"' in changes and "filter.threshold 0.5 -> 0.3" in changes
    assert "filter.compare.itm (unset) -> 0.5" in changes
    assert ident.params(_cfg(threshold=0.5)) == a  # the default given or not: one identity
