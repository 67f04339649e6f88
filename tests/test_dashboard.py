"""Ray's dashboard for a local run (pipeline/dashboard.py): off by default, on 127.0.0.1 only when
asked for, from the config or the command line; a bad value is one clear error. Most tests replace
`ray.init` by a recorder (a dashboard takes seconds to start); one starts a real one and asks it
for its version on 127.0.0.1."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from models.errors import CapfiltError
from pipeline import dashboard
from pipeline import run as capfilt_run
from pipeline.config import RunConfig, build, validate
from pipeline.dashboard import Dashboard
from workflows import cli
from workflows import train as train_jobs
from workflows.train_config import TrainConfig



def _run_cfg(**compute) -> RunConfig:
    return build(RunConfig, {"input": {"path": "x"}, "output": "y", "compute": compute}, "cfg")


@pytest.fixture
def ray_init(monkeypatch):
    """ray.init replaced: the keyword arguments of each call, and no Ray started."""
    import ray

    calls: list[dict] = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw) or SimpleNamespace(dashboard_url="127.0.0.1:8300"))
    return calls


def test_the_dashboard_is_off_unless_asked_for_and_then_on_loopback_only(ray_init, caplog):
    capfilt_run._ray_init(_run_cfg())
    assert ray_init[-1]["include_dashboard"] is False and "dashboard_host" not in ray_init[-1]
    with caplog.at_level("INFO", logger="pipeline.dashboard"):
        capfilt_run._ray_init(_run_cfg(dashboard={"enabled": True, "port": 8300}))
    # address local: a Ray of the run's own, never a cluster someone else started on this machine
    assert ray_init[-1] | {"num_cpus": 0} == {"address": "local", "num_cpus": 0, "include_dashboard": True,
                                              "log_to_driver": False, "dashboard_host": "127.0.0.1",
                                              "dashboard_port": 8300}
    assert "Ray dashboard: http://127.0.0.1:8300" in caplog.text
    job = TrainConfig.from_dict({"compute": {"dashboard": {"enabled": True, "port": 8301}}})
    train_jobs._ray_init(job)
    assert (ray_init[-1]["include_dashboard"], ray_init[-1]["dashboard_host"], ray_init[-1]["dashboard_port"]) == (
        True, "127.0.0.1", 8301)
    assert train_jobs.ray_init_kwargs(TrainConfig())["include_dashboard"] is False


def test_a_run_on_a_cluster_points_at_the_clusters_dashboard(ray_init, monkeypatch, caplog):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:1")
    with caplog.at_level("WARNING", logger="pipeline.dashboard"):
        capfilt_run._ray_init(_run_cfg(dashboard={"enabled": True}))
    assert "include_dashboard" not in ray_init[-1]  # the cluster's own Ray, as it is
    assert "watch the cluster's dashboard on its head node" in caplog.text


@pytest.mark.parametrize("compute, expected", [
    ({"dashboard": {"port": 80}}, "compute.dashboard.port=80 must be within 1024-65535"),
    ({"dashboard": {"port": 70000}}, "compute.dashboard.port=70000 must be within 1024-65535"),
    ({"dashboard": {"enabled": "yes"}}, "cfg.compute.dashboard.enabled must be a bool, got 'yes'"),
    ({"dashboard": True}, "cfg.compute.dashboard must be a mapping, got bool"),
    ({"dashboard": {"host": "0.0.0.0"}}, r"unknown key\(s\) \['host'\] in cfg.compute.dashboard"),
])
def test_a_bad_dashboard_value_is_one_clear_error(compute, expected):
    with pytest.raises(CapfiltError, match=expected):
        validate(_run_cfg(**compute), check_paths=False)


def test_asking_for_the_dashboard_without_its_packages_says_what_to_install(monkeypatch):
    assert dashboard.missing_packages() is None  # requirements.txt installs ray[default]
    assert dashboard.problems(Dashboard(enabled=True)) == []
    # Ray's own check, as it answers where only ray[data,train] is installed
    monkeypatch.setattr(dashboard, "missing_packages", lambda: "No module named 'aiohttp'")
    problems = dashboard.problems(Dashboard(enabled=True))
    assert len(problems) == 1 and "pip install 'ray[default]'" in problems[0] and "aiohttp" in problems[0]
    assert dashboard.problems(Dashboard()) == []  # off: nothing needed


def test_a_local_run_serves_the_dashboard_on_loopback(monkeypatch):
    """A real Ray with the dashboard a run config asks for: it answers on 127.0.0.1 at its port, to
    a request that carries Ray's token (Ray 2.60 turns token authentication on by itself, and the
    dashboard refuses a request without it)."""
    import json
    import urllib.error
    import urllib.request

    import ray
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    from tests.cluster import free_port

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    port = free_port()
    try:
        capfilt_run._ray_init(_run_cfg(dashboard={"enabled": True, "port": port}))
        url = f"http://127.0.0.1:{port}/api/version"
        headers = get_auth_headers_if_auth_enabled({})
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as reply:
            version = json.loads(reply.read())
        assert version["ray_version"] == ray.__version__
        if headers:  # token authentication on: a request without the token is refused
            with pytest.raises(urllib.error.HTTPError, match="401"):
                urllib.request.urlopen(url, timeout=30)
    finally:
        ray.shutdown()


def test_the_command_line_option_is_checked_before_anything_starts(tmp_path, capsys, ray_init):
    config = tmp_path / "train.yaml"
    config.write_text(f"name: t\ndata: {{human: [{tmp_path / 'human.json'}]}}\nmodel: {{vocab_size: 50}}\n")
    assert cli.main(["pretrain", "--config", str(config), "--dashboard", "--dashboard-port", "80"]) == 2
    err = capsys.readouterr().err
    assert "compute.dashboard.port=80 must be within 1024-65535" in err and "Traceback" not in err
    assert ray_init == []
    args = SimpleNamespace(dashboard=True, dashboard_port=None)
    assert dashboard.from_args(Dashboard(port=8300), args) == Dashboard(enabled=True, port=8300)
