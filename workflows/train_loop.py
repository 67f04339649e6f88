"""What each Ray Train worker runs: build (or restore) the model, stream its share of the data,
step the optimizer, and report checkpoints in our format (model folder + `train_state.pt`).

A checkpoint holds everything a resumed run needs: the weights with the momentum encoders and the
feature queues (buffers of the model), the optimizer state, the step (the schedule is a function
of it), the loss history and the RNG state; the data stream is replayed from (epoch, step).
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from models.checkpoint import WEIGHTS, load_state, local_folder, read_config
from models.config import MEDConfig
from models.losses import alpha_ramp, require_negatives
from models.precision import resolve_precision
from models.preprocess import normalise
from models.pretrain import BlipPretrain
from models.tokenizer import load_tokenizer
from models.vision import load_timm_weights
from workflows import console, train_checkpoints, train_step
from workflows.train_checkpoints import TRAIN_STATE
from workflows.train_config import TrainConfig
from workflows.train_data import Piece, batches, deal, samples, steps_per_epoch, transform

log = logging.getLogger(__name__)



def lr_at(step: int, epoch: int, total_steps: int, cfg: TrainConfig) -> float:
    """BLIP's schedules. step: linear warm-up from warmup_lr, then lr x lr_decay^epoch (floored at
    min_lr); cosine: from lr down to min_lr over the run."""
    o = cfg.optim
    if cfg.schedule == "step":
        if step < o.warmup_steps:
            return min(o.lr, o.warmup_lr + (o.lr - o.warmup_lr) * step / o.warmup_steps)
        return max(o.min_lr, o.lr * o.lr_decay ** epoch)
    return o.min_lr + (o.lr - o.min_lr) * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total_steps)))


def epoch_plan(pieces: list[Piece], cfg: TrainConfig, world: int) -> list[int]:
    """Steps in each epoch (the least any worker can fill that epoch), cut at optim.steps."""
    plan, total = [], 0
    for epoch in range(max(cfg.optim.epochs, 1) if not cfg.optim.steps else 10**6):
        n = steps_per_epoch(pieces, cfg.optim.batch_size, world, cfg.seed, epoch)
        if cfg.optim.steps:
            n = min(n, cfg.optim.steps - total)
        plan.append(n)
        total += n
        if cfg.optim.steps and total >= cfg.optim.steps:
            break
    return plan


def optimizer_for(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and the temperature (1-d tensors); the image
    encoder's groups carry lr_scale = optim.vit_lr_scale (the loop sets lr x lr_scale). The fast
    step fuses it into one kernel per group (workflows/train_step.py)."""
    groups = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = cfg.optim.vit_lr_scale if name.startswith("visual.") else 1.0
            groups.setdefault((p.ndim > 1, scale), []).append(p)
    wd = cfg.optim.weight_decay
    fused = {"fused": True} if cfg.compute.step == "fast" else {}
    return torch.optim.AdamW([{"params": groups[decay, scale], "weight_decay": wd if decay else 0.0, "lr_scale": scale}
                              for decay, scale in sorted(groups, reverse=True)], lr=cfg.optim.lr, **fused)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """lr on every group, times the group's lr_scale (the image encoder's share)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def build_model(cfg: TrainConfig, tokenizer_dir: str):
    """The model to train and its tokenizer: from model.init, or new from the preset."""
    with local_folder(tokenizer_dir) as local:
        tokenizer = load_tokenizer(local)
    if cfg.model.init:
        with local_folder(cfg.model.init) as local:
            _, base = read_config(local)
        size = cfg.model.image_size or (base.image_size if cfg.task == "pretrain" else base.finetune_image_size)
        model = BlipPretrain.from_pretrained(cfg.model.init, image_size=size, strict=False,
                                             grad_checkpointing=cfg.model.grad_checkpointing)
    else:
        med = MEDConfig.preset(cfg.model.preset, grad_checkpointing=cfg.model.grad_checkpointing)
        if cfg.model.image_size:
            med = MEDConfig.from_dict({**med.to_dict(), "image_size": cfg.model.image_size})
        model = BlipPretrain(med.with_tokenizer(tokenizer))
        if cfg.model.vit_init:
            with local_folder(cfg.model.vit_init) as path:  # a file too, on any fsspec path
                load_timm_weights(model.visual, path)
            model.copy_params()  # the momentum image encoder starts as the same copy
    return model, tokenizer


def _save(folder: Path, model, tokenizer, optimizer, state: dict) -> None:
    model.save_pretrained(folder, tokenizer=tokenizer)
    torch.save({**state, "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}, folder / TRAIN_STATE)


def _restore(folder: str, model, optimizer) -> dict:
    with local_folder(folder) as d:
        load_state(model, load_file(os.path.join(d, WEIGHTS)), f"checkpoint {folder}", strict=True)
        state = torch.load(os.path.join(d, TRAIN_STATE), weights_only=True)
    optimizer.load_state_dict(state.pop("optimizer"))
    torch.set_rng_state(state.pop("rng"))
    return state


def train_loop(config: dict) -> None:
    """Ray Train's train_loop_per_worker: config = {"cfg": TrainConfig dict, "pieces": [...],
    "tokenizer": folder, "run": the run folder when the job trains in this process (it then keeps
    its own checkpoints there: workflows/train_checkpoints.py)}."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.from_dict(config["cfg"])
    pieces = [Piece(**p) for p in config["pieces"]]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    threads = cfg.compute.threads or max(1, int(cfg.compute.cpus_per_worker))
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)  # every worker builds the same initial model
    model, tokenizer = build_model(cfg, config["tokenizer"])
    device = ray.train.torch.get_device()
    model.to(device)
    model.check_batch(cfg.optim.batch_size * world)
    optimizer = optimizer_for(model, cfg)
    state = {"step": 0, "history": [], "resumed_at": []}
    own = config.get("run")  # in this process: our checkpoints, not Ray Train's
    checkpoint = ray.train.get_checkpoint()
    last = train_checkpoints.latest(own) if own else None
    if checkpoint is not None or last is not None:
        if last is not None:
            state = _restore(last, model, optimizer)
        else:
            with checkpoint.as_directory() as d:
                state = _restore(d, model, optimizer)
        state["resumed_at"].append(state["step"])
        log.info("rank %d resumed at step %d", rank, state["step"])
    torch.manual_seed(cfg.seed * 1000 + rank + 7919 * state["step"])  # hard-negative draws differ per worker
    # DDP: the queues are the same on every worker already (they take every worker's features)
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={
        "broadcast_buffers": False, "find_unused_parameters": cfg.task != "pretrain"})
    core = model.module if hasattr(model, "module") else model
    fast = cfg.compute.step == "fast"
    compiled = train_step.use_compile(cfg.compute.compile, device, fast)
    if compiled:
        train_step.compile_encoders(core)

    plan = epoch_plan(pieces, cfg, world)
    total = sum(plan)
    tf = transform(core.image_size, train=cfg.augment.enabled, hflip=cfg.augment.hflip,
                   randaugment=cfg.augment.randaugment, crop_scale=tuple(cfg.augment.crop_scale))
    precision = resolve_precision(device, cfg.compute.precision)  # auto: bf16 where this device runs it natively
    state["precision"] = precision
    if rank == 0:
        log.info("training in %s on %s, %s step%s", precision, device, cfg.compute.step,
                 ", compiled" if compiled else "")
    prompt_length = len(tokenizer(cfg.optim.prompt)["input_ids"]) - 1 if cfg.task == "caption" else 0
    max_length = cfg.text_length
    ramp_epochs = 2.0 if cfg.task == "pretrain" else 1.0
    step = state["step"]
    already_done = step >= total
    start, seen = time.perf_counter(), 0
    model.train()
    epoch, first = 0, 0
    while epoch < len(plan) and first + plan[epoch] <= step:  # where a resumed run stands
        first += plan[epoch]
        epoch += 1
    while step < total:
        mine = deal(pieces, cfg.seed, epoch, world)[rank]
        done_in_epoch = step - first
        stream = samples(mine, cfg.seed, epoch, rank, skip=done_in_epoch * cfg.optim.batch_size,
                         buffer=cfg.data.shuffle_buffer)
        feed = batches(stream, cfg.optim.batch_size, tf)
        for pixels, texts, ids in feed:
            if step - first >= plan[epoch]:
                break
            lr = lr_at(step, epoch, total, cfg)
            set_lr(optimizer, lr)
            if cfg.task == "caption":
                texts = [cfg.optim.prompt + t for t in texts]
            input_ids, padding = train_step.tokens(tokenizer, texts, max_length, compiled)
            if cfg.task != "pretrain" and "itm" in cfg.losses and device.type != "cpu":
                require_negatives(ids)  # here, on the CPU: in the step it would wait on the GPU
            losses = train_step.step(model, optimizer, {
                "images": normalise(pixels.to(device)), "input_ids": input_ids.to(device),
                "padding": padding.to(device), "alpha": alpha_ramp(step, plan[0], core.cfg.alpha, ramp_epochs),
                "image_ids": ids.to(device) if cfg.task != "pretrain" else None,
                "prompt_length": prompt_length, "tasks": cfg.losses, "share_image_kv": fast},
                train_step.arithmetic(device, precision, fast))
            step += 1
            seen += len(texts)
            logged = step == 1 or step % cfg.log_every == 0 or step == total
            checkpointed = step % cfg.checkpoint_every == 0 or step == total
            if cfg.compute.step == "eager" or logged or checkpointed:  # the fast step reads losses back only here
                figures = train_step.read(losses)
                rate = seen * world / (time.perf_counter() - start)
                metrics = {"step": step, "epoch": epoch, "lr": lr, **figures, "samples_per_s": round(rate, 2)}
            if logged:
                state["history"].append(metrics)
                if rank == 0:  # the steps between the first and the last are progress lines (workflows/console.py)
                    log.info("step %d/%d  loss %.3f (%s)  %.1f samples/s", step, total, figures.get("loss", float("nan")),
                             "  ".join(f"{k[5:]} {v:.3f}" for k, v in figures.items() if k != "loss"), rate,
                             extra=console.PROGRESS if 1 < step < total else None)
            if checkpointed:
                _report(metrics, core, tokenizer, optimizer, {**state, "step": step}, rank, own)
        feed.close()
        first += plan[epoch]
        epoch += 1
    if already_done:  # a finished run relaunched: nothing to train, say where it stands
        ray.train.report({"step": step, "finished": True})


def _report(metrics: dict, model, tokenizer, optimizer, state: dict, rank: int, own: str | None = None) -> None:
    import ray.train

    if own:  # in this process: the checkpoint goes to the run folder itself
        train_checkpoints.save(own, state["step"], lambda folder: _save(folder, model, tokenizer, optimizer, state))
        ray.train.report(metrics)
        return
    if rank != 0:  # every worker reports; one writes the checkpoint (the replicas are identical)
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="capfilt-train-ckpt-") as tmp:
        _save(Path(tmp), model, tokenizer, optimizer, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
