"""The run config is checked before anything starts: one clear line per mistake."""
import pytest

from models.errors import CapfiltError
from pipeline.config import RunConfig, build, load, validate
from workflows import cli


def test_the_example_config_parses():
    cfg = load("configs/capfilt.example.yaml", check_paths=False)
    assert (cfg.mode, cfg.filter.threshold, cfg.captioner.top_p) == ("capfilt", 0.5, 0.9)


def test_every_mistake_is_reported_at_once(tmp_path):
    cfg = build(RunConfig, {
        "input": {"path": str(tmp_path / "nowhere")}, "output": str(tmp_path / "out"),
        "captioner": {"checkpoint": str(tmp_path / "missing"), "num_captions": 0},
        "filter": {"checkpoints": [str(tmp_path / "missing")], "threshold": 1.5},
        "compute": {"layout": "both"},
    }, "cfg")
    with pytest.raises(CapfiltError) as err:
        validate(cfg)
    message = str(err.value)
    for part in ("threshold=1.5 must be within [0, 1]", "num_captions=0 must be at least 1",
                 "nowhere does not exist", "missing does not exist", "compute.layout='both'"):
        assert part in message


@pytest.mark.parametrize("values, expected", [
    ({"filter": {"treshold": 0.5}}, r"unknown key\(s\) \['treshold'\] in cfg.filter"),
    ({"seed": "zero"}, "cfg.seed must be a int"),
    ({"mode": "both"}, "mode='both'"),
])
def test_typos_and_types(values, expected):
    with pytest.raises(CapfiltError, match=expected):
        validate(build(RunConfig, {"input": {"path": "x"}, "output": "y", **values}, "cfg"), check_paths=False)


def test_cli_prints_one_message_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("input: {path: nowhere}\noutput: out\nfilter: {threshold: -1}\n")
    assert cli.main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "threshold=-1" in err and "Traceback" not in err


def test_a_fractional_gpu_share_is_accepted():
    cfg = build(RunConfig, {"input": {"path": "x"}, "output": "y", "compute": {"num_gpus": 0.5}}, "cfg")
    assert cfg.compute.num_gpus == 0.5


# -- every mistake at once, and the checkpoints checked before Ray starts ---------------------------

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_cfg, tiny_tokenizer):
    """Good and wrong checkpoints, made in code: ours (pre-training, captioner-only), a transformers
    BertModel and a BlipForQuestionAnswering folder (only their config.json matters here), a .pth."""
    import json

    import torch

    from models.captioner import Captioner
    from models.pretrain import BlipPretrain

    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    BlipPretrain(tiny_cfg).save_pretrained(root / "pretrain", tokenizer=tiny_tokenizer)
    captioner = Captioner(tiny_cfg)
    captioner.tokenizer = tiny_tokenizer
    captioner.save_pretrained(root / "captioner")
    for name, arch, model_type in (("bert", "BertModel", "bert"), ("vqa", "BlipForQuestionAnswering", "blip")):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": model_type}))
        (root / name / "model.safetensors").write_bytes(b"\0" * 8)
        tiny_tokenizer.save_pretrained(str(root / name))
    torch.save({"model": {"w": torch.zeros(1)}}, root / "model_base.pth")
    return root


def _cfg(tmp_path, **values):
    base = {"input": {"path": str(tmp_path)}, "output": str(tmp_path / "out")}
    return build(RunConfig, {**base, **values}, "cfg")


@pytest.mark.parametrize("captioner, filters, expected", [
    ("bert", ["pretrain"], "holds a transformers BertModel"),
    ("pretrain", ["vqa"], "holds a transformers BlipForQuestionAnswering"),
    ("pretrain/model.safetensors", ["pretrain"], "is the file model.safetensors, not a checkpoint: give the folder"),
    ("pretrain", ["captioner"], "holds a captioner (Captioner), not a filter"),
    ("model_base.pth", ["pretrain"], "carries no tokenizer"),
])
def test_a_wrong_checkpoint_is_found_before_anything_starts(checkpoints, tmp_path, captioner, filters, expected):
    cfg = _cfg(tmp_path, captioner={"checkpoint": str(checkpoints / captioner)},
               filter={"checkpoints": [str(checkpoints / f) for f in filters]})
    with pytest.raises(CapfiltError, match="the config has mistakes") as err:
        validate(cfg)
    assert expected in str(err.value) and "Traceback" not in str(err.value)


def test_a_prompt_longer_than_max_length_is_found_before_anything_starts(checkpoints, tmp_path):
    ok = {"checkpoint": str(checkpoints / "pretrain"), "prompt": "a picture of "}
    validate(_cfg(tmp_path, captioner={**ok, "max_length": 5}, filter={"checkpoints": [ok["checkpoint"]]}))
    with pytest.raises(CapfiltError, match=r"captioner.max_length=4 leaves no room .* takes 4 tokens"):
        validate(_cfg(tmp_path, captioner={**ok, "max_length": 4}, filter={"checkpoints": [ok["checkpoint"]]}))


def test_an_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(CapfiltError, match="output .*taken is a file"):
        validate(_cfg(tmp_path, output=str(tmp_path / "taken"), mode="caption_only",
                      captioner={"checkpoint": str(tmp_path)}), check_paths=True)
    with pytest.raises(CapfiltError, match="lies under .*taken, which is a file"):
        validate(_cfg(tmp_path, output=str(tmp_path / "taken" / "out")))


def test_every_structural_and_value_mistake_is_one_message(checkpoints, tmp_path, capsys):
    """Two typos, a wrong type, a value out of range and a wrong checkpoint: all of them, one message,
    from the command line without a traceback and without starting Ray."""
    path = tmp_path / "run.yaml"
    path.write_text(f"""
input: {{path: {tmp_path}}}
output: {tmp_path / 'out'}
captioner: {{checkpoint: {checkpoints / 'bert'}, num_caption: 2}}
filter: {{checkpoints: [{checkpoints / 'pretrain'}], treshold: 0.4, threshold: 1.5}}
seed: zero
""")
    with pytest.raises(CapfiltError) as err:
        load(path)
    message = str(err.value)
    for part in ("unknown key(s) ['num_caption']", "unknown key(s) ['treshold']", "seed must be a int",
                 "filter.threshold=1.5 must be within [0, 1]", "holds a transformers BertModel"):
        assert part in message, part
    assert message.count("\n  - ") == 5
    assert cli.main(["run", "--config", str(path)]) == 2
    printed = capsys.readouterr().err
    assert "['treshold']" in printed and "BertModel" in printed and "Traceback" not in printed
    import sys

    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_train_and_bootstrap_configs_list_every_mistake(tmp_path):
    from workflows import bootstrap_config, train_config

    path = tmp_path / "train.yaml"
    path.write_text("task: caption\nname: x\noptim: {bach_size: 4, lr: fast}\ndata: {shrads: x}\n")
    with pytest.raises(CapfiltError) as err:
        train_config.load(path)
    for part in ("['bach_size']", "optim.lr must be a float", "['shrads']", "needs model.init"):
        assert part in str(err.value), part
    path.write_text("rounds: 0\ncapfilt: {filter: {threshold: high}}\nwhatever: 1\n")
    with pytest.raises(CapfiltError) as err:
        bootstrap_config.load(path)
    for part in ("['whatever']", "threshold must be a float", "rounds must be at least 1", "give data.web"):
        assert part in str(err.value), part
