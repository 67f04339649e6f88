"""A run's identity, and what a rerun may do with the work already under its output.

The identity of a run is what decides its outputs:
- `inputs`: what the user gave, with checksums, as its source describes it (pipeline/sources): a
  URL list (its path, sha256 and size), or the shards of an img2dataset folder (sha256 of each
  row file, size and checksum of each tar);
- `models`: each role's checkpoint and the sha256 of its weights;
- `params`: every config value (the deciding and the compared scorers with their thresholds among
  them) but the output, the storage settings (where data lives, not what is made of it),
  RESOURCES (how fast it is made: captions are keyed by row, models/streams.py) and the paths
  already in `inputs` and `models`;
- `precision`: the precision the models run in (`compute.precision: auto` resolved on this machine);
- `version`: the project's version.

It is computed before Ray starts and written to `OUT/.capfilt/run.json` before anything else;
`manifest.json` records it too. A rerun into the same output resumes the partial work, or reuses
the finished dataset, only under the same identity. Anything else is refused with one message
naming what changed, unless the run is asked to `restart`: the old work and outputs are then
discarded (the download cache is kept when its own identity, the URL list and the download
settings, is the same; img2dataset's incremental mode would otherwise keep stale shards).

`OUT/.capfilt/` is the run's working state: run.json, the download cache (download/, with
download.json), and while a run goes, staging/ and checkpoint/. It is not part of the dataset;
a dot folder, so glob, pyarrow and Ray readers of OUT leave it out.
"""
from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import tomllib
from importlib import metadata
from pathlib import Path

import fsspec

from models import loaders
from pipeline import manifest as mf
from pipeline import storage
from pipeline.checksum import sha256
from pipeline.graph import model_precision
from pipeline.outputs import OutputRoot
from pipeline.sources.base import Source

log = logging.getLogger(__name__)

FORMAT = "capfilt-run/1"
WORK = ".capfilt"
RUN, DOWNLOAD_RECORD = "run.json", "download.json"
DOWNLOAD, STAGING, CHECKPOINT = "download", "staging", "checkpoint"
# how a run is carried out, not what it writes: a resume may change them
RESOURCES = ("compute.batch_size", "compute.rows_per_block", "compute.captioner_actors", "compute.filter_actors",
             "compute.actor_cpus", "compute.layout", "download.processes", "download.threads",
             "download.politeness.host_concurrency", "download.politeness.host_rate", "compute.dashboard")
# what a finished run published (the manifest first: without it the output reads as incomplete)
PUBLISHED = (mf.MANIFEST, "shards", "rejected", "report", "README.md", "blip_json.json", "_finalize_tmp")
LEGACY = ("_staging", "_checkpoint", "_download")  # the work folders of versions before identities
RESTART_HINT = "`capfilt run --restart` (in Python, `run(cfg, restart=True)`)"


def join(root: str, *names: str) -> str:
    return "/".join([root.rstrip("/"), *names])


def work(out: str, *names: str) -> str:
    """A path in the output's working state (OUT/.capfilt/...)."""
    return join(out, WORK, *names)


def project_version() -> str:
    try:
        return metadata.version("capfilt")
    except metadata.PackageNotFoundError:  # a checkout run in place: the version pyproject.toml declares
        return tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]


def describe_models(cfg) -> list[dict]:
    """Each role's checkpoint and the sha256 of its weights: of the one file its kind names
    (models/loaders.py weight_files), or of the list of each file's name and sha256 where it names
    several; None where no kind reads the checkpoint."""
    roles = []
    if cfg.mode in ("capfilt", "caption_only"):
        roles.append(("captioner", cfg.captioner.checkpoint))
    if cfg.mode in ("capfilt", "filter_only"):
        roles += [("filter", c) for c in cfg.filter.checkpoints]
    out = []
    for role, path in roles:
        with storage.guard(f"reading the {role} checkpoint", path):
            out.append({"role": role, "checkpoint": path, "sha256": weights_sha256(loaders.weight_files(path))})
    return out


def weights_sha256(files: list[str]) -> str | None:
    if len(files) <= 1:
        return sha256(files[0]) if files else None
    listing = "".join(f"{posixpath.basename(f)} {sha256(f)}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def params(cfg) -> dict:
    """The parameters a manifest records: every config value but the output and the storage settings."""
    return {k: v for k, v in cfg.to_dict().items() if k not in ("output", "storage")}


def _plain(value):
    return json.loads(json.dumps(value, default=str))  # as it reads back from run.json or the manifest


def compute(cfg, source: Source) -> dict:
    """The identity of running `cfg` on its input, read by `source` (pipeline/sources)."""
    shaping = params(cfg)
    # paths with their checksums are in inputs and models: said once, so a change is named once
    shaping["input"].pop("path")
    shaping["captioner"].pop("checkpoint")
    shaping["filter"].pop("checkpoints")
    for name in RESOURCES:
        *sections, field = name.split(".")
        node = shaping
        for section in sections:
            node = node.get(section, {})
        node.pop(field, None)
    inputs = source.describe(cfg.input.path)
    # the precision the models run in, as this machine resolves `auto`: bf16 and fp32 write other
    # captions, so a run resumed on a machine of the other kind is another run
    raw = {"format": FORMAT, "version": project_version(), "inputs": inputs, "models": describe_models(cfg),
           "params": shaping, "precision": model_precision(cfg)}
    return _plain(mf.scrub(raw)[0])  # as the manifest will hold it: never a credential


def download_identity(identity: dict) -> dict:
    """What the download cache of a URL-list run depends on: the list, the download settings, the version."""
    return {"version": identity["version"], "url_list": identity["inputs"][0],
            "download": identity["params"].get("download", {})}


def digest(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def for_manifest(identity: dict) -> dict:
    """What the manifest keeps of the identity beside its own inputs and models."""
    return {"format": identity["format"], "version": identity["version"], "params": identity["params"],
            "precision": identity["precision"], "sha256": digest(identity)}


def from_manifest(m: dict) -> dict | None:
    """The identity of a finished run, from its manifest (None for one made before identities)."""
    record = m.get("identity")
    if not isinstance(record, dict):
        return None
    return {"format": record.get("format"), "version": record.get("version"), "inputs": m.get("inputs"),
            "models": m.get("models"), "params": record.get("params"), "precision": record.get("precision")}


def read_json(root: OutputRoot, rel: str) -> dict | None:
    path = root.path(rel)
    if not root.fs.exists(path):
        return None
    try:
        with root.fs.open(path, "rb") as fh:
            return json.load(fh)
    except ValueError:
        return {}  # unreadable: another identity than any real one


def write_json(root: OutputRoot, rel: str, value: dict) -> None:
    with root.atomic(rel) as sink:
        sink.write((json.dumps(value, indent=2, sort_keys=True) + "\n").encode())
