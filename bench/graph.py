"""CapFilt graph throughput against the captioner and filter alone on the same images.

    python -m bench.graph [--preset tiny|base|both] [--images N] [--precision auto|fp32|bf16] [--gpu]
                          [--batch-size B] [--rows-per-block R] [--actor-cpus C] [--layout L] [--stats]
                          [--workdir DIR]

Builds a synthetic web (served on 127.0.0.1, downloaded with img2dataset into shards) and a
random-weight pre-training checkpoint used as both captioner and filter, then:

* model-only: the Captioner and Filter loaded in this process (no Ray) on the same images,
  decoded by the graph's own Decode stage, in the same batch size: `caption`, then `itm` on the
  web text plus the captions of each image as FilterStage scores them. Timed after one warm-up
  batch, model loading excluded, at 1 torch thread and at the graph's model threads together (2);
* graph: `pipeline.run.run(cfg)` end to end on the shards, two model actors of `actor_cpus` Ray
  CPUs (= torch threads) each: with `--layout` auto (fused without GPUs) both hold captioner and
  filter; with separate, one captioner actor and one filter actor. images/s from the manifest's
  `timings.graph_s` (the Ray Data graph: read, decode, caption, filter, decide, staging write,
  the model actors' start-up included) and from the wall time of the whole run (Ray start-up,
  checksums and sinks included). Ray's task timeline splits graph_s into start-up (until the
  first block reaches a model actor) and streaming, with each model actor's busy time.

Prints images/s and graph / best model-only (the goal is >= 0.85), the CPU this run's processes
and everything else on the machine used (other work lowers the figures; so does a model-only
line whose CPU s per s is below its thread count). `--stats` writes the graph once more through
`pipeline.graph.build(...).write_parquet()` and prints Ray Data's per-operator stats.
Figures, not pass/fail.

Defaults (precision auto: bf16 where the device runs it natively, else fp32): tiny at 96 px (its fine-tuning size), 8,000 images, batch 64, 256 rows
per block; base at 384 px, 256 images, batch 8, 16 rows per block. `--gpu` puts both actors on one
GPU (num_gpus 0.5 each) with larger batches and times model-only on cuda.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (Decoded, TreeSampler, base_checkpoint, busy_cores, cpu_ticks, decoded_images, machine,
                          tiny_checkpoint, web_shards)
from models.precision import DEFAULT_PRECISION, PRECISIONS, resolve_precision

PRESETS = {
    # images, image size, batch, rows per Ray block, img2dataset shard size
    # enough images that the graph's fixed start-up (~6 s: Ray Data planning, actor start, model
    # load) is a small part of it, as in a real run of millions of images; both ratios are printed
    "tiny": dict(images=8000, image_size=96, batch_size=64, rows_per_block=256, shard_size=1000),
    "base": dict(images=256, image_size=384, batch_size=8, rows_per_block=16, shard_size=1000),
}
GPU = {  # one GPU shared by the two actors
    "tiny": dict(batch_size=256, rows_per_block=512),
    "base": dict(batch_size=64, rows_per_block=64),
}


def run_config(preset: str, args, shards: str, checkpoint: str, out: Path, size: dict):
    from pipeline.config import RunConfig, build

    compute = {"batch_size": size["batch_size"], "rows_per_block": size["rows_per_block"],
               "captioner_actors": [1, 1], "filter_actors": [1, 1], "precision": args.precision,
               # Ray starts with 2 x cores logical CPUs (pipeline.run): one "core" (2 logical) per
               # model actor would leave nothing for the read and decode tasks; 1 logical CPU each
               # is one torch thread each, the other half of the logical CPUs for the CPU stages
               "actor_cpus": args.actor_cpus, "layout": args.layout}
    values = {"input": {"path": shards}, "output": str(out), "image_size": size["image_size"],
              "captioner": {"checkpoint": checkpoint}, "filter": {"checkpoints": [checkpoint]},
              "compute": compute}
    cfg = build(RunConfig, values, f"bench.graph {preset}")
    if args.gpu:
        # set after build: the config's type check takes num_gpus for an int (its default is the
        # literal 0), so `num_gpus: 0.5` is refused from YAML
        cfg.compute.num_gpus = args.num_gpus
    return cfg


def model_only(cfg, data: Decoded, threads: int, device: str) -> dict:
    """caption + itm over `data` in batches of cfg.compute.batch_size, in this process."""
    import torch

    from models.captioner import Captioner
    from models.filter import Filter

    torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    k, size, batch = cfg.captioner, cfg.image_size, cfg.compute.batch_size
    precision = cfg.compute.precision or None
    t0 = time.perf_counter()
    captioner = Captioner.from_pretrained(k.checkpoint, image_size=size, device=device, precision=precision)
    filt = Filter.from_pretrained(cfg.filter.checkpoints[0], image_size=size, device=device, precision=precision)
    sync()
    load_s = time.perf_counter() - t0

    def one(start: int) -> tuple[float, float, int]:
        pixels, keys = data.pixels[start:start + batch], data.keys[start:start + batch]
        t = time.perf_counter()
        captions = captioner.caption(pixels, k.options, seed=cfg.seed, keys=[str(x) for x in keys])  # as CaptionStage
        sync()
        t_cap = time.perf_counter() - t
        texts, owner = [], []  # as FilterStage: the web text (when not empty), then each caption
        for i in range(len(pixels)):
            web = data.web_texts[start + i].strip()
            if web:
                texts.append(web), owner.append(i)
            for c in captions[i]:
                texts.append(c), owner.append(i)
        t = time.perf_counter()
        filt.itm(pixels, texts, image_index=owner)
        sync()
        return t_cap, time.perf_counter() - t, len(texts)

    one(0)  # warm-up (allocator, kernel choice); not counted
    t_cap = t_itm = 0.0
    pairs = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for start in range(0, len(data.keys), batch):
        c, i, p = one(start)
        t_cap, t_itm, pairs = t_cap + c, t_itm + i, pairs + p
    # CPU seconds per wall second: about `threads` on an idle machine, less when others hold the cores
    cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    n = len(data.keys)
    gpu_mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    return {"threads": threads, "load_s": load_s, "caption_s": t_cap, "itm_s": t_itm, "pairs": pairs,
            "caption_ips": n / t_cap, "itm_ips": n / t_itm, "both_ips": n / (t_cap + t_itm),
            "cpu_share": cpu_share, "gpu_peak_gib": gpu_mem}


def graph_run(cfg) -> dict:
    import ray.data

    from pipeline.run import run

    shutil.rmtree(cfg.output, ignore_errors=True)  # a finished output would be reused, a partial one resumed
    ray.data.DataContext.get_current().enable_progress_bars = False
    since = time.time()
    ticks = cpu_ticks()
    with TreeSampler(os.getpid()) as tree:  # this process and Ray's, which are its descendants
        t0 = time.perf_counter()
        manifest = run(cfg, progress_every=3600)
        wall = time.perf_counter() - t0
    machine_cores = busy_cores(ticks, cpu_ticks())
    own = tree.cpu_seconds() / (tree.ended - tree.started)
    return {"graph_s": manifest["timings"]["graph_s"], "run_s": wall, "counts": manifest["counts"],
            "own_cores": own, "other_cores": max(0.0, machine_cores - own), "timeline": timeline(since)}


def timeline(since: float) -> dict:
    """Where the graph's time went, from Ray's task timeline (events after `since`, epoch seconds):
    start-up (until the first block reaches a model actor), streaming (from there to the last
    write), each model actor's __init__ and its busy time on blocks."""
    import ray

    time.sleep(2.0)  # workers report task events about once a second
    events = [(e["ts"] / 1e6, e["dur"] / 1e6, str(e.get("cat", ""))) for e in ray.timeline()
              if e.get("ph") == "X" and e["ts"] / 1e6 >= since]
    if not events:
        return {}
    start = min(t for t, _, _ in events)
    end = max(t + d for t, d, _ in events)

    def model(stage: str, method: str) -> list[tuple[float, float]]:
        return [(t, d) for t, d, c in events if stage in c and c.endswith("." + method)]

    blocks = model("Stage", "submit")
    if not blocks:
        return {}
    first = min(t for t, _ in blocks)
    out = {"startup_s": first - start, "streaming_s": end - first}
    for stage in ("CapFiltStage", "CaptionStage", "FilterStage"):
        inits = model(stage, "__init__")
        if not inits:
            continue
        out[stage] = {"init_s": max((d for _, d in inits), default=0.0),
                      "busy_s": sum(d for _, d in model(stage, "submit")),
                      "fused": next((c.split("MapWorker(", 1)[1].rsplit(").", 1)[0] for _, _, c in events
                                     if stage in c and "MapWorker(" in c), "")}
    return out


def graph_stats(cfg, shards: str, out: Path) -> str:
    """The same graph written once more, built by hand so that Ray Data's stats are reachable."""
    import ray.data

    from pipeline import graph

    shutil.rmtree(out, ignore_errors=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = graph.build(cfg, shards)
    t0 = time.perf_counter()
    ds.write_parquet(str(out))
    wall = time.perf_counter() - t0
    return f"(graph built by hand, written in {wall:.1f} s)\n{ds.stats()}"


def bench(preset: str, args, root: Path) -> dict:
    size = dict(PRESETS[preset])
    if args.gpu:
        size.update(GPU[preset])
    if args.images:
        size["images"] = args.images
    if args.batch_size:
        size["batch_size"] = args.batch_size
    if args.rows_per_block:
        size["rows_per_block"] = args.rows_per_block
    n, px = size["images"], size["image_size"]
    work = root / f"{preset}_{px}px_{n}"
    t = time.perf_counter()
    web = web_shards(work / "web", n, px, shard_size=size["shard_size"])
    build_web = time.perf_counter() - t
    t = time.perf_counter()
    if preset == "tiny":
        checkpoint = tiny_checkpoint(work / "checkpoint", web.captions)
    else:
        checkpoint = base_checkpoint(root / "base_checkpoint")  # one ~1 GB checkpoint for both roles
    build_ckpt = time.perf_counter() - t
    cfg = run_config(preset, args, web.shards, checkpoint, work / "out", size)
    data = decoded_images(web.shards, px)
    device = "cuda" if args.gpu else "cpu"
    print(f"\n== {preset}: {len(data.keys)} images at {px} px, batch {size['batch_size']}, "
          f"rows/block {size['rows_per_block']}, precision {args.precision} "
          f"({resolve_precision(device, args.precision)} here), device {device}", flush=True)
    print(f"set-up: web (synth + serve + img2dataset) {build_web:.1f} s, checkpoint {build_ckpt:.1f} s", flush=True)

    model_threads = max(1, int(args.actor_cpus)) * 2  # what the two actors hold together
    thread_counts = [1] if args.gpu else sorted({1, model_threads, *args.threads})
    alone = {}
    for th in thread_counts:
        r = alone[th] = model_only(cfg, data, th, device)
        print(f"model-only {th} thread(s): caption {r['caption_ips']:8.2f} images/s, itm {r['itm_ips']:8.2f} "
              f"images/s ({r['pairs'] / r['itm_s']:.1f} pairs/s), caption+itm {r['both_ips']:8.2f} images/s "
              f"(load {r['load_s']:.1f} s, not counted; {r['cpu_share']:.2f} CPU s per s)"
              + (f", GPU memory peak {r['gpu_peak_gib']:.1f} GiB" if args.gpu else "")
              + ("  <- fewer CPU s per s than threads: others were busy, figures are low"
                 if not args.gpu and r["cpu_share"] < 0.9 * th else ""), flush=True)
    print(f"machine after model-only: {machine()}", flush=True)

    g = graph_run(cfg)
    rows = g["counts"]["rows_in"]
    graph_ips, run_ips = rows / g["graph_s"], rows / g["run_s"]
    layout = "2 actors each holding captioner and filter" if cfg.fused else "1 captioner + 1 filter actor"
    print(f"graph (pipeline.run, {layout}, actor_cpus {cfg.compute.actor_cpus}"
          f"{', num_gpus %s' % cfg.compute.num_gpus if args.gpu else ''}): {graph_ips:8.2f} images/s "
          f"(graph_s {g['graph_s']:.1f} s); whole run incl. Ray start and sinks {run_ips:8.2f} images/s "
          f"({g['run_s']:.1f} s); counts {g['counts']}", flush=True)
    print(f"  CPU during the run: its processes (driver + Ray) {g['own_cores']:.2f} cores on average, other work on "
          f"the machine {g['other_cores']:.2f} of {os.cpu_count()}"
          + ("  <- others were busy: figures are low" if g["other_cores"] > 0.25 else ""), flush=True)
    tl = g["timeline"]
    if tl:
        stages = {k: v for k, v in tl.items() if k.endswith("Stage")}
        inits = ", ".join(f"{k} {v['init_s']:.1f} s" for k, v in stages.items())
        print(f"  where graph_s went (Ray timeline): start-up {tl['startup_s']:.1f} s until the first block reached a "
              f"model actor (actor __init__: {inits}: worker start, imports, model load), then streaming "
              f"{tl['streaming_s']:.1f} s = {rows / tl['streaming_s']:.2f} images/s", flush=True)
        for k, v in stages.items():
            print(f"  {k} actors busy {v['busy_s']:.1f} s on blocks in all ({rows / v['busy_s']:.2f} images/s per "
                  f"actor-second; runs {v['fused']})", flush=True)
    print(f"machine after graph: {machine()}", flush=True)

    best_seq = max(alone.values(), key=lambda r: r["both_ips"])
    one = alone[1]
    # two actors at one thread each can at best run at the slower stage's rate
    pipelined = min(one["caption_ips"], one["itm_ips"])
    print(f"RATIO {preset}: graph / model-only caption+itm (best, {best_seq['threads']} thread(s)) = "
          f"{graph_ips / best_seq['both_ips']:.2f}  (goal >= 0.85; whole run {run_ips / best_seq['both_ips']:.2f})")
    if not args.gpu and cfg.fused:
        ideal = 2 * one["both_ips"]
        print(f"       graph / twice the 1-thread model-only ({ideal:.2f} images/s: two 1-thread processes with no "
              f"memory-bandwidth contention, an upper bound) = {graph_ips / ideal:.2f}")
    if not args.gpu and not cfg.fused:
        print(f"       graph / two-stage pipeline bound at 1 thread per stage ({pipelined:.2f} images/s) = "
              f"{graph_ips / pipelined:.2f}")
    if tl:
        print(f"       after start-up: streaming / model-only = {rows / tl['streaming_s'] / best_seq['both_ips']:.2f}")
    print(f"       fixed cost inside graph_s: loading both models in-process took {one['load_s']:.1f} s "
          f"({one['load_s'] / g['graph_s']:.0%} of graph_s), plus the actors' start-up", flush=True)
    if args.stats:
        print(graph_stats(cfg, web.shards, work / "stats_out"), flush=True)
    import ray

    ray.shutdown()
    return {"graph_ips": graph_ips, "model_only_ips": best_seq["both_ips"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("tiny", "base", "both"), default="both")
    parser.add_argument("--images", type=int, default=0, help="images (default per preset: tiny 8000, base 256)")
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION)
    parser.add_argument("--batch-size", type=int, default=0)
    parser.add_argument("--rows-per-block", type=int, default=0)
    parser.add_argument("--actor-cpus", type=float, default=1.0, help="Ray CPUs (and torch threads) per model actor")
    parser.add_argument("--threads", type=int, nargs="*", default=[], help="more torch thread counts for model-only")
    parser.add_argument("--gpu", action="store_true", help="both actors on one GPU; model-only on cuda")
    parser.add_argument("--num-gpus", type=float, default=0.5, help="GPU share per model actor with --gpu")
    parser.add_argument("--layout", choices=("auto", "fused", "separate"), default="auto",
                        help="compute.layout: auto fuses the two models into one actor pool without GPUs")
    parser.add_argument("--stats", action="store_true", help="also print Ray Data's per-operator stats")
    parser.add_argument("--workdir", default="", help="keep data and checkpoints here (reused on the next run)")
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            sys.exit("--gpu: torch sees no CUDA device")
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="capfilt-bench-graph-"))
    print(f"bench.graph: {' '.join(sys.argv[1:]) or '(defaults)'}")
    print(f"machine: {machine()}; work folder {root}", flush=True)
    t0 = time.perf_counter()
    try:
        presets = ("tiny", "base") if args.preset == "both" else (args.preset,)
        for p in presets:
            bench(p, args, root)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nbench.graph done in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
