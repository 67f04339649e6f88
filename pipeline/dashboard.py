"""Ray's dashboard for a Ray that a run starts itself: off by default; when on, it listens on
127.0.0.1 only (reach it from elsewhere through an SSH tunnel, never by opening it to a network:
it runs jobs for whoever reaches it). A run that joins a cluster (RAY_ADDRESS) uses the
cluster's own dashboard, on its head node.

`Dashboard` is the `compute.dashboard` section of the run and training configs;
`init_kwargs` builds the arguments of the local `ray.init` both start with.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

HOST = "127.0.0.1"  # the only address the dashboard listens on
PORTS = (1024, 65535)  # unprivileged ports


@dataclass
class Dashboard:
    enabled: bool = False
    port: int = 8265  # Ray's own default


def problems(d: Dashboard, where: str = "compute.dashboard") -> list[str]:
    """What is wrong with `d` (none: usable). When it is on, Ray's dashboard packages must be
    installed: ray[data,train] leaves them out."""
    out = []
    if not PORTS[0] <= d.port <= PORTS[1]:
        out.append(f"{where}.port={d.port} must be within {PORTS[0]}-{PORTS[1]} (a free port on {HOST}; "
                   f"Ray's default is {Dashboard.port})")
    if d.enabled:
        missing = missing_packages()
        if missing:
            out.append(f"{where}.enabled needs Ray's dashboard packages, which are not installed ({missing}): "
                       "`pip install 'ray[default]'` at the Ray version installed, or leave the dashboard off")
    return out


def missing_packages() -> str | None:
    """Why Ray cannot start its dashboard here (Ray's own check), or None when it can."""
    import ray._private.utils as ray_utils

    check = getattr(ray_utils, "get_dashboard_dependency_error", None)
    if check is None:  # another Ray: let ray.init say it
        return None
    error = check()
    return None if error is None else str(error)


def init_kwargs(num_cpus: int, dashboard: Dashboard, log_to_driver: bool) -> dict:
    """The arguments of a local `ray.init`: a Ray of this process's own (address "local": a bare
    ray.init joins any cluster /tmp/ray names, someone else's on this machine included), the
    dashboard, when on, on HOST:port only."""
    kwargs = {"address": "local", "num_cpus": num_cpus, "include_dashboard": dashboard.enabled, "log_to_driver": log_to_driver}
    if dashboard.enabled:
        kwargs |= {"dashboard_host": HOST, "dashboard_port": dashboard.port}
    return kwargs


def add_options(p: argparse.ArgumentParser) -> None:
    """The command line's dashboard options (over the config's compute.dashboard)."""
    p.add_argument("--dashboard", action="store_true",
                   help=f"start Ray's dashboard on {HOST} with the Ray this command starts (needs ray[default])")
    p.add_argument("--dashboard-port", type=int, default=None, metavar="PORT",
                   help=f"the dashboard's port (default: compute.dashboard.port, {Dashboard.port})")


def from_args(d: Dashboard, args: argparse.Namespace) -> Dashboard:
    """`d` as the command line's options change it."""
    port = d.port if args.dashboard_port is None else args.dashboard_port
    return dataclasses.replace(d, enabled=d.enabled or args.dashboard, port=port)


def announce(context, dashboard: Dashboard) -> None:
    """Say where the dashboard of a Ray just started is (ray.init's context has its URL)."""
    if dashboard.enabled:
        url = getattr(context, "dashboard_url", None) or f"{HOST}:{dashboard.port}"
        log.info("Ray dashboard: http://%s", url.removeprefix("http://"))


def joined(dashboard: Dashboard) -> None:
    """A run that joined a cluster: the cluster's dashboard is the one to watch."""
    if dashboard.enabled:
        log.warning("compute.dashboard is for a Ray the run starts itself; this run joined the cluster at "
                    "RAY_ADDRESS: watch the cluster's dashboard on its head node (port 8265, e.g. through "
                    "`kubectl port-forward` or `ray dashboard CLUSTER.yaml`)")
