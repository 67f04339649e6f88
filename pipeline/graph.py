"""The CapFilt Ray Data graph, streaming from the source to the staging Parquet files:

    source (img2dataset shards) -> decode + resize (CPU tasks) -> captioner (actor pool)
        -> filter (actor pool) -> decide -> write_parquet(staging)

`pipeline.run` puts the download before it and the sinks after it.
"""
from __future__ import annotations

import logging

from pipeline.config import RunConfig
from pipeline.decode import Decode
from pipeline.sources import read_source
from pipeline.stages import CaptionStage, Decide, FilterStage

log = logging.getLogger(__name__)


def _pool(sizes: list[int]):
    import ray.data

    return ray.data.ActorPoolStrategy(min_size=sizes[0], max_size=sizes[1])


def build(cfg: RunConfig, shards: str):
    """The lazy dataset of decided rows for an img2dataset folder (nothing runs until written)."""
    c = cfg.compute
    ds = read_source(shards, c.rows_per_block)
    ds = ds.map_batches(Decode(cfg.image_size, c.max_image_pixels), batch_format="numpy", batch_size=c.batch_size,
                        zero_copy_batch=False)
    model_args = dict(batch_format="numpy", batch_size=c.batch_size, num_gpus=c.num_gpus, num_cpus=c.actor_cpus,
                      zero_copy_batch=False)
    device = "cuda" if c.num_gpus else "cpu"
    threads = max(1, int(c.actor_cpus))  # torch threads per model actor
    if cfg.mode in ("capfilt", "caption_only"):
        k = cfg.captioner
        options = dict(num_captions=k.num_captions, method=k.method, top_p=k.top_p, num_beams=k.num_beams,
                       min_length=k.min_length, max_length=k.max_length, repetition_penalty=k.repetition_penalty,
                       prompt=k.prompt)
        ds = ds.map_batches(
            CaptionStage, compute=_pool(c.captioner_actors),
            fn_constructor_kwargs=dict(checkpoint=k.checkpoint, image_size=cfg.image_size, options=options,
                                       seed=cfg.seed, device=device, precision=c.precision, threads=threads),
            **model_args)
    if cfg.mode in ("capfilt", "filter_only"):
        ds = ds.map_batches(
            FilterStage, compute=_pool(c.filter_actors),
            fn_constructor_kwargs=dict(checkpoints=cfg.filter.checkpoints, image_size=cfg.image_size, device=device,
                                       precision=c.precision, threads=threads),
            **model_args)
    return ds.map_batches(Decide(cfg.mode, cfg.filter.threshold, cfg.filter.max_texts), batch_format="numpy",
                          batch_size=c.batch_size, zero_copy_batch=False)
