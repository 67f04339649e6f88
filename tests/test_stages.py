"""The graph's stages on plain dicts, no Ray: decode, decide, and the filter/captioner actors."""
import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from models.sampling import SamplingOptions
from pipeline.decode import Decode
from pipeline.schema import STAGING_SCHEMA
from pipeline.stages import CapFiltStage, CaptionStage, Decide, FilterStage


def _jpeg(size=(40, 30), colour=(200, 20, 20)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def _batch(images, errors=None, texts=None):
    n = len(images)
    return {
        "key": np.array([f"k{i}" for i in range(n)], dtype=object),
        "url": np.array([f"http://127.0.0.1/{i}.jpg" for i in range(n)], dtype=object),
        "web_text": np.array(texts or ["a red square"] * n, dtype=object),
        "image": np.array(images, dtype=object),
        "source_shard": np.array(["00000"] * n, dtype=object),
        "error": np.array(errors or [None] * n, dtype=object),
    }


def test_decode_resizes_and_fails_bad_rows_with_reasons():
    out = Decode(32, max_pixels=10_000)(_batch(
        [_jpeg(), b"not an image", _jpeg((200, 100)), None, _jpeg()],
        errors=[None, None, None, None, "download: HTTP Error 404"]))
    assert out["pixels"].shape == (5, 32, 32, 3) and out["pixels"].dtype == np.uint8
    assert out["pixels"][0, 16, 16].tolist() == pytest.approx([200, 20, 20], abs=3)
    assert (out["width"][0], out["height"][0]) == (40, 30)
    assert out["error"][0] == ""  # no reason: the row decoded
    assert out["error"][1].startswith("decode: UnidentifiedImageError")
    assert "over 10000 pixels" in out["error"][2]
    assert out["error"][3] == "decode: no image bytes"
    assert out["error"][4] == "download: HTTP Error 404"  # an earlier stage's reason is kept


def _scored(web_itm, caption_itm, captions=None, texts=None, errors=None):
    n = len(web_itm)
    batch = _batch([b"x"] * n, errors=errors, texts=texts)
    batch.update(
        width=np.full(n, 8, np.int32), height=np.full(n, 8, np.int32),
        web_itm=np.array(web_itm, np.float32),
        caption_itm=np.array([np.array(c, np.float32) for c in caption_itm] + [None], dtype=object)[:n],
        captions=np.array([list(c) for c in (captions or [[f"cap {j}" for j in range(len(c))] for c in caption_itm])] + [None], dtype=object)[:n],
    )
    return batch


def test_decide_keeps_each_text_whose_match_reaches_the_threshold():
    batch = _scored([0.9, 0.2, 0.2, 0.5, np.nan, 0.95], [[0.1, 0.7], [0.3, 0.1], [0.49, 0.2], [0.5], [0.8], [0.9]],
                    texts=["web0", "web1", "web2", "web3", "", "web5"], errors=[None] * 5 + ["decode: broken"])
    table = Decide("capfilt", 0.5)(batch)
    assert table.schema.equals(STAGING_SCHEMA)
    rows = table.to_pylist()
    assert [r["status"] for r in rows] == ["kept", "dropped", "dropped", "kept", "kept", "failed"]
    assert rows[0]["kept_texts"] == ["web0", "cap 1"] and rows[0]["kept_origins"] == ["web", "synthetic"]
    assert rows[0]["kept_scores"] == pytest.approx([0.9, 0.7])
    assert rows[3]["kept_texts"] == ["web3", "cap 0"]  # >= threshold keeps, on both sides
    assert rows[4]["kept_texts"] == ["cap 0"] and rows[4]["web_itm"] is None  # empty web text: not scored, not kept
    assert rows[5]["error"] == "decode: broken" and rows[5]["kept_texts"] == [] and rows[5]["image"] is None
    assert "pixels" not in table.column_names


def test_decide_modes_and_max_texts():
    batch = _scored([0.6, 0.1], [[0.9, 0.7], [0.2, 0.3]])
    best_one = Decide("capfilt", 0.5, max_texts=1)(batch).to_pylist()
    assert best_one[0]["kept_texts"] == ["cap 0"] and best_one[1]["status"] == "dropped"
    filter_only = Decide("filter_only", 0.5)({k: v for k, v in batch.items() if k not in ("captions", "caption_itm")})
    assert filter_only.column("kept_texts").to_pylist() == [["a red square"], []]
    caption_only = Decide("caption_only", 0.5)(batch).to_pylist()
    assert caption_only[1]["kept_texts"] == ["a red square", "cap 0", "cap 1"]  # no filter: everything stays


def test_model_stages_on_a_plain_dict(tmp_path, tiny_cfg, tiny_tokenizer):
    import torch

    from models.pretrain import BlipPretrain

    torch.manual_seed(0)
    BlipPretrain(tiny_cfg).save_pretrained(tmp_path / "ckpt", tokenizer=tiny_tokenizer)
    batch = Decode(64)(_batch([_jpeg(), b"broken", _jpeg(colour=(0, 0, 250))], texts=["a red square", "x", ""]))
    captioned = CaptionStage(str(tmp_path / "ckpt"), 64, SamplingOptions(num_captions=2, max_length=10), seed=0, device="cpu")(batch)
    assert [len(c) for c in captioned["captions"]] == [2, 0, 2]
    again = CaptionStage(str(tmp_path / "ckpt"), 64, SamplingOptions(num_captions=2, max_length=10), seed=0, device="cpu")(batch)
    assert [list(c) for c in again["captions"]] == [list(c) for c in captioned["captions"]]  # same rows, same captions
    stage = FilterStage([str(tmp_path / "ckpt")] * 2, 64, device="cpu")
    scored = stage(captioned)
    from models.filter import Filter

    direct = Filter.from_pretrained(str(tmp_path / "ckpt"), image_size=64, device="cpu").itm(batch["pixels"][[0]],
                                                                                          ["a red square"])[0]
    assert scored["web_itm"][0] == pytest.approx(direct, abs=1e-5)  # an ensemble of one model twice: its mean
    assert np.isnan(scored["web_itm"][1]) and np.isnan(scored["web_itm"][2])  # failed row; empty web text
    assert len(scored["caption_itm"][0]) == 2 and len(scored["caption_itm"][1]) == 0
    assert isinstance(Decide("capfilt", 0.5)(scored), pa.Table)


def test_fused_stage_writes_what_the_two_stages_write(tmp_path, tiny_cfg, tiny_tokenizer):
    import torch

    from models.pretrain import BlipPretrain

    torch.manual_seed(1)
    BlipPretrain(tiny_cfg).save_pretrained(tmp_path / "ckpt", tokenizer=tiny_tokenizer)
    batch = Decode(64)(_batch([_jpeg(), _jpeg(colour=(0, 250, 0))], texts=["a red square", "a green circle"]))
    caption = dict(checkpoint=str(tmp_path / "ckpt"), image_size=64, options=SamplingOptions(num_captions=2, max_length=10),
                   seed=3, device="cpu")
    filter_ = dict(checkpoints=[str(tmp_path / "ckpt")], image_size=64, device="cpu")
    fused = CapFiltStage(caption, filter_)(batch)
    apart = FilterStage(**filter_)(CaptionStage(**caption)(batch))
    assert [list(c) for c in fused["captions"]] == [list(c) for c in apart["captions"]]
    np.testing.assert_allclose(fused["web_itm"], apart["web_itm"], atol=1e-6)
    for a, b in zip(fused["caption_itm"], apart["caption_itm"]):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_layout_auto_fuses_without_gpus_only():
    from pipeline.config import RunConfig, build

    def cfg(**compute):
        return build(RunConfig, {"compute": compute}, "test")

    assert cfg().fused and not cfg(num_gpus=1.0).fused
    assert cfg(layout="fused", num_gpus=0.5).fused and not cfg(layout="separate").fused
    assert not build(RunConfig, {"mode": "filter_only"}, "test").fused  # one model: nothing to fuse
