"""A real multi-node Ray cluster on this machine, for one test module: Ray's own
`ray.cluster_utils.Cluster`, a head and two worker nodes, each its own raylet with its own CPUs,
a custom resource naming it and a small object store. Every node runs here (Ray binds its
servers to this machine's own address, STACK.md), so no traffic leaves the machine.

Import the fixture into a test module (`from tests.cluster import cluster`); it yields a
`LocalCluster`. A test may remove a worker node (its raylet and workers killed, as a lost spot
instance) and add one (as an autoscaler would); the fixture stops whatever is left, and checks
that no process of the cluster outlives it.
"""
from __future__ import annotations

import contextlib
import os
import time
from unittest import mock
from dataclasses import dataclass, field

import pytest

from tests.processes import our_pids

MiB = 1024 * 1024
# Ray's processes, by what their command lines hold
RAY_PROCESSES = ("raylet", "gcs_server", "ray::", "default_worker.py", "log_monitor.py", "dashboard")


@dataclass
class LocalCluster:
    cluster: object  # ray.cluster_utils.Cluster
    workers: dict = field(default_factory=dict)  # resource name -> its node

    @property
    def address(self) -> str:
        return self.cluster.address

    def node_id(self, name: str) -> str:
        return self.workers[name].node_id

    @property
    def head_id(self) -> str:
        return self.cluster.head_node.node_id

    def add(self, name: str, num_cpus: float = 2, object_store_mb: int = 80):
        """A worker node with `num_cpus` CPUs and one unit of the resource `name`."""
        node = self.cluster.add_node(num_cpus=num_cpus, resources={name: 1}, object_store_memory=object_store_mb * MiB)
        self.workers[name] = node
        self.cluster.wait_for_nodes()
        return node

    def remove(self, name: str) -> str:
        """Kill a worker node's raylet and its workers at once (no graceful shutdown); its id."""
        node = self.workers.pop(name)
        self.cluster.remove_node(node, allow_graceful=False)
        return node.node_id

    def alive(self) -> set[str]:
        import ray

        return {n["NodeID"] for n in ray.nodes() if n["Alive"]}

    def env(self) -> dict:
        """The environment of a driver that joins this cluster, as a `ray job submit` entrypoint does."""
        return {**os.environ, "RAY_ADDRESS": self.address}


def actors_by_node(class_part: str) -> dict[str, set[str]]:
    """Node id -> the ids of the actors (alive or dead) whose class name holds `class_part`, from the
    cluster's GCS (this process must be connected to it)."""
    import ray

    placed: dict[str, set[str]] = {}
    for actor_id, a in ray._private.state.actors().items():
        if class_part in a.get("ActorClassName", ""):
            node = a.get("Address", {}).get("NodeID")
            if node:
                placed.setdefault(node, set()).add(actor_id)
    return placed


def ray_processes() -> list[int]:
    return sorted({p for title in RAY_PROCESSES for p in our_pids(title)})


@contextlib.contextmanager
def _unannounced():
    """`Cluster` writes its address to /tmp/ray/ray_current_cluster, where any bare `ray.init()` on
    the machine (another test session's local Ray) would join it, and its shutdown deletes that
    file whoever wrote it. Our drivers join by address, so neither is done."""
    with mock.patch("ray._private.utils.write_ray_address", lambda *a, **k: None), \
            mock.patch("ray._common.utils.reset_ray_address", lambda *a, **k: None):
        yield


def start(head_cpus: float = 1, workers: tuple[str, ...] = ("node_a", "node_b"), worker_cpus: float = 2,
          object_store_mb: int = 80) -> LocalCluster:
    from ray.cluster_utils import Cluster

    with _unannounced():
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": head_cpus, "resources": {"head": 1}, "object_store_memory": object_store_mb * MiB,
            "include_dashboard": False,
            # a killed raylet is declared dead in ~1.5 s rather than Ray's default ~15-30 s
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                               "health_check_initial_delay_ms": 500}})
    local = LocalCluster(cluster)
    for name in workers:
        local.add(name, worker_cpus, object_store_mb)
    return local


def stop(local: LocalCluster, timeout: float = 30) -> None:
    import ray

    ray.shutdown()
    with _unannounced():
        local.cluster.shutdown()
    deadline = time.time() + timeout
    while ray_processes() and time.time() < deadline:
        time.sleep(0.2)
    left = ray_processes()
    assert not left, f"the cluster left processes running: {left}"


@pytest.fixture(scope="module")
def cluster():
    """A head (1 CPU, resource `head`) and two worker nodes (2 CPUs each, resources `node_a`,
    `node_b`), 80 MiB of object store each; this process is connected to it as a driver."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    local = start()
    try:
        ray.init(address=local.address, log_to_driver=False)
        assert len(local.alive()) == 3
        yield local
    finally:
        stop(local)
