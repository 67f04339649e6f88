"""The embedded default's job, on a miniature config: every stage runs and the numbers add up."""
import pytest
import yaml

from models.errors import CapfiltError
from workflows import cli
from workflows.demo import load_config


def test_demo_runs_end_to_end_on_a_small_config(tmp_path, capsys):
    config = yaml.safe_load(open("configs/demo.yaml"))
    config["out"] = str(tmp_path / "demo")
    config["synth"].update(web=48, human=16, test=8)
    config["pretrain"].update(steps=3, batch_size=16, log_every=1)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["demo", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "48 downloaded, 0 failed, of 48 rows" in out
    assert "on 96 pairs" in out  # 48 web + 16 human images x 3 captions
    assert "step    3/3" in out
    assert (tmp_path / "demo" / "checkpoints" / "pretrain_round0" / "model.safetensors").is_file()
    assert "judged correct against the truth" in out


def test_demo_config_mistakes_are_one_clear_message(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain:\n  stesp: 3\n")
    with pytest.raises(CapfiltError, match=r"unknown key\(s\) \['stesp'\] in .*pretrain"):
        load_config(bad)
    assert cli.main(["demo", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
