"""Precision follows the hardware: `auto` picks bf16 only where the device runs it natively.

The CPU's flags are faked (machines of this kind differ: AMX-BF16, AVX512-BF16, AVX2 only), so
every branch is tested on whatever CPU runs the suite. The bf16 tests at the end are small enough
for a CPU that emulates bf16.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from models import precision as P
from models.errors import CapfiltError

AVX2_ONLY = {"cpu_name": "AMD EPYC", "avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False}
AVX512_BF16 = {**AVX2_ONLY, "avx512_f": True, "avx512_bf16": True}
AMX = {"cpu_name": "Intel Xeon", "avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_bf16": True}


@pytest.fixture
def fake_cpu(monkeypatch):
    """Make the process see a CPU with the given flags (and bf16 at the given measured speed)."""
    def fake(caps: dict, bf16_speed: float = 0.09):
        monkeypatch.setattr(P, "cpu_capabilities", lambda: dict(caps))
        monkeypatch.setattr(P, "measured_bf16_speed", lambda: bf16_speed)
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
        P._warn_emulated.cache_clear()
    yield fake
    P._warn_emulated.cache_clear()


def test_auto_is_fp32_where_the_cpu_emulates_bf16(fake_cpu):
    fake_cpu(AVX2_ONLY)
    assert P.resolve_precision("cpu", "auto") == "fp32"
    assert P.resolve_precision("cpu", None) == "fp32"  # the Python API's default
    assert P.resolve_precision("cpu", "fp32") == "fp32"


@pytest.mark.parametrize("caps", [AVX512_BF16, AMX], ids=["avx512_bf16", "amx"])
def test_auto_is_bf16_where_the_cpu_runs_it_natively(fake_cpu, caps):
    fake_cpu(caps, bf16_speed=2.5)
    assert P.resolve_precision("cpu", "auto") == "bf16"
    assert P.resolve_precision("cpu", "fp32") == "fp32"  # an explicit choice stands


def test_a_onednn_cap_below_bf16_makes_it_emulated(fake_cpu, monkeypatch):
    fake_cpu(AMX)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert P.resolve_precision("cpu") == "fp32"
    assert "not native" in P.cpu_summary()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert P.resolve_precision("cpu") == "bf16"


def test_without_flags_a_timed_matmul_decides(fake_cpu):
    fake_cpu({}, bf16_speed=0.05)  # torch reports no flags (another architecture): emulated
    assert P.resolve_precision("cpu") == "fp32"
    fake_cpu({}, bf16_speed=1.8)
    assert P.resolve_precision("cpu") == "bf16"


def test_explicit_bf16_on_an_emulating_cpu_runs_after_one_warning(fake_cpu, caplog):
    fake_cpu(AVX2_ONLY, bf16_speed=0.09)
    with caplog.at_level(logging.WARNING, logger="models.precision"):
        assert P.resolve_precision("cpu", "bf16") == "bf16"
        assert P.resolve_precision("cpu", "bf16") == "bf16"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "emulates bf16" in warnings[0] and "0.09x" in warnings[0]


def test_explicit_bf16_on_a_native_cpu_does_not_warn(fake_cpu, caplog):
    fake_cpu(AMX, bf16_speed=3.0)
    with caplog.at_level(logging.WARNING, logger="models.precision"):
        assert P.resolve_precision("cpu", "bf16") == "bf16"
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_an_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(CapfiltError, match="fp16.*auto"):
        P.resolve_precision("cpu", "fp16")


def test_the_measured_speed_is_a_real_ratio():
    speed = P.measured_bf16_speed.__wrapped__()  # not the cached value: measure here
    assert 0.0 < speed < 100.0
    assert "capability" in P.cpu_summary()


def test_every_config_defaults_to_auto_and_refuses_a_typo():
    from pipeline.config import RunConfig, build, validate
    from workflows.bootstrap_config import BootstrapConfig
    from workflows.train_config import TrainConfig
    from workflows.train_config import validate as validate_train

    assert RunConfig().compute.precision == TrainConfig().compute.precision == "auto"
    assert BootstrapConfig().train.compute.precision == BootstrapConfig().capfilt.compute.precision == "auto"
    run = build(RunConfig, {"input": {"path": "x"}, "output": "y", "mode": "filter_only",
                            "filter": {"checkpoints": ["c"]}, "compute": {"precision": "half"}}, "t")
    with pytest.raises(CapfiltError, match="compute.precision='half'"):
        validate(run, check_paths=False)
    train = TrainConfig.from_dict({"name": "n", "data": {"human": ["h.json"]}, "model": {"vocab_size": 50},
                                   "compute": {"precision": "half"}})
    with pytest.raises(CapfiltError, match="compute.precision='half'"):
        validate_train(train)


# -- bf16 itself, small enough for an emulating CPU -----------------------------------------------

def test_bf16_inference_agrees_with_fp32(tiny_cfg, tiny_tokenizer, tmp_path):
    from models.captioner import Captioner
    from models.filter import Filter
    from models.pretrain import BlipPretrain

    torch.manual_seed(0)
    BlipPretrain(tiny_cfg).save_pretrained(tmp_path / "m", tokenizer=tiny_tokenizer)
    images = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    texts = ["a red circle", "a blue square", "two green stars"]
    probs = {}
    for precision in ("fp32", "bf16"):
        f = Filter.from_pretrained(tmp_path / "m", image_size=96, device="cpu", precision=precision)
        assert f.precision == precision
        probs[precision] = f.itm(images, texts, image_index=[0, 1, 1])
        c = Captioner.from_pretrained(tmp_path / "m", image_size=96, device="cpu", precision=precision)
        captions = c.caption(images, max_length=12, seed=0)
        assert len(captions) == 2 and all(len(x) == 1 for x in captions)
    # bf16 keeps 8 bits of mantissa: a random tiny model's match probabilities move by ~1e-2
    assert np.abs(probs["bf16"] - probs["fp32"]).max() < 0.05


def test_a_bf16_training_step_matches_fp32(tiny_cfg, tiny_tokenizer):
    from models.precision import autocast
    from models.pretrain import BlipPretrain
    from models.tokenizer import encode

    torch.manual_seed(0)
    # no queue: the second pass must see the same ITC negatives as the first
    model = BlipPretrain(dataclasses.replace(tiny_cfg, queue_size=0)).train()
    pixels = torch.randn(4, 3, 64, 64)
    ids, padding = encode(tiny_tokenizer, ["a red circle", "a blue square", "a green star", "a black cross"])
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(1)  # the same hard negatives
        with autocast(torch.device("cpu"), precision):
            out = model(pixels, ids, padding)
        losses[precision] = {k: v.item() for k, v in out.items()}
        sum(out.values()).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad()
    for name, value in losses["fp32"].items():
        assert abs(losses["bf16"][name] - value) < 0.05 * max(1.0, abs(value)), (name, losses)
