"""configs/train.example.yaml stays complete and loadable: every TrainConfig field is in it, the
values that are not example paths or names are the defaults, and with its paths pointed at
existing files it loads (workflows.train_config.load, which validates) for every command."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from workflows.train_config import TrainConfig, load

EXAMPLE = Path(__file__).resolve().parent.parent / "configs" / "train.example.yaml"
# keys whose value in the example is an example, not the default
EXAMPLES = {"name", "data.shards", "data.human", "data.test", "model.tokenizer"}


def _fields(obj, prefix: str = "") -> dict[str, object]:
    """Dotted key -> default value of every leaf field of a dataclass instance."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_fields(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def _leaves(values: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_every_field_is_in_the_example_with_its_default():
    defaults, given = _fields(TrainConfig()), _leaves(_example())
    assert sorted(set(defaults) - set(given)) == [], "fields missing from configs/train.example.yaml"
    assert sorted(set(given) - set(defaults)) == [], "keys in configs/train.example.yaml that TrainConfig lacks"
    for key in sorted(set(defaults) - EXAMPLES):
        assert given[key] == defaults[key], (key, given[key], defaults[key])
    assert TrainConfig.from_dict(_example()).to_dict().keys() == TrainConfig().to_dict().keys()


@pytest.fixture
def example_with_real_paths(tmp_path) -> dict:
    """The example with its paths replaced by files and folders that exist."""
    shards, annotations, vocab, init = tmp_path / "capfilt", tmp_path / "annotations", tmp_path / "vocab.txt", tmp_path / "ckpt"
    for folder in (shards, annotations, init):
        folder.mkdir()
    (annotations / "train.json").write_text("[]")
    (annotations / "test.json").write_text("[]")
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    values = _example()
    values["storage_path"] = str(tmp_path / "runs")
    values["data"].update(shards=[str(shards)], human=[str(annotations / "train.json")],
                          test=str(annotations / "test.json"))
    values["model"]["tokenizer"] = str(vocab)
    values["init_for_tests"] = str(init)
    return values


@pytest.mark.parametrize("task", ["pretrain", "caption", "filter", "eval"])
def test_the_example_loads_for_every_command(tmp_path, example_with_real_paths, task):
    values = dict(example_with_real_paths)
    init = values.pop("init_for_tests")
    if task != "pretrain":  # fine-tuning and evaluation start from a checkpoint
        values["model"] = {**values["model"], "init": init}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(values))
    cfg = load(path, task=task, name=None)  # as the command line calls it
    assert cfg.task == task and cfg.name == "blip-pretrain"
    assert cfg.schedule == ("step" if task == "pretrain" else "cosine")
    assert cfg.to_dict()["optim"] == TrainConfig().to_dict()["optim"]
