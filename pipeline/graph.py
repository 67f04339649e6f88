"""The CapFilt Ray Data graph, streaming from the source to the staging Parquet files:

    source (pipeline/sources) -> decode + resize (CPU tasks) -> captioner (actor pool)
        -> filter: the scorers (actor pool) -> decide -> write_parquet(staging)

With `compute.layout` fused (the default without GPUs) one pool of actors holds both models.

`pipeline.run` puts the fetch (a URL list's download) before it and the sinks after it.
"""
from __future__ import annotations

import logging

import torch

from models.errors import CapfiltError
from models.precision import resolve_precision
from pipeline.config import RunConfig
from pipeline.decode import Decode
from pipeline.sources.base import Source
from pipeline.sources.registry import readable_at
from pipeline.stages import CapFiltStage, CaptionStage, Decide, FilterStage

log = logging.getLogger(__name__)


def _pool(sizes: list[int]):
    import ray.data

    return ray.data.ActorPoolStrategy(min_size=sizes[0], max_size=sizes[1])


def model_device(cfg: RunConfig) -> str:
    return "cuda" if cfg.compute.num_gpus else "cpu"


def model_precision(cfg: RunConfig) -> str:
    """The precision the model actors run in: `auto` resolved here for CPU actors (the driver runs
    on the same kind of machine); on GPUs the actors resolve it where the GPU is."""
    device = model_device(cfg)
    if device == "cuda" and not torch.cuda.is_available():
        return cfg.compute.precision
    return resolve_precision(device, cfg.compute.precision)


def build(cfg: RunConfig, path: str, source: Source | None = None):
    """The lazy dataset of decided rows of the input at `path`, read by `source` (default: the
    source that reads `path` in place, such as an img2dataset folder); nothing runs until written."""
    c = cfg.compute
    scoring = cfg.filter.scoring
    source = source or readable_at(path)
    if source is None:
        raise CapfiltError(f"{path} is no input the graph reads in place (a URL list is downloaded first: "
                           "pipeline.run does it, or `capfilt download`)")
    ds = source.read(path, c.rows_per_block)
    ds = ds.map_batches(Decode(cfg.image_size, c.max_image_pixels, cfg.dedup.hash, cfg.dedup.hash_size), batch_format="numpy", batch_size=c.batch_size,
                        zero_copy_batch=False)
    # a model actor that dies (OOM, a killed process) is restarted and its blocks retried: said
    # here, not left to Ray's defaults
    model_args = dict(batch_format="numpy", batch_size=c.batch_size, num_gpus=c.num_gpus, num_cpus=c.actor_cpus,
                      zero_copy_batch=False, max_restarts=-1, max_task_retries=-1)
    device, precision = model_device(cfg), model_precision(cfg)
    threads = max(1, int(c.actor_cpus))  # torch threads per model actor
    k = cfg.captioner
    caption = dict(checkpoint=k.checkpoint, image_size=cfg.image_size, seed=cfg.seed, device=device,
                   precision=precision, threads=threads, options=k.options)
    filter_ = dict(checkpoints=cfg.filter.checkpoints, image_size=cfg.image_size, device=device,
                   precision=precision, threads=threads, scorers=scoring.names)
    if cfg.fused:  # as many actors as the two pools would hold: the same cores and memory
        sizes = [a + b for a, b in zip(c.captioner_actors, c.filter_actors)]
        ds = ds.map_batches(CapFiltStage, compute=_pool(sizes),
                            fn_constructor_kwargs=dict(caption=caption, filter=filter_), **model_args)
    else:
        if cfg.mode in ("capfilt", "caption_only"):
            ds = ds.map_batches(CaptionStage, compute=_pool(c.captioner_actors), fn_constructor_kwargs=caption,
                                **model_args)
        if cfg.mode in ("capfilt", "filter_only"):
            ds = ds.map_batches(FilterStage, compute=_pool(c.filter_actors), fn_constructor_kwargs=filter_,
                                **model_args)
    return ds.map_batches(Decide(cfg.mode, scoring.threshold, cfg.filter.max_texts, scoring.names,
                                 cfg.captioner.keep, cfg.captioner.top_k),
                          batch_format="numpy", batch_size=c.batch_size, zero_copy_batch=False)
