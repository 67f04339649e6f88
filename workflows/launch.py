"""Where a bootstrap's jobs run: in the Dagster process, or as Ray jobs on a cluster.

    launch:                        # the bootstrap config's section (workflows/bootstrap_config.py)
      ray_jobs: http://HEAD:8265   # a Ray cluster's job server (its head's dashboard port); empty: in-process
      python: python               # the interpreter of the job's entrypoint on the cluster

In-process (the default, the demo's), each asset calls `train` or `pipeline.run.run` itself, and
that call starts a local Ray or joins the one `RAY_ADDRESS` names. With `ray_jobs` set, each
training job and CapFilt run is submitted to the cluster's job server by dagster-ray's Pipes
client (`PipesRayJobClient`), exactly as `ray job submit` would: the job's driver runs on the
cluster (`python -m workflows.ray_job`, which joins it and places its actors and Ray Train
workers on the cluster's nodes), its log lines come back into the Dagster run's log, and its
result (the model's path and history, or the CapFilt manifest) comes back as a Pipes message.
The Dagster process only waits: a Dagster daemon or UI host needs no CPU to speak of, and a
lost Dagster process leaves the Ray job running (`forward_termination` stops it on a cancel).

Every path a job reads or writes must be one the cluster's nodes reach (object storage, or a
shared volume): the job gets its config as it is, paths included.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlparse

import workflows.train as train_jobs  # the module, not its function: a test swaps train there
from pipeline import dashboard
from pipeline import run as capfilt_run

log = logging.getLogger(__name__)

ENTRYPOINT_MODULE = "workflows.ray_job"


@dataclass
class LaunchSection:
    ray_jobs: str = ""  # http(s)://HOST:PORT of a Ray cluster's job server; empty: every job in this process
    python: str = "python"  # the entrypoint's interpreter on the cluster (a path when `python` is not the one with capfilt)
    poll_seconds: float = 1.0  # how often the job's status is asked for


def problems(s: LaunchSection, where: str = "launch") -> list[str]:
    out = []
    if s.ray_jobs:
        url = urlparse(s.ray_jobs)
        if url.scheme not in ("http", "https") or not url.hostname or url.port is None:
            out.append(f"{where}.ray_jobs={s.ray_jobs!r} must be the job server's http(s)://HOST:PORT "
                       "(the head node's dashboard port, Ray's default 8265), or empty to run in this process")
        missing = dashboard.missing_packages()
        if missing:
            out.append(f"{where}.ray_jobs needs Ray's job-submission packages, which are not installed ({missing}): "
                       "`pip install 'ray[default]'` at the Ray version installed")
    if not s.python.strip():
        out.append(f"{where}.python is empty: name the interpreter that has capfilt installed on the cluster")
    if s.poll_seconds <= 0:
        out.append(f"{where}.poll_seconds={s.poll_seconds} must be above 0")
    return out


class Launch(Protocol):
    """Runs one job of the bootstrap and returns its result, as `train` and `run` return it."""

    def train(self, cfg) -> dict: ...

    def capfilt(self, cfg, progress_every: float) -> dict: ...


class InProcess:
    """Each job in this process (its Ray local, or the cluster that RAY_ADDRESS names)."""

    def train(self, cfg) -> dict:
        return train_jobs.train(cfg)

    def capfilt(self, cfg, progress_every: float) -> dict:
        return capfilt_run.run(cfg, progress_every=progress_every)


class RayJobs:
    """Each job submitted to a cluster's job server through dagster-ray's Pipes client, on behalf
    of the asset (or op) whose `context` is given; its result is the job's one Pipes message."""

    def __init__(self, section: LaunchSection, context):
        from dagster_ray.core.pipes import PipesRayJobClient

        self.section, self.context = section, context
        self.client = PipesRayJobClient(address=section.ray_jobs, poll_interval=section.poll_seconds)

    def _submit(self, kind: str, config: dict, name: str) -> dict:
        entrypoint = f"{self.section.python} -m {ENTRYPOINT_MODULE}"
        log.info("submitting %s job %s to the Ray cluster at %s", kind, name, self.section.ray_jobs)
        done = self.client.run(context=self.context, extras={"kind": kind, "config": config},
                               submit_job_params={"entrypoint": entrypoint, "metadata": {"capfilt_job": name}})
        results = [m for m in done.get_custom_messages() if isinstance(m, dict) and "result" in m]
        if len(results) != 1:
            raise RuntimeError(f"the Ray job for {name} ended without its result ({len(results)} result messages): "
                               "see its log on the cluster (`ray job logs`)")
        return results[0]["result"]

    def train(self, cfg) -> dict:
        return self._submit("train", cfg.to_dict(), cfg.name)

    def capfilt(self, cfg, progress_every: float) -> dict:
        return self._submit("capfilt", {**cfg.to_dict(), "progress_every": progress_every}, cfg.output)


IN_PROCESS = InProcess()


def launcher(section: LaunchSection, context=None) -> Launch:
    """The bootstrap's launcher for one asset's jobs: Ray jobs when the config names a job server."""
    return RayJobs(section, context) if section.ray_jobs else IN_PROCESS
