"""Peak memory of a whole CapFilt run at 1k and at 8k images (tiny model): does it stay flat?

    python -m bench.memory [--sizes 1000 8000] [--image-size 64] [--interval 0.2] [--workdir DIR]

Builds a synthetic web (64 px) downloaded with img2dataset into shards of 1,000 images and a
random-weight tiny checkpoint (captioner and filter), then runs `capfilt run --config ...` (the
real command line: its own driver, which starts Ray) as a child process once per size, and
samples its whole process tree from /proc every `interval` seconds: the driver, Ray's own
processes (gcs_server, raylet, agents) and every Ray worker (read/decode tasks, model actors).
psutil is not in the venv (Ray vendors its own copy), so /proc is read directly.

Printed per size:
* peak tree RSS: the largest sum of VmRSS over the tree in one sample (shared pages, e.g. the
  object store's /dev/shm mapped in several processes, count once per process);
* peak tree PSS: the same with PSS (shared pages divided among their users: the honest total);
* sum of per-process VmHWM: each process's own peak RSS as last seen (peaks at different
  times, so an upper bound; a process that lived less than one interval is missed);
* the driver's own VmHWM.
The ratio 8k / 1k of the peak tree PSS and RSS is the figure to watch (goal <= 1.1).
Figures, not pass/fail.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import KB, TreeSampler, busy_cores, cpu_ticks, machine, tiny_checkpoint, web_shards
from models.precision import DEFAULT_PRECISION, PRECISIONS


def measure(config: Path, interval: float, log: Path) -> dict:
    command = [sys.executable, "-m", "workflows.cli", "run", "--config", str(config), "--progress-every", "3600"]
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0, ticks, mine = time.perf_counter(), cpu_ticks(), time.process_time()
    with open(log, "w") as out:
        child = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        sampler = TreeSampler(child.pid, interval, pss=True)
        sampler.start()
        rc = child.wait()
        sampler.stop.set()
        sampler.join()
    wall = time.perf_counter() - t0
    # everything else on the machine: less the run's tree and this process (the sampler)
    others = busy_cores(ticks, cpu_ticks()) - sampler.cpu_seconds() / wall - (time.process_time() - mine) / wall
    try:  # anything of this run's own session that outlived its driver
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if rc != 0:
        sys.exit(f"capfilt run failed (exit {rc}); see {log}:\n{log.read_text()[-3000:]}")
    driver = [h for pid, (k, h) in sampler.hwm.items() if pid == child.pid]
    return {"wall_s": wall, "peak_rss": sampler.peak_rss, "peak_pss": sampler.peak_pss,
            "sum_hwm": sum(h for _, h in sampler.hwm.values()), "driver_hwm": driver[0] if driver else 0,
            "procs": len(sampler.hwm), "max_procs": sampler.max_procs, "samples": sampler.samples,
            "peak_by_kind": sampler.peak_at, "own_cores": sampler.cpu_seconds() / wall,
            "other_cores": max(0.0, others)}


def mib(n: int) -> str:
    return f"{n / KB / KB:7.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000])
    parser.add_argument("--image-size", type=int, default=64, help="synthetic images and model input (px)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rows-per-block", type=int, default=256)
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION)
    parser.add_argument("--rows-per-shard", type=int, default=10000,
                        help="rows per output shard (the config's default): the sinks hold one shard at a time")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between /proc samples")
    parser.add_argument("--workdir", default="", help="keep data and checkpoints here (reused on the next run)")
    args = parser.parse_args()

    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="capfilt-bench-memory-"))
    print(f"bench.memory: {' '.join(sys.argv[1:]) or '(defaults)'}")
    print(f"machine: {machine()}; work folder {root}", flush=True)
    t0 = time.perf_counter()
    results = {}
    try:
        # one world as large as the largest run; smaller runs read a prefix of its shards
        biggest = max(args.sizes)
        web = web_shards(root / "web", biggest, args.image_size, shard_size=1000)
        checkpoint = tiny_checkpoint(root / "checkpoint", web.captions)
        print(f"set-up: {biggest} images at {args.image_size} px in img2dataset shards of 1,000 "
              f"({web.seconds:.1f} s), tiny checkpoint", flush=True)
        for n in args.sizes:
            if n % 1000:
                sys.exit("--sizes must be multiples of 1,000 (whole img2dataset shards)")
            shards = root / f"shards_{n}"  # the first n // 1000 shards, linked
            shutil.rmtree(shards, ignore_errors=True)
            shards.mkdir()
            for i in range(n // 1000):
                for suffix in (".tar", ".parquet", "_stats.json"):
                    os.symlink(Path(web.shards) / f"{i:05d}{suffix}", shards / f"{i:05d}{suffix}")
            out = root / f"out_{n}"
            shutil.rmtree(out, ignore_errors=True)
            config = root / f"run_{n}.yaml"
            config.write_text(yaml.safe_dump({
                "input": {"path": str(shards)}, "output": str(out), "image_size": args.image_size,
                "captioner": {"checkpoint": checkpoint}, "filter": {"checkpoints": [checkpoint]},
                "compute": {"batch_size": args.batch_size, "rows_per_block": args.rows_per_block,
                            "captioner_actors": [1, 1], "filter_actors": [1, 1], "actor_cpus": 1.0,
                            "precision": args.precision, "rows_per_shard": args.rows_per_shard},
            }))
            r = results[n] = measure(config, args.interval, root / f"run_{n}.log")
            kinds = ", ".join(f"{k} {v / KB / KB:.0f}" for k, v in sorted(r["peak_by_kind"].items(), key=lambda kv: -kv[1]))
            print(f"\n{n} images: whole run {r['wall_s']:.1f} s ({n / r['wall_s']:.1f} images/s), "
                  f"{r['procs']} processes seen (at most {r['max_procs']} at once), {r['samples']} samples")
            print(f"  peak tree PSS {mib(r['peak_pss'])}   peak tree RSS {mib(r['peak_rss'])}   "
                  f"sum of per-process VmHWM {mib(r['sum_hwm'])}   driver VmHWM {mib(r['driver_hwm'])}")
            print(f"  PSS by process at the peak (MiB): {kinds}")
            print(f"  CPU: the run's processes used {r['own_cores']:.2f} cores on average, other work on the machine "
                  f"{r['other_cores']:.2f}", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    if len(results) >= 2:
        lo, hi = min(results), max(results)
        a, b = results[lo], results[hi]
        print(f"\nRATIO {hi} / {lo} images: peak tree PSS {b['peak_pss'] / a['peak_pss']:.2f}, "
              f"peak tree RSS {b['peak_rss'] / a['peak_rss']:.2f}, sum of VmHWM {b['sum_hwm'] / a['sum_hwm']:.2f}, "
              f"driver VmHWM {b['driver_hwm'] / a['driver_hwm']:.2f}  (goal <= 1.1)")
    print(f"machine: {machine()}")
    print(f"bench.memory done in {time.perf_counter() - t0:.0f} s; Ray ran with 2 x {os.cpu_count()} logical "
          f"CPUs on {os.cpu_count()} cores (pipeline.run), model actors 1 logical CPU / 1 torch thread each",
          flush=True)


if __name__ == "__main__":
    main()
