"""CapFilt on a real multi-node Ray cluster on this machine (tests/cluster.py: a head and two
worker nodes, each its own raylet): `capfilt run` is submitted with `ray job submit` to the head's
job server, as production submits it, its model actors run on the worker nodes, and a worker node killed mid-run (its
raylet and every worker on it, at once) loses nothing: the run, or its rerun, ends with every
key exactly once, counts that reconcile, and the same decisions and bytes as an uninterrupted run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.run import run

from tests.cluster import actors_by_node, cluster  # noqa: F401
from tests.fixtures_run import REPO, ROWS, config, outputs, run_checkpoint, staged_rows, web  # noqa: F401
from tests.test_run_identity import _published

STAGE = "CapFiltStage"  # the fused model actors' class: Ray names the pool's actors after it
# 1.5 CPUs per model actor: only a worker node (2 CPUs) holds one, and only one, so the pool of two
# is spread over both worker nodes whatever Ray's scheduler prefers
COMPUTE = {"batch_size": 2, "rows_per_block": 2, "actor_cpus": 1.5}
# the tiny random ITM head scores every text within 0.9991-0.9999 here: a threshold inside that band
# keeps some rows and drops others, so the decisions compared mean something (a score moved by a
# CPU kind shifts which, never that both happen)
FILTER = {"threshold": 0.99973}


RAY = Path(sys.executable).with_name("ray")  # Ray's command line, beside this interpreter


def _submit(cfg, yaml_path: Path, cluster) -> subprocess.Popen:
    """`ray job submit` of `capfilt run`: the cluster's job server runs the entrypoint (a driver on
    the head that joins the cluster through the RAY_ADDRESS it sets); the command tails the job's
    log until the job ends, and exits 1 when it failed. The entrypoint names this interpreter,
    whose environment has capfilt installed (a cluster's image has it as `python`)."""
    yaml_path.write_text(yaml.safe_dump(cfg.to_dict()))
    entrypoint = [sys.executable, "-m", "workflows.cli", "run", "--config", str(yaml_path)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([str(RAY), "job", "submit", "--address", cluster.job_server, "--", *entrypoint],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(errors="replace")


def _new_actors(before: dict, after: dict) -> dict[str, set[str]]:
    return {n: ids - before.get(n, set()) for n, ids in after.items() if ids - before.get(n, set())}


def _counts_reconcile(out: Path) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    assert c["rows_in"] == ROWS == c["kept"] + c["dropped"] + c["failed"], c
    kept, rejected = outputs(out)
    keys = [r["key"] for r in kept + rejected]
    assert len(keys) == len(set(keys)) == ROWS  # every key exactly once
    return c


def test_a_run_on_the_cluster_loses_nothing_when_a_worker_node_dies(cluster, web, run_checkpoint, tmp_path):
    _, _, shards = web
    a, b = cluster.node_id("node_a"), cluster.node_id("node_b")

    # the uninterrupted run, on all three nodes, driven from this process (connected to the cluster)
    before = actors_by_node(STAGE)
    t0 = time.time()
    run(config(shards, tmp_path / "reference", run_checkpoint, compute=COMPUTE, filter=FILTER))
    print(f"reference run {time.time() - t0:.1f} s")
    placed = _new_actors(before, actors_by_node(STAGE))
    assert set(placed) == {a, b}, (placed, a, b)  # one model actor on each worker node, none on the head
    decided = _counts_reconcile(tmp_path / "reference")
    assert decided["kept"] and decided["dropped"], decided

    # the same config, node_b's raylet and workers killed once the first rows are staged
    out = tmp_path / "out"
    lost = config(shards, out, run_checkpoint, compute=COMPUTE, filter=FILTER)
    before = actors_by_node(STAGE)
    proc = _submit(lost, tmp_path / "lost.yaml", cluster)
    deadline = time.time() + 240
    # ...and both model actors are up, one on each worker node: a kill before node_b's actor starts
    # would test a run that never had it (a fresh-clone CI saw node_a's actor stage 2 rows first)
    while proc.poll() is None and time.time() < deadline and (
            staged_rows(out) < 2 or set(_new_actors(before, actors_by_node(STAGE))) != {a, b}):
        time.sleep(0.05)
    staged = staged_rows(out)
    assert proc.poll() is None and 0 < staged < ROWS, ("the node went too late to test its loss", staged)
    # where the actors are as the node goes: afterwards a restarted actor keeps its id on its new node
    placed = _new_actors(before, actors_by_node(STAGE))
    assert set(placed) == {a, b}, ("this run's model actors were not on both worker nodes", placed)
    gone = cluster.remove("node_b")
    t_lost = time.time()
    rc, log = _finish(proc)
    assert gone == b and cluster.alive() == {cluster.head_id, a}  # the cluster saw the node die
    print(f"lost run {time.time() - t_lost:.1f} s after the loss, rc {rc}")
    reruns = 0
    if rc != 0:  # the run may fail with the node's objects; the same command then resumes it
        reruns = 1
        rc, log = _finish(_submit(lost, tmp_path / "lost.yaml", cluster))
    assert rc == 0, log[-3000:]
    # the job server ran them: one job per submission of this config, the last one SUCCEEDED
    from ray.job_submission import JobStatus, JobSubmissionClient

    jobs = [j for j in JobSubmissionClient(cluster.job_server).list_jobs() if str(tmp_path / "lost.yaml") in j.entrypoint]
    assert len(jobs) == 1 + reruns and max(jobs, key=lambda j: j.start_time).status == JobStatus.SUCCEEDED, jobs
    counts = _counts_reconcile(out)
    assert _published(out) == _published(tmp_path / "reference"), (staged, reruns)
    print(f"node_b lost with {staged}/{ROWS} rows staged; reruns: {reruns}; counts: {counts}; actors: "
          f"{ {n[:8]: len(ids) for n, ids in placed.items()} }")
