"""A real multi-node Ray cluster on this machine, for one test module (bench/ray_cluster.py starts
and stops it: a head and two worker nodes, each its own raylet with its own CPUs, a custom resource
naming it and a small object store).

Import the fixture into a test module (`from tests.cluster import cluster`); it yields a
`LocalCluster`. A test may remove a worker node (its raylet and workers killed, as a lost spot
instance) and add one (as an autoscaler would); the fixture stops whatever is left, and checks
that no process of the cluster outlives it.
"""
from __future__ import annotations

import pytest

from bench.ray_cluster import MiB, RAY_PROCESSES, LocalCluster, ray_processes, start, stop  # noqa: F401


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


def free_port() -> int:
    """A port free on 127.0.0.1 now (the OS picks it; nothing is sent)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A head (1 CPU, resource `head`; Ray's dashboard and job server on 127.0.0.1) and two worker
    nodes (2 CPUs each, resources `node_a`, `node_b`), 80 MiB of object store each; this process
    is connected to it as a driver."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    local = start(dashboard_port=free_port())
    try:
        ray.init(address=local.address, log_to_driver=False)
        assert len(local.alive()) == 3
        yield local
    finally:
        stop(local)
