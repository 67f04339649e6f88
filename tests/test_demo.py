"""The embedded default on a miniature config, through the Dagster definitions: the bootstrap
materializes in-process, a killed bootstrap resumes without redoing finished jobs, the sensor
asks only for new shards, and config mistakes are one clear message."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from demo.config import load as load_config
from models.errors import CapfiltError
from workflows import cli


def _miniature(tmp_path, rounds=1, vision_warmup=8, vit_lr_scale=None) -> Path:
    config = yaml.safe_load(open("configs/demo.yaml"))
    config["out"] = str(tmp_path / "demo")
    config["rounds"] = rounds
    config["demo"]["world"].update(web=96, human=64, test=12)
    config["demo"]["vision_warmup"] = vision_warmup
    config["train"]["optim"]["batch_size"] = 16
    if vit_lr_scale is not None:
        config["train"]["optim"]["vit_lr_scale"] = vit_lr_scale
    config["pretrain"].update(steps=6, warmup_steps=2)
    config["caption"]["steps"] = config["filter"]["steps"] = 4
    config["checks"].update(min_keep_rate=0.0, max_keep_rate=1.0)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_definitions_load_with_every_round_and_check(tmp_path):
    import dagster as dg

    from demo.bootstrap import embedding
    from workflows.dagster_defs import build_definitions

    demo = load_config(_miniature(tmp_path), rounds=3)
    defs = build_definitions(demo.bootstrap, embedding(demo))
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    expected = {"web_data"} | {f"round{k}_{a}" for k in range(3) for a in ("pretrain", "captioner", "filter", "eval")}
    assert keys == expected | {"round0_capfilt", "round1_capfilt"}
    upstream = graph.get(dg.AssetKey("round1_pretrain")).parent_keys
    assert {k.to_user_string() for k in upstream} == {"web_data", "round0_capfilt"}
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert ("round0_capfilt", "counts_reconcile_and_keep_rate_in_bounds") in checks
    assert ("round2_eval", "promoted_only_when_not_worse") in checks
    assert defs.get_schedule_def("capfilt_refresh_daily") and defs.get_sensor_def("new_web_shards")


def test_sensor_asks_only_for_new_shards(tmp_path):
    from workflows.dagster_defs import new_shards_request

    cfg = load_config(_miniature(tmp_path)).bootstrap
    web = Path(cfg.out) / "web_shards"
    web.mkdir(parents=True)
    for n in ("00000", "00001"):
        (web / f"{n}_stats.json").write_text("{}")
    (web / "00002.parquet").write_text("")  # a shard being written: no _stats.json yet
    first = new_shards_request(cfg, None)
    assert [r.run_config["ops"]["capfilt_refresh"]["config"]["shards"] for r in first.run_requests] == [["00000", "00001"]]
    again = new_shards_request(cfg, first.cursor)
    assert not again.run_requests
    (web / "00002_stats.json").write_text("{}")
    third = new_shards_request(cfg, again.cursor)
    assert [r.run_config["ops"]["capfilt_refresh"]["config"]["shards"] for r in third.run_requests] == [["00002"]]


def test_demo_killed_then_rerun_resumes_and_prints_table_1(tmp_path, capfd, monkeypatch):
    """Two rounds: round 0 pre-trains on the raw web, round 1 on round 0's CapFilt output. The
    first attempt is killed (driver and its Ray processes) once round 0's pre-training is done;
    the rerun reuses that job, finishes both rounds and prints Table 1. What it prints is for a
    person: a line per step, not Dagster's events, which go to the run's log file."""
    path = _miniature(tmp_path, rounds=2)
    demo = tmp_path / "demo"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    first = subprocess.Popen([sys.executable, "-m", "workflows.cli", "demo", "--config", str(path)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pretrained = demo / "train" / "round0_pretrain" / "model" / "history.json"
    deadline = time.time() + 400
    while time.time() < deadline and first.poll() is None and not pretrained.exists():
        time.sleep(0.5)
    assert pretrained.exists() and first.poll() is None, "the bootstrap ended before it could be killed"
    stamp = pretrained.stat().st_mtime_ns
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (demo / "report" / "bootstrap.json").exists()

    try:
        assert cli.main(["demo", "--config", str(path)]) == 0
    finally:
        import ray

        ray.shutdown()  # the demo ran Ray in this process: later modules start their own
    captured = capfd.readouterr()  # by descriptor: Ray's and img2dataset's output would show here
    out = captured.out
    _assert_console_is_for_a_person(out + captured.err, demo / "logs" / "bootstrap.log")
    assert pretrained.stat().st_mtime_ns == stamp  # round 0's pre-training was reused, not redone
    assert "| round 0 (no CapFilt) | raw web + human |" in out and "| round 1 (CapFilt) |" in out
    summary = json.loads((demo / "report" / "bootstrap.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    c = json.loads((demo / "round0_capfilt" / "manifest.json").read_text())["counts"]
    assert c["rows_in"] == c["kept"] + c["dropped"] + c["failed"] == 96
    # the noisy share printed for round 0 is the truth's, recomputed here independently
    import pyarrow.parquet as pq

    truth = pq.read_table(demo / "synth" / "truth" / "web.parquet").to_pylist()
    noisy = sum(not r["judged_correct"] for r in truth) / len(truth)
    assert summary["truth"]["noisy_before"] == pytest.approx(noisy)
    assert f"{100 * noisy:.1f}%" in out
    # ...and so are the kept shares: web texts by the truth, synthetic captions by the judge
    from demo.world import judge

    by_key = {r["key"]: r for r in truth}
    source = {}
    for f in sorted((demo / "web_shards").glob("*.parquet")):
        for r in pq.read_table(f, columns=["key", "source_key", "status"]).to_pylist():
            if r["status"] == "success":
                source[r["key"]] = by_key[r["source_key"]]
    web = synthetic = bad_web = bad_synthetic = 0
    kept_web_keys = set()
    for f in sorted((demo / "round0_capfilt" / "shards").glob("*.parquet")):
        for r in pq.read_table(f, columns=["key", "texts", "origins"]).to_pylist():
            for text, origin in zip(r["texts"], r["origins"]):
                if origin == "web":
                    web += 1
                    kept_web_keys.add(r["key"])
                    bad_web += not source[r["key"]]["judged_correct"]
                else:
                    synthetic += 1
                    bad_synthetic += not judge(source[r["key"]]["scene"], text).correct
    # (a share of nothing kept counts as 0: a miniature filter may keep no web text)
    assert summary["truth"]["noisy_after"] == pytest.approx(bad_web / max(1, web))
    assert summary["truth"]["noisy_kept_set"] == pytest.approx((bad_web + bad_synthetic) / max(1, web + synthetic))
    # wrong-attribute texts dropped, per attribute; and the floor of a colour-only filter, which
    # counts the downloaded texts alone: correct ones against shape/size/position/relation errors
    by_attribute = {}
    for key, row in source.items():
        if row["noise"] == "wrong_attribute":
            by_attribute.setdefault(row["attribute"], []).append(key not in kept_web_keys)
    assert summary["truth"]["dropped_by_attribute"] == pytest.approx(
        {a: sum(d) / len(d) for a, d in by_attribute.items()})
    clean = sum(row["judged_correct"] for row in source.values())
    fine = sum(row["noise"] == "wrong_attribute" and row["attribute"] != "colour" and not row["judged_correct"]
               for row in source.values())
    assert summary["truth"]["noisy_floor_colour_only"] == pytest.approx(fine / (fine + clean))
    assert "would leave at best" in out
    # both rounds' image encoders started from the vision warm-up, whose figures Table 1 prints
    warmup = json.loads((demo / "train" / "vision_warmup" / "warmup.json").read_text())
    assert warmup["steps"] == 8 and summary["vision_warmup"] == warmup
    assert f"labelled one-object scenes (8 steps; held-out accuracy shape {100 * warmup['accuracy']['shape']:.1f}%" in out
    history = json.loads((demo / "train" / "round1_pretrain" / "model" / "history.json").read_text())
    assert history["steps"] == 6
    assert "Bootstrap rounds" in (demo / "round0_capfilt" / "report" / "index.html").read_text()
    assert json.loads((demo / "promoted.json").read_text())["round"] in (0, 1)
    shutil.rmtree(tmp_path / "dagster", ignore_errors=True)


def _assert_console_is_for_a_person(console: str, log_file: Path) -> None:
    import re

    assert "dagster - DEBUG" not in console and "STEP_START" not in console
    assert "PlacementGroupCleaner" not in console and "alembic" not in console
    steps = ["world + download", "vision warm-up"] + [f"round{k} {a}" for k in (0, 1) for a in
                                                      ("pretrain", "captioner", "filter", "eval")] + ["round0 capfilt"]
    lines = [re.match(r"\[\s*(\d+)/(\d+)\] (.+?)  (.*)", line) for line in console.splitlines()]
    lines = [tuple(g.strip() for g in m.groups()) for m in lines if m]  # names are padded to one width
    # each step: a line when it starts, one when it ends; numbered in the order they ran
    assert len(lines) == 2 * len(steps) and {total for _, total, _, _ in lines} == {str(len(steps))}
    assert [int(n) for n, _, _, _ in lines] == [n for n in range(1, len(steps) + 1) for _ in (0, 1)]
    names = [name for _, _, name, _ in lines[::2]]
    assert sorted(names) == sorted(steps) and names[:3] == steps[:3]
    assert all(start == "..." for _, _, _, start in lines[::2])
    ends = {name: end for (_, _, name, end) in lines[1::2]}
    # the first attempt made the world, the warm-up and round 0's pre-training: this one reuses them
    assert all(ends[s].startswith("done already") for s in steps[:3])
    assert re.fullmatch(r"done already: 6 steps  loss [\d.]+", ends["round0 pretrain"])
    took = r"  (\d+ s|[\d.]+ min)"
    assert re.fullmatch(r"96 rows in  \d+ kept  \d+ dropped  0 failed" + took, ends["round0 capfilt"])
    assert re.fullmatch(r"4 steps  loss [\d.]+" + took, ends["round1 filter"])
    assert console.count(f"the full log: {log_file}") == 2  # at the start and at the end
    # the log file has both attempts (the killed one's first), Dagster's events among them
    text = log_file.read_text()
    assert text.count("\n===== ") == 2 and text.count("RUN_START") == 2
    assert "STEP_START" in text and "round1_eval - STEP_SUCCESS" in text


def test_demo_config_mistakes_are_one_clear_message(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain:\n  stpes: 3\ndemo:\n  wrold: {}\n")
    with pytest.raises(CapfiltError, match=r"unknown key\(s\) \['wrold'\] in .*demo"):
        load_config(bad)
    bad.write_text("pretrain:\n  stpes: 3\ntrain: {optim: {lr: fast}}\n")
    with pytest.raises(CapfiltError) as err:
        load_config(bad)
    assert "['stpes'] in" in str(err.value) and "pretrain (over train.optim)" in str(err.value)
    assert "train.optim.lr must be a float" in str(err.value)
    assert cli.main(["demo", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_every_job_gets_the_image_encoders_share_of_the_rate(tmp_path):
    from workflows import rounds

    seen = []

    class Recorder:  # a launcher (workflows/launch.py) that runs nothing
        def train(self, tc):
            seen.append(tc)
            return {"model": "m"}

    cfg = load_config(_miniature(tmp_path, vision_warmup=0, vit_lr_scale=0.25)).bootstrap
    data = {"human": ["h.json"], "web": "w"}
    rounds.pretrain(cfg, 0, data, "shards", Recorder())
    rounds.pretrain(cfg, 1, data, "kept", Recorder())
    rounds.finetune(cfg, 0, data, "init", "caption", Recorder())
    rounds.finetune(cfg, 0, data, "init", "filter", Recorder())
    assert [(tc.task, tc.optim.vit_lr_scale) for tc in seen] == [
        ("pretrain", 0.25), ("pretrain", 0.25), ("caption", 0.25), ("filter", 0.25)]
