"""One CapFilt run: (download) -> the Ray Data graph -> staging Parquet -> sinks and manifest.

Resumable under one identity (pipeline/identity.py, pipeline/rerun.py): the download is
img2dataset's incremental mode; the graph runs under Ray Data's job checkpointing keyed on
`key`, so a rerun after a kill processes only rows it has not written; the sinks rebuild the
outputs from the staging files and write the manifest last. The working state lives in
OUT/.capfilt/ (run.json, the download cache, staging and the job checkpoint while it runs).
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

import fsspec
import pyarrow.parquet as pq

from models.errors import CapfiltError
from models.precision import cpu_summary
from pipeline import graph
from pipeline import identity as ident
from pipeline import calibrate, dashboard, rerun, storage
from pipeline.config import RunConfig, validate
from pipeline.report import write_report
from pipeline.schema import STATUSES
from pipeline.sinks import finalize
from pipeline.sources.registry import KINDS as SOURCES
from pipeline.sources.registry import pick

log = logging.getLogger(__name__)
# A progress line of the step running, for a bootstrap's console (workflows/console.py reads the
# record attribute; pipeline/ cannot import workflows/)
PROGRESS = {"progress": True}
# what the manifest's lineage keeps of a calibration (pipeline/calibrate.py calibrate)
CALIBRATION = ("scorer", "target_precision", "threshold", "pairs", "fit_pairs", "held_out_pairs", "fit", "held_out", "curve")


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


class Progress(threading.Thread):
    """Prints rows done, kept, dropped, failed and images/s from the staging files as they land."""

    def __init__(self, staging: str, rows_in: int, every: float = 10.0):
        super().__init__(daemon=True)
        self.staging, self.rows_in, self.every = staging, rows_in, every
        self.stop = threading.Event()
        self.seen: dict[str, dict] = {}
        self.start_time = time.perf_counter()
        with storage.guard("reading the staging files in", staging):
            self.before = sum(self.counts().values())  # rows staged by an earlier, interrupted run

    def counts(self) -> dict:
        fs, root = fsspec.core.url_to_fs(self.staging)
        for f in fs.glob(_join(root, "*.parquet")) if fs.exists(root) else []:
            if f not in self.seen:
                try:
                    status = pq.read_table(f, columns=["status"], filesystem=fs).column("status").to_pylist()
                except Exception:  # a file being written: read it next time
                    continue
                self.seen[f] = {s: status.count(s) for s in STATUSES}
        return {s: sum(c[s] for c in self.seen.values()) for s in STATUSES}

    def report(self) -> None:
        c = self.counts()
        done = sum(c.values())
        rate = (done - self.before) / max(1e-9, time.perf_counter() - self.start_time)
        log.info("rows %d/%d  kept %d  dropped %d  failed %d  %.1f images/s", done, self.rows_in,
                 c["kept"], c["dropped"], c["failed"], rate, extra=PROGRESS)

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.report()
            except Exception as err:  # noqa: BLE001 - progress is a courtesy: a storage hiccup must not print a traceback
                log.debug("progress: cannot read %s: %s", self.staging, storage.cause(err) or err)


def environment(cfg: RunConfig) -> dict:
    """Where the models ran, for the manifest and the report: a fact of the machine, not a parameter."""
    return {"device": graph.model_device(cfg), "precision": graph.model_precision(cfg), "cpu": cpu_summary()}


def run(cfg: RunConfig, progress_every: float = 10.0, restart: bool = False) -> dict:
    """Run CapFilt as `cfg` says; returns the manifest.

    Work already in `cfg.output` is resumed (partial) or reused (finished) only when it has this
    run's identity (pipeline/identity.py); anything else there is refused, unless `restart`
    discards it first (pipeline/rerun.py)."""
    import ray
    import ray.data
    from ray.data.checkpoint import CheckpointConfig

    validate(cfg)  # also makes cfg.storage this process's s3:// defaults
    out = cfg.output.rstrip("/")
    if "://" not in out:  # Ray's job checkpoint wants an absolute path or a URL
        out = os.path.abspath(out)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with storage.guard("reading the input", cfg.input.path):
        source = pick(cfg.input.path, cfg.input.format)
        identity = ident.compute(cfg, source)  # before anything is written: what this run is
    with storage.guard("reading the earlier run in", out):
        done = rerun.settle(out, identity, restart)
    if done is not None:
        return done
    shards, reader, derived = cfg.input.path, source, None
    if source.fetched_as:  # a URL list: downloaded first, into the run's download cache
        with storage.guard("preparing the download cache in", out):
            shards = rerun.prepare_download(out, ident.download_identity(identity))
        with storage.guard(f"fetching the {source.name} input into", shards):
            shards = source.fetch(cfg.input.path, shards, cfg.download)
        reader = SOURCES[source.fetched_as]
        timings["download_s"] = time.perf_counter() - t0
    with storage.guard("reading the input shards in", shards):
        rows_in = reader.count(shards)
        if source.fetched_as:  # made from the user's input, listed apart from it
            derived = {"download": reader.describe(shards)}

    _ray_init(cfg)
    staging = ident.work(out, ident.STAGING)
    ctx = ray.data.DataContext.get_current()
    ctx.checkpoint_config = CheckpointConfig(id_column="key", checkpoint_path=ident.work(out, ident.CHECKPOINT),
                                             override_filesystem=storage.arrow_filesystem(out))
    progress = Progress(staging, rows_in, progress_every)
    progress.start()
    t1 = time.perf_counter()
    try:
        with storage.guard(f"the graph, reading {shards} and writing", staging), _ray_data_traces_to_file():
            graph.build(cfg, shards, reader).write_parquet(staging, filesystem=storage.arrow_filesystem(staging))
    finally:
        progress.stop.set()
        ctx.checkpoint_config = None
    with storage.guard("reading the staging files in", staging):
        progress.report()
        timings["graph_s"] = time.perf_counter() - t1
        written = _staged_keys(staging)
    if written != rows_in:
        raise CapfiltError(f"the graph wrote {written} of {rows_in} input rows: run the same command again to resume")
    # A kill between a block's write and its checkpoint can stage its rows twice; they are the
    # same rows (a row's captions are drawn from its key alone: models/streams.py), so the first
    # copy stands.
    with storage.guard("writing the outputs to", out):
        manifest = finalize(staging, out, rows_per_shard=cfg.compute.rows_per_shard, params=ident.params(cfg),
                            scoring=cfg.filter.scoring, inputs=identity["inputs"], models=identity["models"],
                            timings=timings,
                            identity=ident.for_manifest(identity), derived=derived, duplicates="first",
                            environment=environment(cfg), dedup=cfg.dedup, lineage=lineage(cfg, identity))
    with storage.guard("removing the staging files in", staging):
        _remove(staging)  # the manifest now marks the run complete; staging would only double the disk
        _remove(ident.work(out, ident.CHECKPOINT))
    try:  # the data is complete and published: a failed report must not fail the run
        write_report(out, scoring=cfg.filter.scoring)
    except Exception:
        log.exception("the run's outputs under %s are complete, but its report could not be written", out)
    return manifest


def lineage(cfg: RunConfig, identity: dict) -> dict:
    """What made and kept this version's texts, and where it stands among the versions."""
    models = identity["models"]
    calibrated = {}
    if cfg.filter.calibration:  # what chose the threshold: the report shows its curve
        record = calibrate.read(cfg.filter.calibration, cfg.filter.scorer, cfg.filter.checkpoints)
        calibrated = {"calibration": {"path": cfg.filter.calibration, **{k: record.get(k) for k in CALIBRATION}}}
    return {"round": cfg.lineage.round, "previous": cfg.lineage.previous or None, **calibrated,
            "captioner_sha256": next((m["sha256"] for m in models if m["role"] == "captioner"), None),
            "filter_sha256": [m["sha256"] for m in models if m["role"] == "filter"],
            "mode": cfg.mode, "scorer": cfg.filter.scoring.scorer, "threshold": cfg.filter.scoring.threshold,
            "keep": {"captions": cfg.captioner.keep, "top_k": cfg.captioner.top_k}}


class _NoTraces(logging.Filter):
    """Keeps Ray Data's error tracebacks off the console (its log file keeps them): the failure
    reaches the user once, as the exception `run` raises."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        return not (record.exc_info or str(record.msg).startswith(("Exception occurred in", "Full stack trace")))


@contextlib.contextmanager
def _ray_data_traces_to_file():
    consoles = [h for h in logging.getLogger("ray.data").handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    quiet = _NoTraces()
    for h in consoles:
        h.addFilter(quiet)
    try:
        yield
    finally:
        for h in consoles:
            h.removeFilter(quiet)


def _ray_init(cfg: RunConfig) -> None:
    """Start Ray here, or join the cluster of a `ray job submit` (RAY_ADDRESS), with this process's
    storage settings in the workers' environment (endpoint, retries; credentials stay in each
    node's own environment). A Ray started here has the dashboard `compute.dashboard` asks for."""
    import ray

    env = storage.worker_env()
    if ray.is_initialized():
        if storage.endpoint() and not any(os.environ.get(n) for n in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")):
            log.warning("Ray was started before this run: its workers reach storage.endpoint_url only if their "
                        "environment names it (AWS_ENDPOINT_URL, or %s in the job's runtime env)", storage.ENV)
        return
    if os.environ.get("RAY_ADDRESS"):  # a submitted job: the cluster decides the resources
        # a FSSPEC_S3 of the job's own runtime env stands (Ray refuses two values for one variable)
        ray.init(runtime_env=None if storage.ENV_GIVEN or not env else {"env_vars": env}, log_to_driver=False)
        dashboard.joined(cfg.compute.dashboard)
        return
    # A local Ray inherits this process's environment, FSSPEC_S3 included (storage.configure).
    # Twice the cores as logical CPUs: with the model actors holding their share, Ray Data's
    # resource budget otherwise starves the read and decode tasks of a small machine (a resumed
    # run hung here); the actors pin their torch threads, so the cores are not oversubscribed.
    context = ray.init(**ray_init_kwargs(cfg))
    dashboard.announce(context, cfg.compute.dashboard)


def ray_init_kwargs(cfg: RunConfig) -> dict:
    """The arguments of the local `ray.init` a run starts Ray with."""
    return dashboard.init_kwargs(2 * (os.cpu_count() or 1), cfg.compute.dashboard, log_to_driver=False)


def _remove(path: str) -> None:
    fs, root = fsspec.core.url_to_fs(path)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _staged_keys(staging: str) -> int:
    """Distinct keys in the staging files (a kill between a write and its checkpoint can repeat rows)."""
    fs, root = fsspec.core.url_to_fs(staging)
    keys: set[str] = set()
    for f in fs.glob(_join(root, "*.parquet")):
        keys.update(pq.read_table(f, columns=["key"], filesystem=fs).column("key").to_pylist())
    return len(keys)
