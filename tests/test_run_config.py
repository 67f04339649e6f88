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
