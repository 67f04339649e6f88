"""Bounded memory on a cluster: a CapFilt run on a 3-node Ray cluster whose object stores are
capped small enough that Ray must spill; spilled bytes and peak memory per node.

    python -m bench.cluster_memory [--images 1000] [--source-size 64] [--image-size 256]
                                   [--rows-per-block 256] [--object-store-mb 80] [--interval 0.5]
                                   [--workdir DIR]

Starts a real multi-node Ray cluster on this machine (bench/ray_cluster.py: Ray's own
`ray.cluster_utils.Cluster`, a head with 1 CPU and two worker nodes with 2 CPUs each, every node its
own raylet and object store of `--object-store-mb`), then runs `capfilt run --config ...` as a
child process that joins it at RAY_ADDRESS, as a `ray job submit` entrypoint does, over a synthetic
web (bench/common.py) downloaded with img2dataset, with a random-weight tiny checkpoint. The web's
images are small (`--source-size`: rendering them is the set-up's cost, and it grows with the
pixels); the graph's decode resizes every one to `--image-size`, so what the object stores hold
is set by that size, not by the source's. The model actors take 1.5 CPUs each, so one sits on
each worker node; the read and decode tasks (1 CPU each) find a whole CPU free only on the head, so
the decoded blocks (uint8 pixels, up to rows_per_block x size^2 x 3 bytes) are made in the head's
store and cross to the worker nodes' stores: the head's is the one that fills first.

Printed per node (head, node_a, node_b), from the node's raylet (GetNodeStats: cumulative since
the node started, so the figures are this run's on a fresh cluster): bytes and objects spilled and
restored, the object store's peak use against its capacity and any fallback allocation (objects
written to disk-backed mmap when the store is full); and the peak PSS of the node's process tree
(raylet, which holds the object store, plus its workers and agents; on the head also gcs_server
and the log monitor), sampled from /proc as bench/memory.py does. The driver's tree is sampled
apart. Then whether the run completed with counts that reconcile (rows_in = kept + dropped +
failed + duplicates, from manifest.json) and whether anything spilled at all: a run that did not spill did not
test bounded memory, and says so. Figures, not pass/fail.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import KB, TreeSampler, machine, tiny_checkpoint, tree, web_shards
from bench.ray_cluster import HEAD, HEAD_CPUS, OBJECT_STORE_MB, WORKER_CPUS, LocalCluster, node_pids, start, stop
from models.precision import DEFAULT_PRECISION, PRECISIONS

# ObjectStoreStats fields (src/ray/protobuf/node_manager.proto) that the report reads
STORE_FIELDS = ("spilled_bytes_total", "spilled_objects_total", "restored_bytes_total", "restored_objects_total",
                "object_store_bytes_used", "object_store_bytes_avail", "object_store_bytes_fallback",
                "spill_time_total_s", "restore_time_total_s")
ACTOR_CPUS = 0.75 * WORKER_CPUS  # over half a worker node and over the head's CPUs: one model actor per worker node


def store_figures(store_stats) -> dict:
    """The report's fields of one raylet's ObjectStoreStats message, as plain numbers."""
    return {f: getattr(store_stats, f) for f in STORE_FIELDS}


def node_store(node) -> dict:
    """The object store figures of one node, asked of its raylet (no driver connection needed)."""
    from ray._private.internal_api import node_stats

    reply = node_stats(node.node_ip_address, node.node_manager_port, include_memory_info=False)
    return store_figures(reply.store_stats)


class NodeSampler(TreeSampler):
    """One node's process trees (every process the node started, with its descendants), and the
    peak use of its object store, asked of its raylet every sample."""

    def __init__(self, node, interval: float):
        super().__init__(0, interval, pss=True)
        self.node = node
        self.roots = node_pids(node)  # taken now: a process the node starts later is a raylet's child
        self.store_peak = self.fallback_peak = 0
        self.store_errors = 0

    def pids(self) -> list[int]:
        return sorted({p for root in self.roots for p in tree(root)})

    def sample(self) -> None:
        super().sample()
        try:
            store = node_store(self.node)
        except Exception:  # noqa: BLE001 - a raylet busy past the RPC's deadline: this sample has no store figure
            self.store_errors += 1
            return
        self.store_peak = max(self.store_peak, store["object_store_bytes_used"])
        self.fallback_peak = max(self.fallback_peak, store["object_store_bytes_fallback"])


def run_on_cluster(local: LocalCluster, config: Path, interval: float, log: Path) -> dict:
    """`capfilt run` as a submitted job's driver, every node and the driver sampled until it exits."""
    command = [sys.executable, "-m", "workflows.cli", "run", "--config", str(config), "--progress-every", "3600"]
    env = {**local.env(), "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    before = {name: node_store(node) for name, node in local.nodes().items()}
    samplers = {name: NodeSampler(node, interval) for name, node in local.nodes().items()}
    t0 = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            driver = TreeSampler(child.pid, interval, pss=True)
            for s in (driver, *samplers.values()):
                s.start()
            rc = child.wait()
        finally:
            try:  # anything of the driver's own session that outlived it (or the driver, on an interrupt)
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    wall = time.perf_counter() - t0
    for s in (driver, *samplers.values()):
        s.stop.set()
        s.join()
    after = {name: node_store(node) for name, node in local.nodes().items()}
    nodes = {}
    for name, s in samplers.items():
        delta = {f: after[name][f] - before[name][f] for f in STORE_FIELDS if f.endswith(("_total", "_total_s"))}
        nodes[name] = {**delta, "capacity": after[name]["object_store_bytes_avail"], "store_peak": s.store_peak,
                       "fallback_peak": s.fallback_peak, "store_errors": s.store_errors, "peak_pss": s.peak_pss,
                       "peak_rss": s.peak_rss, "peak_by_kind": s.peak_at, "procs": len(s.hwm)}
    return {"rc": rc, "wall_s": wall, "nodes": nodes, "driver_pss": driver.peak_pss, "driver_rss": driver.peak_rss,
            "samples": driver.samples}


def mib(n: float) -> str:
    return f"{n / KB / KB:.1f} MiB"


def report(r: dict, out: Path, log: Path) -> bool:
    """Print the figures; whether the run completed with counts that reconcile."""
    print(f"\nwhole run {r['wall_s']:.1f} s, exit {r['rc']}, {r['samples']} samples of the driver")
    print(f"{'node':8} {'spilled':>12} {'objects':>8} {'restored':>12} {'objects':>8} {'store peak / capacity':>24} "
          f"{'fallback peak':>14} {'peak PSS':>11} {'peak RSS':>11}")
    for name, n in r["nodes"].items():
        print(f"{name:8} {mib(n['spilled_bytes_total']):>12} {n['spilled_objects_total']:>8} "
              f"{mib(n['restored_bytes_total']):>12} {n['restored_objects_total']:>8} "
              f"{mib(n['store_peak']) + ' / ' + mib(n['capacity']):>24} {mib(n['fallback_peak']):>14} "
              f"{mib(n['peak_pss']):>11} {mib(n['peak_rss']):>11}")
    print(f"{'driver':8} {'':>12} {'':>8} {'':>12} {'':>8} {'':>24} {'':>14} {mib(r['driver_pss']):>11} "
          f"{mib(r['driver_rss']):>11}")
    for name, n in r["nodes"].items():
        kinds = ", ".join(f"{k} {v / KB / KB:.0f}" for k, v in sorted(n["peak_by_kind"].items(), key=lambda kv: -kv[1])[:5])
        missed = f"; {n['store_errors']} store readings missed" if n["store_errors"] else ""
        print(f"  {name}: {n['procs']} processes seen; PSS at its peak (MiB): {kinds}{missed}")
    spilled = sum(n["spilled_bytes_total"] for n in r["nodes"].values())
    if r["rc"] != 0:
        print(f"\nTHE RUN FAILED (exit {r['rc']}); the driver's log, last lines ({log}):\n{log.read_text()[-3000:]}")
        return False
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    # with dedup on (the default), a row that copies another ends as a duplicate: its own term
    total = counts["kept"] + counts["dropped"] + counts["failed"] + counts.get("duplicates", 0)
    verdict = "reconcile" if counts["rows_in"] == total else "DO NOT RECONCILE"
    print(f"\ncompleted: rows_in {counts['rows_in']} = kept {counts['kept']} + dropped {counts['dropped']} + "
          f"failed {counts['failed']} + duplicates {counts.get('duplicates', 0)} ({total}): counts {verdict}")
    if spilled:
        print(f"spilling happened: {mib(spilled)} spilled over the cluster, "
              f"{mib(sum(n['restored_bytes_total'] for n in r['nodes'].values()))} restored")
    else:
        print("NO SPILLING HAPPENED: the capped stores held everything, so this run did not test bounded memory "
              "(raise --images, --image-size or --rows-per-block, or lower --object-store-mb)")
    return counts["rows_in"] == total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="synthetic web images (img2dataset shards of 1,000)")
    parser.add_argument("--source-size", type=int, default=64, help="the synthetic web's images (px)")
    parser.add_argument("--image-size", type=int, default=256,
                        help="the run's image size (px): decode resizes every image to it, the models read it")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rows-per-block", type=int, default=256,
                        help="rows per read block, at most (Ray Data splits, never merges, the read's own blocks): a decoded "
                             "block holds up to rows x size^2 x 3 bytes (256 at 256 px: 48 MiB)")
    parser.add_argument("--object-store-mb", type=int, default=OBJECT_STORE_MB, help="each node's object store (MiB)")
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples of each node")
    parser.add_argument("--workdir", default="", help="keep data and checkpoints here (reused on the next run)")
    args = parser.parse_args()

    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="capfilt-bench-cluster-memory-"))
    print(f"bench.cluster_memory: {' '.join(sys.argv[1:]) or '(defaults)'}")
    print(f"machine: {machine()}; work folder {root}", flush=True)
    t0 = time.perf_counter()
    local, completed = None, False
    try:
        web = web_shards(root / "web", args.images, args.source_size, shard_size=1000)
        checkpoint = tiny_checkpoint(root / "checkpoint", web.captions)
        print(f"set-up: {web.rows} images at {args.source_size} px in img2dataset shards of 1,000 "
              f"({web.seconds:.1f} s), tiny checkpoint; the run decodes them to {args.image_size} px", flush=True)
        out = root / "out"
        shutil.rmtree(out, ignore_errors=True)
        config = root / "run.yaml"
        config.write_text(yaml.safe_dump({
            "input": {"path": web.shards}, "output": str(out), "image_size": args.image_size,
            "captioner": {"checkpoint": checkpoint}, "filter": {"checkpoints": [checkpoint]},
            "compute": {"batch_size": args.batch_size, "rows_per_block": args.rows_per_block,
                        "actor_cpus": ACTOR_CPUS, "precision": args.precision},
        }))
        t1 = time.perf_counter()
        local = start(object_store_mb=args.object_store_mb)
        print(f"cluster: {HEAD} ({HEAD_CPUS} CPU) + {', '.join(local.workers)} ({WORKER_CPUS} CPUs each), object store "
              f"{args.object_store_mb} MiB per node, up in {time.perf_counter() - t1:.1f} s", flush=True)
        completed = report(run_on_cluster(local, config, args.interval, root / "run.log"), out, root / "run.log")
    finally:
        if local is not None:
            stop(local)
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nmachine: {machine()}")
    print(f"bench.cluster_memory done in {time.perf_counter() - t0:.0f} s", flush=True)
    if not completed:
        sys.exit(1)


if __name__ == "__main__":
    main()
