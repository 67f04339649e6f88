"""The CapFilt run config: YAML in, validated dataclasses out, one clear message per mistake."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from models.errors import CapfiltError
from models.precision import DEFAULT_PRECISION, PRECISIONS
from models.sampling import SamplingOptions
from pipeline import calibrate, dashboard, download, storage
from pipeline.dashboard import Dashboard
from pipeline.decode import MAX_PIXELS
from pipeline.fingerprint import HASH, HASH_SIZE, HASHES, hash_size_problem
from pipeline.polite import Politeness
from pipeline.safety import AddressPolicy
from pipeline.schema import DEFAULT_SCORER, Scoring
from pipeline.scorers.registry import KINDS as SCORERS
from pipeline.sources.registry import KINDS as SOURCES
from pipeline.storage import StorageSection

MODES = ("capfilt", "filter_only", "caption_only")  # BLIP Table 1: both, filter alone, captioner alone
FORMATS = ("auto", *SOURCES)
LAYOUTS = ("auto", "separate", "fused")
IMAGE_SIZE = 384  # BLIP's fine-tuned filter and captioner read 384 px images


@dataclass
class InputSection:
    # img2dataset output (webdataset or parquet format), or a URL list (parquet/csv/tsv with
    # `url` and `caption` columns) that img2dataset downloads first
    path: str = ""
    format: str = "auto"


KEEP = ("threshold", "top_k", "both")  # which synthetic captions of an image are kept (pipeline/stages.py Decide)


@dataclass
class CaptionerSection(SamplingOptions):
    """The captioner's checkpoint and how it writes (models/sampling.py: every option, its default
    and its checks), passed to Captioner.caption as they are; and which of its `num_captions`
    captions are kept: every one reaching the threshold (`threshold`, BLIP's CapFilt), the `top_k`
    best whatever their score (`top_k`), or the `top_k` best of those reaching it (`both`)."""
    checkpoint: str = ""
    keep: str = "threshold"
    top_k: int = 1

    @property
    def options(self) -> SamplingOptions:
        return SamplingOptions.of(self)


def optional(kind: type):
    """A field that may stay unset (None) or hold a `kind`: `build` checks the type of what is given."""
    return field(default=None, metadata={"type": kind})


@dataclass
class FilterSection:
    checkpoints: list[str] = field(default_factory=list)  # several: an ensemble (mean score)
    scorer: str = DEFAULT_SCORER  # the scorer that decides (pipeline/scorers): itm or itc
    threshold: float | None = optional(float)  # a text is kept when its score reaches it; unset: the scorer's default
    # more scorers, scored beside the deciding one and reported, never deciding: name -> threshold
    # (null: that scorer's default), e.g. {itc: 0.3}
    compare: dict = field(default_factory=dict)
    max_texts: int = 0  # keep at most this many texts per image, best first; 0 keeps all that pass
    # the output of `capfilt calibrate` (JSON): its threshold decides (leave `threshold` unset), and
    # the report shows its precision/recall curve
    calibration: str = ""

    def resolved(self, name: str, threshold: float | None) -> float | None:
        """A threshold as given, else scorer `name`'s default (None for a scorer not registered)."""
        if threshold is not None:
            return threshold
        return SCORERS[name].threshold if name in SCORERS else None

    @property
    def scoring(self) -> Scoring:
        """The run's scorers and thresholds, as the stages, the sinks and the report take them."""
        return Scoring(self.scorer, self.resolved(self.scorer, self.threshold),
                       tuple((n, self.resolved(n, t)) for n, t in self.compare.items()))


@dataclass
class DedupSection:
    """Copies of an image (pipeline/dedup.py): the same bytes (`exact`), or the same picture
    re-encoded, resized or slightly cropped (`near`: perceptual hashes within `max_distance` bits),
    within the run and against the kept rows of earlier versions of the dataset (`against`: their
    output folders). Each copy goes to rejected/ as a duplicate of the copy that stays. The hashes
    are computed in every run, deduplicated or not (pipeline/fingerprint.py)."""
    exact: bool = True
    near: bool = True
    hash: str = HASH  # the perceptual hash: dhash, phash or ahash (imagehash's)
    hash_size: int = HASH_SIZE  # the hash's side: hash_size**2 bits
    max_distance: int = 8  # bits of the hash_size**2 that may differ between near copies
    against: list[str] = field(default_factory=list)


@dataclass
class LineageSection:
    """Where the dataset stands among its versions: the bootstrap round that made it (unset: none)
    and the previous version's output folder, which the manifest and the card diff it against."""
    round: int | None = optional(int)
    previous: str = ""


@dataclass
class RunCompute:
    batch_size: int = 16
    rows_per_block: int = 256  # the unit of parallel work and of resuming
    captioner_actors: list[int] = field(default_factory=lambda: [1, 1])  # [min, max]
    filter_actors: list[int] = field(default_factory=lambda: [1, 1])
    num_gpus: float = 0.0  # per model actor (0.5: two actors share a GPU)
    actor_cpus: float = 0.5  # per model actor: leave CPU for the read and decode tasks
    precision: str = DEFAULT_PRECISION  # auto: bf16 where the device runs it natively (models/precision.py), else fp32
    rows_per_shard: int = 10000
    max_image_pixels: int = MAX_PIXELS  # larger images fail their row (decompression bombs)
    # separate: a captioner pool and a filter pool (scaled apart; the GPU layout); fused: one pool
    # of actors holding both models, as many as the two pools together (best on CPU, where two
    # pools split the cores and the pipeline runs at the captioner's pace); auto: fused without GPUs
    layout: str = "auto"
    dashboard: Dashboard = field(default_factory=Dashboard)  # Ray's dashboard on 127.0.0.1, for a Ray the run starts


@dataclass
class DownloadSection:  # for URL-list inputs
    image_size: int = IMAGE_SIZE
    timeout: float = download.TIMEOUT
    processes: int = download.PROCESSES
    threads: int = download.THREADS
    shard_size: int = download.SHARD_SIZE
    # hosts, addresses or CIDRs reachable although not public (loopback, private, link-local);
    # [] = public addresses only. The demo and the tests allow 127.0.0.1 by name.
    allow_hosts: list[str] = field(default_factory=lambda: list(download.DEFAULT_ALLOW_HOSTS))
    max_bytes: int = download.MAX_BYTES  # body cap per URL
    # per-host limits and the retries of 429/503 answers (pipeline/polite.py holds the defaults)
    politeness: Politeness = field(default_factory=Politeness)


@dataclass
class RunConfig:
    input: InputSection = field(default_factory=InputSection)
    output: str = ""
    mode: str = "capfilt"
    captioner: CaptionerSection = field(default_factory=CaptionerSection)
    filter: FilterSection = field(default_factory=FilterSection)
    compute: RunCompute = field(default_factory=RunCompute)
    download: DownloadSection = field(default_factory=DownloadSection)
    dedup: DedupSection = field(default_factory=DedupSection)
    lineage: LineageSection = field(default_factory=LineageSection)
    # object-store endpoint, retries and timeouts (never credentials: those come from the environment)
    storage: StorageSection = field(default_factory=StorageSection)
    image_size: int = IMAGE_SIZE
    seed: int = 0

    @property
    def fused(self) -> bool:
        """One actor pool running captioner and filter together (capfilt mode only)."""
        layout = self.compute.layout
        if layout == "auto":
            layout = "separate" if self.compute.num_gpus else "fused"
        return self.mode == "capfilt" and layout == "fused"

    def to_dict(self) -> dict:
        """Every value; the thresholds as the run uses them (an unset one as its scorer's default)."""
        values = dataclasses.asdict(self)
        f = self.filter
        values["filter"]["threshold"] = f.resolved(f.scorer, f.threshold)
        values["filter"]["compare"] = {n: f.resolved(n, t) for n, t in f.compare.items()}
        return values


def _type_ok(default, value) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)) and not isinstance(value, bool):
        return isinstance(value, (int, float)) if isinstance(default, float) else isinstance(value, int)
    return isinstance(value, type(default))


class Mistakes(list):
    """Messages of a config's structural mistakes, and the dotted fields they concern (so that the
    value checks that follow do not report a field again that kept its default)."""

    def __init__(self):
        super().__init__()
        self.fields: set[str] = set()

    def add(self, field: str | None, message: str) -> None:
        self.append(message)
        if field is not None:
            self.fields.add(field)


def listing(header: str, problems: list[str]) -> CapfiltError:
    """One error naming every problem, one per line."""
    return CapfiltError(f"{header}:\n  - " + "\n  - ".join(problems))


def build(cls, values, where: str, mistakes: list[str] | None = None):
    """A dataclass from a mapping. Unknown keys and wrong types are errors naming where they are;
    every one of them is found, not only the first: they are added to `mistakes` when it is given
    (the field then keeps its default, so that the value checks can still run), else raised
    together as one CapfiltError."""
    found = Mistakes() if mistakes is None else mistakes
    obj = _build(cls, values, where, "", found)
    if mistakes is None and found:
        raise listing("the config has mistakes", found)
    return obj


def _build(cls, values, where: str, dotted: str, mistakes: list[str]):
    def add(field: str | None, message: str) -> None:
        mistakes.add(field, message) if isinstance(mistakes, Mistakes) else mistakes.append(message)

    if not isinstance(values, dict):
        add(dotted, f"{where} must be a mapping, got {type(values).__name__}")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields), key=str)
    if unknown:
        add(None, f"unknown key(s) {unknown} in {where}; known: {sorted(fields)}")  # the known fields stand
    kwargs = {}
    for name, value in values.items():
        if name not in fields:
            continue
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        here = f"{dotted}.{name}" if dotted else name
        kind = f.metadata.get("type")  # an optional field (default None) of this type
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value, f"{where}.{name}", here, mistakes)
        elif kind is not None and value is not None and not _type_ok(kind(), value):
            add(here, f"{where}.{name} must be a {kind.__name__}, got {value!r}")
            continue
        elif kind is None and not _type_ok(default, value):
            add(here, f"{where}.{name} must be a {type(default).__name__}, got {value!r}")
            continue  # the default stands in, so the value checks still run
        kwargs[name] = value
    return cls(**kwargs)


def validate(cfg: RunConfig, check_paths: bool = True, mistakes: list[str] = ()) -> RunConfig:
    """Every mistake found before anything starts, each in its own words, in one message: the
    structural `mistakes` that `build` collected, the values, and (with `check_paths`) the input,
    the checkpoints (kind, role, prompt length) and the output (pipeline/preflight.py)."""
    problems = []
    if not cfg.input.path:
        problems.append("input.path is empty: give an img2dataset folder, a Parquet file or a URL list")
    if not cfg.output:
        problems.append("output is empty: give a folder (local path or fsspec URL) for the results")
    if cfg.mode not in MODES:
        problems.append(f"mode={cfg.mode!r}: use one of {MODES}")
    if cfg.input.format not in FORMATS:
        problems.append(f"input.format={cfg.input.format!r}: use one of {FORMATS}")
    problems += _calibration_problems(cfg.filter)
    problems += _scorer_problems(cfg.filter)
    problems += cfg.captioner.options.problems("captioner")
    problems += _dedup_problems(cfg.dedup)
    if cfg.captioner.keep not in KEEP:
        problems.append(f"captioner.keep={cfg.captioner.keep!r}: use one of {KEEP}")
    if cfg.captioner.top_k < 1:
        problems.append(f"captioner.top_k={cfg.captioner.top_k} must be at least 1")
    elif cfg.captioner.keep != "threshold" and cfg.captioner.top_k > cfg.captioner.num_captions:
        problems.append(f"captioner.top_k={cfg.captioner.top_k} keeps more captions than the "
                        f"captioner.num_captions={cfg.captioner.num_captions} it writes")
    if cfg.filter.max_texts < 0:
        problems.append(f"filter.max_texts={cfg.filter.max_texts} must be >= 0 (0 keeps every text that passes)")
    if cfg.compute.batch_size < 1 or cfg.compute.rows_per_block < 1:
        problems.append("compute.batch_size and compute.rows_per_block must be at least 1")
    try:
        AddressPolicy(tuple(cfg.download.allow_hosts))
    except CapfiltError as err:
        problems.append(f"download.allow_hosts: {err}")
    problems += cfg.download.politeness.problems()
    problems += dashboard.problems(cfg.compute.dashboard)
    if cfg.compute.precision not in PRECISIONS:
        problems.append(f"compute.precision={cfg.compute.precision!r}: use one of {PRECISIONS}")
    if cfg.compute.layout not in LAYOUTS:
        problems.append(f"compute.layout={cfg.compute.layout!r}: use one of {LAYOUTS}")
    for name in ("captioner_actors", "filter_actors"):
        pool = getattr(cfg.compute, name)
        if len(pool) != 2 or not 1 <= pool[0] <= pool[1]:
            problems.append(f"compute.{name}={pool} must be [min, max] with 1 <= min <= max")
    needs_captioner = cfg.mode in ("capfilt", "caption_only")
    needs_filter = cfg.mode in ("capfilt", "filter_only")
    if needs_captioner and not cfg.captioner.checkpoint:
        problems.append(f"mode {cfg.mode} needs captioner.checkpoint")
    if needs_filter and not cfg.filter.checkpoints:
        problems.append(f"mode {cfg.mode} needs filter.checkpoints (one, or several for an ensemble)")
    storage_problems = storage.problems(cfg.storage)
    problems += storage_problems
    if not storage_problems:
        storage.configure(cfg.storage)  # this process's s3:// defaults: the paths below are checked with them
    if check_paths and not storage_problems:
        from pipeline import preflight  # reads checkpoints with models.probe: timm and more, only when paths are checked

        problems += preflight.problems(cfg)
    bad = getattr(mistakes, "fields", set())  # fields that kept their default: their value is not the user's
    problems = list(mistakes) + [p for p in problems if not any(_about(p, f) for f in bad)]
    if problems:
        raise listing("the config has mistakes", problems)
    return cfg


def _dedup_problems(d: DedupSection) -> list[str]:
    out = [] if d.hash in HASHES else [f"dedup.hash={d.hash!r}: use one of {tuple(HASHES)}"]
    why = hash_size_problem(d.hash_size)
    if why:
        out.append(f"dedup.hash_size {why}")
    elif not 0 <= d.max_distance < d.hash_size ** 2 // 2:
        out.append(f"dedup.max_distance={d.max_distance} must be within [0, {d.hash_size ** 2 // 2}) "
                   f"(bits of the {d.hash_size ** 2}-bit hash; unrelated images differ in about half)")
    if any(not isinstance(p, str) or not p for p in d.against):
        out.append(f"dedup.against must list earlier versions' output folders, got {d.against!r}")
    return out


def _calibration_problems(f: FilterSection) -> list[str]:
    """A calibrated threshold: read from `capfilt calibrate`'s output, it becomes filter.threshold."""
    if not f.calibration:
        return []
    try:
        tau = float(calibrate.read(f.calibration, f.scorer, f.checkpoints)["threshold"])
    except CapfiltError as err:
        return [str(err)]
    if f.threshold is not None and f.threshold != tau:
        return [f"filter.threshold={f.threshold} and filter.calibration (threshold {tau:g}) both say what decides: "
                "leave filter.threshold unset to take the calibrated one, or drop filter.calibration"]
    f.threshold = tau
    return []


def _scorer_problems(f: FilterSection) -> list[str]:
    """The deciding scorer and the compared ones: registered, each threshold within its scores' range."""
    out = []
    if f.scorer not in SCORERS:
        out.append(f"filter.scorer={f.scorer!r}: use one of {tuple(SCORERS)}")
    elif f.threshold is not None:
        low, high = SCORERS[f.scorer].bounds
        if not low <= f.threshold <= high:
            out.append(f"filter.threshold={f.threshold} must be within [{low:g}, {high:g}] "
                       f"(the range of {SCORERS[f.scorer].label})")
    for name, threshold in f.compare.items():
        if name not in SCORERS:
            out.append(f"filter.compare.{name}: no scorer of that name; use one of {tuple(SCORERS)}")
        elif name == f.scorer:
            out.append(f"filter.compare.{name}: {name} decides already (filter.scorer); compare other scorers")
        elif threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            out.append(f"filter.compare.{name} must be a threshold (a number, or null for the scorer's default), "
                       f"got {threshold!r}")
        elif threshold is not None and not SCORERS[name].bounds[0] <= threshold <= SCORERS[name].bounds[1]:
            low, high = SCORERS[name].bounds
            out.append(f"filter.compare.{name}={threshold} must be within [{low:g}, {high:g}] "
                       f"(the range of {SCORERS[name].label})")
    return out


def _about(problem: str, field: str) -> bool:
    """Whether a value problem's message is about `field` (it starts with the field's dotted name)."""
    if not field:  # the whole config was not a mapping: every value is a default
        return True
    return problem.startswith(field) and not problem[len(field):len(field) + 1].isalnum()


def read_yaml(path: str | Path) -> dict:
    """A config file's mapping, loaded safely; a missing or malformed file is one clear error."""
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise CapfiltError(f"config {path} does not exist") from None
    except yaml.YAMLError as err:
        raise CapfiltError(f"config {path} is not valid YAML: {err}") from None


def load(path: str | Path, check_paths: bool = True) -> RunConfig:
    """The run config in a YAML file; every mistake of it (structure, values, paths) in one message."""
    mistakes = Mistakes()
    cfg = build(RunConfig, read_yaml(path), str(path), mistakes)
    return validate(cfg, check_paths, mistakes)
