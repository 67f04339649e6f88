"""The checkpoint loader registry: every kind answers probe, load and weight_files, a new kind is
one class and one registration line, and what a run hashes is the bytes of the weights."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from models import loaders
from models.captioner import Captioner
from models.checkpoint import load_state, unique_state
from models.config import MEDConfig
from models.convert_hf import export_hf
from models.errors import CapfiltError
from models.filter import Filter
from models.kinds.base import Look, Probe
from pipeline.config import RunConfig, build
from pipeline.identity import describe_models

CPU = dict(device="cpu", precision="fp32")
TEXTS = ["a small red circle to the left of a blue square", "red ball beside a blue box", "img 2031 jpg"]


class ToyFolder:
    """A made-up kind: toy.json (the MEDConfig) and weights.safetensors (a Filter's state)."""

    name = "toy"
    looks = "a toy folder (toy.json, weights.safetensors)"

    def probe(self, look: Look) -> Probe | None:
        if look.is_file or "toy.json" not in look.names:
            return None
        return Probe(look.path, self.name, "ToyFilter", ("filter",), tokenizer_problem="toys carry no tokenizer")

    def load(self, cls, local: Path, image_size, tokenizer):
        model = cls(MEDConfig.from_dict(json.loads((local / "toy.json").read_text())), image_size=image_size)
        load_state(model, load_file(str(local / "weights.safetensors")), str(local))
        model.tokenizer = tokenizer
        return model

    def weight_files(self, look: Look) -> list[str]:
        return [look.member("weights.safetensors")]


def _filter(tiny_cfg, tokenizer, seed: int = 0) -> Filter:
    torch.manual_seed(seed)
    model = Filter(tiny_cfg).eval()
    model.tokenizer = tokenizer
    return model


def _images(n: int = 3, size: int = 32) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _run_cfg(tmp_path, captioner: str, filters: list[str]):
    return build(RunConfig, {"input": {"path": str(tmp_path)}, "output": str(tmp_path / "out"),
                             "captioner": {"checkpoint": captioner}, "filter": {"checkpoints": filters}}, "cfg")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_new_kind_is_one_class_and_one_registration(tmp_path, tiny_cfg, tiny_tokenizer, monkeypatch):
    original = _filter(tiny_cfg, tiny_tokenizer, seed=3)
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "toy.json").write_text(json.dumps(tiny_cfg.to_dict()))
    save_file(unique_state(original), str(folder / "weights.safetensors"))

    unknown = loaders.probe(str(folder))
    assert unknown.kind is None and "not a checkpoint (a folder without config.json)" in unknown.problem
    assert "toy folder" not in unknown.problem

    monkeypatch.setattr(loaders, "KINDS", [*loaders.KINDS, ToyFolder()])  # the registration line
    found = loaders.probe(str(folder))
    assert (found.kind, found.roles, found.problem) == ("toy", ("filter",), None)
    assert found.role_problem("filter") == "toys carry no tokenizer"  # a run names no tokenizer
    assert "toy folder" in loaders.probe(str(tmp_path / "toy" / "toy.json")).problem
    loaded = Filter.from_pretrained(folder, tokenizer=tiny_tokenizer, **CPU)
    images = _images()
    np.testing.assert_array_equal(loaded.itm(images, TEXTS), original.itm(images, TEXTS))
    with pytest.raises(CapfiltError, match=r"holds a filter \(ToyFilter\), not a captioner: load it with Filter"):
        Captioner.from_pretrained(folder, tokenizer=tiny_tokenizer)
    with pytest.raises(CapfiltError, match="carries no tokenizer: pass tokenizer="):
        Filter.from_pretrained(folder)
    assert loaders.weight_files(str(folder)) == [str(folder / "weights.safetensors")]
    models = describe_models(_run_cfg(tmp_path, str(folder), [str(folder)]))
    assert [m["sha256"] for m in models] == [_sha(folder / "weights.safetensors")] * 2


def test_each_kind_names_the_weights_a_run_hashes(tmp_path, tiny_cfg, tiny_tokenizer):
    flt = _filter(tiny_cfg, tiny_tokenizer)
    ours, theirs, pth = tmp_path / "ours", tmp_path / "hf", tmp_path / "model_base.pth"
    flt.save_pretrained(ours)
    export_hf(flt, theirs)
    torch.save({"model": {"visual_encoder.pos_embed": torch.zeros(1, 5, 8)}}, pth)
    expected = {ours: ours / "model.safetensors", theirs: theirs / "model.safetensors", pth: pth}
    for path, weights in expected.items():
        assert loaders.weight_files(str(path)) == [str(weights)]
    assert [loaders.probe(str(p)).kind for p in expected] == ["capfilt", "hf_blip", "blip_pth"]
    models = describe_models(_run_cfg(tmp_path, str(pth), [str(ours), str(theirs)]))
    assert [(m["role"], m["sha256"]) for m in models] == [
        ("captioner", _sha(pth)), ("filter", _sha(ours / "model.safetensors")), ("filter", _sha(theirs / "model.safetensors"))]
    assert loaders.weight_files(str(tmp_path / "nowhere")) == []
    assert describe_models(_run_cfg(tmp_path, str(tmp_path / "nowhere"), []))[0]["sha256"] is None


def test_a_checkpoint_of_one_role_names_the_class_that_loads_it(tmp_path, tiny_cfg, tiny_tokenizer):
    torch.manual_seed(0)
    cap = Captioner(tiny_cfg)
    cap.tokenizer = tiny_tokenizer
    cap.save_pretrained(tmp_path / "cap")
    with pytest.raises(CapfiltError, match=r"holds a captioner \(Captioner\), not a filter: load it with Captioner"):
        Filter.from_pretrained(tmp_path / "cap")
    assert loaders.probe(str(tmp_path / "cap")).role_problem("captioner") is None
    export_hf(cap, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    del config["architectures"]  # no class named: the weights tell, at load time
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    assert loaders.probe(str(tmp_path / "hf")).roles == ("captioner", "filter")
    with pytest.raises(CapfiltError, match=r"holds a captioner \(by its weights\), not a filter"):
        Filter.from_pretrained(tmp_path / "hf")
    assert Captioner.from_pretrained(tmp_path / "hf", **CPU).cfg.vocab_size == tiny_cfg.vocab_size


def test_a_checkpoint_on_a_store_loads_and_a_failing_store_is_one_message(tiny_cfg, tiny_tokenizer, monkeypatch):
    """memory:// stands in for an object store: the probe, the load and the weights a run hashes
    read it through fsspec; a store that fails is one CapfiltError naming the checkpoint."""
    from fsspec.implementations.memory import MemoryFileSystem

    original = _filter(tiny_cfg, tiny_tokenizer, seed=5)
    original.save_pretrained("memory://ckpts/filter")
    assert loaders.probe("memory://ckpts/filter").role_problem("filter") is None
    assert loaders.weight_files("memory://ckpts/filter") == ["memory:///ckpts/filter/model.safetensors"]  # fsspec spells it so
    images = _images()
    loaded = Filter.from_pretrained("memory://ckpts/filter", **CPU)
    np.testing.assert_array_equal(loaded.itm(images, TEXTS), original.itm(images, TEXTS))

    def unreachable(self, *args, **kwargs):
        raise TimeoutError("the store did not answer")

    monkeypatch.setattr(MemoryFileSystem, "ls", unreachable)
    with pytest.raises(CapfiltError, match="cannot read the checkpoint memory://ckpts/filter: TimeoutError: the store"):
        Filter.from_pretrained("memory://ckpts/filter")
    monkeypatch.undo()
    MemoryFileSystem().rm("/ckpts", recursive=True)  # the memory store is the process's: leave it as found
