"""A real multi-node Ray cluster on this machine: Ray's own `ray.cluster_utils.Cluster`, a head and
worker nodes, each its own raylet with its own CPUs, a custom resource naming it and a small object
store. Every node runs here (Ray binds its servers to this machine's own address, STACK.md), so no
traffic leaves the machine. Used by the cluster tests (tests/cluster.py) and bench.cluster_memory.

`start()` does not connect this process to the cluster: a caller that needs to be a driver calls
`ray.init(address=local.address)`; `stop()` disconnects it, shuts every node down and checks that
no process of the cluster outlives it.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from unittest import mock

from bench.common import tree

MiB = 1024 * 1024
HEAD = "head"  # the head node's custom resource, and its name in per-node figures
WORKERS = ("node_a", "node_b")
HEAD_CPUS, WORKER_CPUS = 1, 2
OBJECT_STORE_MB = 80  # per node: small, so a test's or benchmark's data can fill it
# Every node's dashboard agent (ray[default]) on a port of its own: Ray's fixed default (52365)
# lets only the first node's agent bind on a machine that holds several, and a head whose agent
# did not start refuses every job ("No available agent to submit job"). 0: a free port.
AGENT_PORT = {"dashboard_agent_listen_port": 0}
# Ray's processes, by what their command lines hold
RAY_PROCESSES = ("raylet", "gcs_server", "ray::", "default_worker.py", "log_monitor.py", "dashboard")


@dataclass
class LocalCluster:
    cluster: object  # ray.cluster_utils.Cluster
    workers: dict = field(default_factory=dict)  # resource name -> its node
    dashboard_port: int | None = None  # the head's dashboard and job server on 127.0.0.1, when started

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def job_server(self) -> str:
        """The head's job server (its dashboard), as `ray job submit --address` takes it."""
        if self.dashboard_port is None:
            raise RuntimeError("this cluster was started without a dashboard: start(dashboard_port=PORT)")
        return f"http://127.0.0.1:{self.dashboard_port}"

    def node_id(self, name: str) -> str:
        return self.workers[name].node_id

    @property
    def head_id(self) -> str:
        return self.cluster.head_node.node_id

    def nodes(self) -> dict:
        """Name -> node (`ray._private.node.Node`): the head first, then the worker nodes alive."""
        return {HEAD: self.cluster.head_node, **self.workers}

    def add(self, name: str, num_cpus: float = WORKER_CPUS, object_store_mb: int = OBJECT_STORE_MB):
        """A worker node with `num_cpus` CPUs and one unit of the resource `name`."""
        node = self.cluster.add_node(num_cpus=num_cpus, resources={name: 1}, object_store_memory=object_store_mb * MiB,
                                     **AGENT_PORT)
        self.workers[name] = node
        self.cluster.wait_for_nodes()
        return node

    def remove(self, name: str) -> str:
        """Kill a worker node's raylet and its workers at once (no graceful shutdown); its id."""
        node = self.workers.pop(name)
        self.cluster.remove_node(node, allow_graceful=False)
        return node.node_id

    def alive(self) -> set[str]:
        """Ids of the nodes alive, from the GCS (this process must be connected to the cluster)."""
        import ray

        return {n["NodeID"] for n in ray.nodes() if n["Alive"]}

    def env(self) -> dict:
        """The environment of a driver that joins this cluster, as a `ray job submit` entrypoint does."""
        return {**os.environ, "RAY_ADDRESS": self.address}


def node_pids(node) -> list[int]:
    """The PIDs of the processes a node started itself (raylet; on the head also gcs_server, log
    monitor, ...); its Ray workers and agents are their children."""
    return [info.process.pid for infos in node.all_processes.values() for info in infos
            if info.process is not None and info.process.poll() is None]


def ray_processes() -> list[int]:
    """This process's descendants that are Ray's (a cluster's, started from here); another Ray on
    the machine is never counted."""
    me = os.getpid()
    found = []
    for pid in tree(me):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if pid != me and any(title.encode() in cmdline for title in RAY_PROCESSES):
            found.append(pid)
    return sorted(found)


@contextlib.contextmanager
def _unannounced():
    """`Cluster` writes its address to /tmp/ray/ray_current_cluster, where any bare `ray.init()` on
    the machine (another test session's local Ray) would join it, and its shutdown deletes that
    file whoever wrote it. Our drivers join by address, so neither is done."""
    with mock.patch("ray._private.utils.write_ray_address", lambda *a, **k: None), \
            mock.patch("ray._common.utils.reset_ray_address", lambda *a, **k: None):
        yield


def start(head_cpus: float = HEAD_CPUS, workers: tuple[str, ...] = WORKERS, worker_cpus: float = WORKER_CPUS,
          object_store_mb: int = OBJECT_STORE_MB, dashboard_port: int | None = None) -> LocalCluster:
    """The cluster; with `dashboard_port` its head also serves Ray's dashboard and job server on
    127.0.0.1 at that port (what `ray job submit` and dagster-ray's Pipes client talk to)."""
    from ray.cluster_utils import Cluster

    board = {"include_dashboard": False} if dashboard_port is None else {
        "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port}
    with _unannounced():
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": head_cpus, "resources": {HEAD: 1}, "object_store_memory": object_store_mb * MiB, **board,
            **AGENT_PORT,
            # a killed raylet is declared dead in ~1.5 s rather than Ray's default ~15-30 s
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                               "health_check_initial_delay_ms": 500}})
    local = LocalCluster(cluster, dashboard_port=dashboard_port)
    try:
        for name in workers:
            local.add(name, worker_cpus, object_store_mb)
        if dashboard_port is not None:
            _wait_for_job_server(local.job_server)
    except BaseException:  # a node that failed to start: leave nothing of the others running
        stop(local)
        raise
    return local


def _wait_for_job_server(address: str, timeout: float = 120) -> None:
    """Until the head's job server takes a job: its dashboard agent registers seconds after the
    node is up, and a job submitted before then is refused ("No available agent to submit job")."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    deadline = time.time() + timeout
    while True:
        try:
            client = JobSubmissionClient(address)
            job = client.submit_job(entrypoint="true")
            break
        except (RuntimeError, ConnectionError) as err:
            if time.time() > deadline:
                raise RuntimeError(f"the job server at {address} did not take a job in {timeout:.0f} s: {err}") from err
            time.sleep(1)
    while not client.get_job_status(job).is_terminal():
        time.sleep(0.25)
    if client.get_job_status(job) != JobStatus.SUCCEEDED:
        raise RuntimeError(f"the job server at {address} failed a job that does nothing: {client.get_job_info(job)}")


def stop(local: LocalCluster, timeout: float = 30) -> None:
    import ray

    ray.shutdown()
    with _unannounced():
        local.cluster.shutdown()
    deadline = time.time() + timeout
    while ray_processes() and time.time() < deadline:
        time.sleep(0.2)
    left = ray_processes()
    if left:
        raise RuntimeError(f"the cluster left processes running: {left}")
