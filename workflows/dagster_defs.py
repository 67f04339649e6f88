"""Dagster definitions (one code location) for BLIP's bootstrapping loop.

    web_data -> round0_pretrain -> round0_captioner, round0_filter -> round0_eval
             -> round0_capfilt -> round1_pretrain -> ... -> round{K-1}_eval

Assets carry metadata (counts, keep rates, eval figures); asset checks guard each round (counts
reconcile, keep rate within bounds, a model is promoted only when its evaluation is not worse).
A schedule reruns CapFilt over the web with the promoted captioner and filter, and a sensor
CapFilts only newly arrived web shards, each time as a new dataset version with its manifest.

`CAPFILT_BOOTSTRAP_CONFIG=FILE dagster dev -f workflows/dagster_defs.py` shows them; `capfilt
bootstrap` materializes the same assets in-process. An embedding (the demo: demo/dagster_defs.py)
builds the same assets with its own injection points (workflows/rounds.py Embedding).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import dagster as dg

from pipeline import manifest as mf
from workflows import console
from workflows.launch import launcher
from workflows import rounds as R
from workflows.bootstrap_config import BootstrapConfig, load
from workflows.rounds import Embedding

PROMOTED = "promoted.json"
JOB = "bootstrap"  # the in-process run materialize_all starts

log = logging.getLogger(__name__)


def promoted(cfg: BootstrapConfig) -> dict | None:
    path = Path(cfg.out) / PROMOTED
    return json.loads(path.read_text()) if path.exists() else None


def _score(figures: dict) -> float:
    """What promotion compares: BLIP's mean recall (both ways, R@1/5/10)."""
    return float(figures["r_mean"])


def round_assets(cfg: BootstrapConfig, embedding: Embedding | None = None) -> tuple[list, list]:
    embedding = embedding or Embedding()
    assets, checks = [], []

    @dg.asset(name="web_data", description="web shards, human captions and the test split")
    def web_data(context) -> dict:
        if embedding.steps:  # the embedding shows its own steps
            data = embedding.prepare(cfg)
        else:
            with console.step("data") as s:
                data = embedding.prepare(cfg)
                s.done(f"web {data['web']}")
        context.add_output_metadata({k: v if isinstance(v, (int, float)) else str(v) for k, v in data.items()})
        return data

    assets.append(web_data)
    for k in range(cfg.rounds):
        assets += _one_round(cfg, k)
        if k < cfg.rounds - 1:
            assets.append(_capfilt_asset(cfg, k, embedding))
            checks.append(_capfilt_check(cfg, k))
        checks.append(_promotion_check(cfg, k))
    return assets, checks


def _one_round(cfg: BootstrapConfig, k: int) -> list:
    ins = {"data": dg.AssetIn("web_data")}
    if k > 0:
        ins["cleaned"] = dg.AssetIn(f"round{k - 1}_capfilt")

    # Each asset returns a dg.Output (value and metadata together): an asset that launches its job
    # through dagster-ray's Pipes client (workflows/launch.py) must, as Pipes makes Dagster take
    # exactly the events the function gives
    def pretrain_round(context, data: dict, cleaned: dict | None) -> dg.Output:
        shards = data["web"] if k == 0 else cleaned["output"]
        with console.step(title(f"round{k}_pretrain")) as s:
            model = R.pretrain(cfg, k, data, shards, launcher(cfg.launch, context))
            history = json.loads((Path(model) / "history.json").read_text())
            s.done(trained(history))
        last = history["history"][-1] if history["history"] else {}
        meta = {"model": model, "steps": history["steps"], "shards": shards,
                **{k2: float(v) for k2, v in last.items() if k2.startswith("loss")}}
        if cfg.train.model.vit_init:
            meta["vit_init"] = cfg.train.model.vit_init
        return dg.Output(model, metadata=meta)

    described = dict(name=f"round{k}_pretrain", ins=ins,
                     description=f"round {k}: MED pre-trained from scratch on "
                                 + ("the raw web + human captions" if k == 0 else f"round {k - 1}'s CapFilt output + human captions"))
    if k == 0:
        @dg.asset(**described)
        def pretrain(context, data: dict) -> dg.Output[str]:
            return pretrain_round(context, data, None)
    else:
        @dg.asset(**described)
        def pretrain(context, data: dict, cleaned: dict) -> dg.Output[str]:
            return pretrain_round(context, data, cleaned)

    def finetuned(task: str):
        name = f"round{k}_{'captioner' if task == 'caption' else 'filter'}"

        @dg.asset(name=name,
                  ins={"data": dg.AssetIn("web_data"), "pretrained": dg.AssetIn(f"round{k}_pretrain")},
                  description=f"round {k}: the {'captioner (LM)' if task == 'caption' else 'filter (ITC + ITM)'} "
                              "fine-tuned on human captions")
        def asset(context, data: dict, pretrained: str) -> dg.Output[str]:
            with console.step(title(name)) as s:
                model = R.finetune(cfg, k, data, pretrained, task, launcher(cfg.launch, context))
                s.done(trained(json.loads((Path(model) / "history.json").read_text())))
            return dg.Output(model, metadata={"model": model})
        return asset

    @dg.asset(name=f"round{k}_eval", ins={"data": dg.AssetIn("web_data"), "captioner": dg.AssetIn(f"round{k}_captioner"),
                                          "filter_model": dg.AssetIn(f"round{k}_filter")},
              description=f"round {k}: retrieval R@1/5/10 (filter) and BLEU-4/CIDEr (captioner) on the test split; "
                          "promotes the round's captioner and filter when not worse than the promoted ones")
    def evaluate(context, data: dict, captioner: str, filter_model: str) -> dg.Output[dict]:
        with console.step(title(f"round{k}_eval")) as s:
            figures = R.evaluate(cfg, k, data, filter_model, captioner, launcher(cfg.launch, context))
            s.done(f"TR R@1 {figures['txt_r1']:.1f}  IR R@1 {figures['img_r1']:.1f}  CIDEr {figures['cider']:.3f}")
        best = promoted(cfg)
        promote = best is None or best["round"] == k or _score(figures) >= _score(best["figures"])
        if promote:
            (Path(cfg.out) / PROMOTED).write_text(json.dumps(
                {"round": k, "captioner": captioner, "filter": filter_model, "figures": figures}, indent=1))
        return dg.Output({"round": k, "captioner": captioner, "filter": filter_model, "eval": figures, "promoted": promote},
                         metadata={**{n: float(v) for n, v in figures.items() if isinstance(v, (int, float))},
                                   "promoted": promote})

    return [pretrain, finetuned("caption"), finetuned("filter"), evaluate]


def _capfilt_asset(cfg: BootstrapConfig, k: int, embedding: Embedding):
    @dg.asset(name=f"round{k}_capfilt", ins={"data": dg.AssetIn("web_data"), "captioner": dg.AssetIn(f"round{k}_captioner"),
                                             "filter_model": dg.AssetIn(f"round{k}_filter")},
              description=f"round {k}: the web CapFilted with round {k}'s captioner and filter (feeds round {k + 1})")
    def capfilt(context, data: dict, captioner: str, filter_model: str) -> dg.Output[dict]:
        with console.step(title(f"round{k}_capfilt")) as s:
            out = R.capfilt(cfg, data, captioner, filter_model, f"round{k}_capfilt", embedding=embedding, round=k,
                            launch=launcher(cfg.launch, context))
            c = out["counts"]
            s.done(f"{c['rows_in']} rows in  {c['kept']} kept  {c['dropped']} dropped  {c['failed']} failed")
        return dg.Output({"output": out["output"], "counts": c},
                         metadata={"output": out["output"], "rows_in": c["rows_in"], "kept": c["kept"],
                                   "dropped": c["dropped"], "failed": c["failed"], "duplicates": c.get("duplicates", 0),
                                   "keep_rate": c["kept"] / max(1, c["rows_in"])})
    return capfilt


def _capfilt_check(cfg: BootstrapConfig, k: int):
    @dg.asset_check(asset=f"round{k}_capfilt", name="counts_reconcile_and_keep_rate_in_bounds", blocking=True)
    def check() -> dg.AssetCheckResult:
        c = mf.read(str(Path(cfg.out) / f"round{k}_capfilt"))["counts"]
        rate = c["kept"] / max(1, c["rows_in"] - c["failed"])
        reconciled = c["rows_in"] == c["kept"] + c["dropped"] + c["failed"] + c.get("duplicates", 0)
        lo, hi = cfg.checks.min_keep_rate, cfg.checks.max_keep_rate
        if not (reconciled and lo <= rate <= hi):  # it blocks the next round: the person must know why
            log.warning("round %d's CapFilt output fails its check: keep rate %.3f (bounds [%s, %s]), counts %s",
                        k, rate, lo, hi, "reconcile" if reconciled else "do not reconcile")
        return dg.AssetCheckResult(passed=bool(reconciled and lo <= rate <= hi),
                                   metadata={"reconciled": reconciled, "keep_rate": rate, "bounds": f"[{lo}, {hi}]"})
    return check


def _promotion_check(cfg: BootstrapConfig, k: int):
    @dg.asset_check(asset=f"round{k}_eval", name="promoted_only_when_not_worse")
    def check() -> dg.AssetCheckResult:
        figures = json.loads((cfg.train_root / f"round{k}_filter" / "model" / "eval.json").read_text())["figures"]
        best = promoted(cfg)
        # the promoted model is never worse than this round's, and this round is promoted only
        # when it is not worse than what was promoted before it
        ok = best is not None and _score(best["figures"]) >= _score(figures) - 1e-9
        return dg.AssetCheckResult(passed=bool(ok), metadata={"promoted_round": best["round"] if best else -1,
                                                               "promoted_r_mean": _score(best["figures"]) if best else -1.0,
                                                               "this_round_r_mean": _score(figures)})
    return check


# -- refresh: schedule and sensor ---------------------------------------------------------------

def next_version(cfg: BootstrapConfig) -> Path:
    root = Path(cfg.out) / "dataset"
    versions = sorted(int(p.name[1:]) for p in root.glob("v*") if p.name[1:].isdigit()) if root.exists() else []
    return root / f"v{(versions[-1] + 1) if versions else 1}"


def finished_versions(cfg: BootstrapConfig) -> list[Path]:
    """The dataset's versions whose manifest is written (complete), oldest first."""
    root = Path(cfg.out) / "dataset"
    found = [(int(p.name[1:]), p) for p in root.glob("v*") if p.name[1:].isdigit() and (p / mf.MANIFEST).exists()] \
        if root.exists() else []
    return [p for _, p in sorted(found)]


def shard_names(folder: str) -> list[str]:
    """The complete img2dataset shards of a folder (their _stats.json is written last)."""
    return sorted(p.name[: -len("_stats.json")] for p in Path(folder).glob("*_stats.json"))


def capfilt_shards(cfg: BootstrapConfig, names: list[str] | None, log=None, embedding: Embedding | None = None,
                   context=None) -> dict:
    """CapFilt `names` (all shards when None) of the web folder with the promoted models, as the
    dataset's next version: diffed against the last finished version (its manifest and card say
    what was added and removed, by reason) and deduplicated against every finished one (a
    sensor's version holds only the shards that arrived since the last; an image any of them
    published is not published again)."""
    best = promoted(cfg)
    if best is None:
        raise dg.Failure("no promoted captioner and filter yet: materialize the bootstrap rounds first")
    embedding = embedding or Embedding()
    data = embedding.prepare(cfg)
    web = Path(data["web"])
    version = next_version(cfg)
    source = web
    if names is not None:  # an img2dataset folder holding only the new shards
        source = version.parent / f"{version.name}_input"
        source.mkdir(parents=True, exist_ok=True)
        for n in names:
            for suffix in (".parquet", ".tar", "_stats.json"):
                if (web / f"{n}{suffix}").exists():
                    shutil.copy2(web / f"{n}{suffix}", source / f"{n}{suffix}")
    earlier = finished_versions(cfg)
    out = R.capfilt(cfg, data, best["captioner"], best["filter"], str(version.relative_to(cfg.out)),
                    shards=str(source), embedding=embedding, round=best["round"],
                    previous=str(earlier[-1]) if earlier else "", against=[str(p) for p in earlier],
                    launch=launcher(cfg.launch, context))
    (version / "shards_in.json").write_text(json.dumps({"shards": names or shard_names(str(web)),
                                                        "promoted_round": best["round"]}))
    diff = (out.get("lineage") or {}).get("diff")
    if log:
        log.info("dataset %s: %s; against the previous version: %s", version, out["counts"], diff or "none (the first)")
    return {"version": version.name, "output": out["output"], "counts": out["counts"], "diff": diff}


def refresh_defs(cfg: BootstrapConfig, embedding: Embedding | None = None):
    @dg.op(config_schema={"shards": dg.Field(list, is_required=False)})
    def capfilt_refresh(context) -> dg.Output[dict]:
        names = context.op_config.get("shards")
        return dg.Output(capfilt_shards(cfg, names, context.log, embedding, context))

    @dg.job(description="CapFilt web shards with the promoted captioner and filter into a new dataset version")
    def refresh_job():
        capfilt_refresh()

    schedule = dg.ScheduleDefinition(name="capfilt_refresh_daily", job=refresh_job, cron_schedule="0 3 * * *",
                                     run_config={"ops": {"capfilt_refresh": {"config": {}}}},
                                     default_status=dg.DefaultScheduleStatus.STOPPED)

    @dg.sensor(name="new_web_shards", job=refresh_job, minimum_interval_seconds=300,
               default_status=dg.DefaultSensorStatus.STOPPED)
    def new_web_shards(context):
        return new_shards_request(cfg, context.cursor)

    return refresh_job, schedule, new_web_shards


def new_shards_request(cfg: BootstrapConfig, cursor: str | None) -> dg.SensorResult:
    """One run for the shards that arrived since the cursor (the shards seen so far)."""
    web = cfg.data.web
    seen = set(json.loads(cursor)) if cursor else set()
    now = shard_names(web) if os.path.isdir(web) else []
    new = [n for n in now if n not in seen]
    if not new:
        return dg.SensorResult(skip_reason=f"no new shards in {web}", cursor=json.dumps(sorted(seen)))
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key="+".join(new), run_config={"ops": {"capfilt_refresh": {"config": {"shards": new}}}})],
        cursor=json.dumps(sorted(seen | set(new))))


def build_definitions(cfg: BootstrapConfig, embedding: Embedding | None = None) -> dg.Definitions:
    assets, checks = round_assets(cfg, embedding)
    job, schedule, sensor = refresh_defs(cfg, embedding)
    return dg.Definitions(assets=assets, asset_checks=checks, jobs=[job], schedules=[schedule], sensors=[sensor])


@dg.logger(description="Dagster's events into Python logging, where workflows/console.py routes them")
def python_logging(_context) -> logging.Logger:
    events = logging.getLogger(console.EVENTS)
    events.setLevel(logging.DEBUG)  # every event, as Dagster's own console logger had them
    return events


def title(asset: str) -> str:
    """An asset's name as the console's step lines say it: round0 pretrain."""
    return asset.replace("_", " ")


def trained(history: dict) -> str:
    """A training job's figure for its step line: its steps and last loss."""
    last = history["history"][-1] if history.get("history") else {}
    return f"{history.get('steps')} steps" + (f"  loss {last['loss']:.3f}" if "loss" in last else "")


def materialize_all(cfg: BootstrapConfig, embedding: Embedding | None = None, instance=None):
    """Every round's assets and checks, in-process, on a persistent instance (resumable), as
    dg.materialize does, with Dagster's events sent to Python logging instead of its own
    console logger (workflows/console.py decides what a person sees), and a step line each."""
    embedding = embedding or Embedding()
    assets, checks = round_assets(cfg, embedding)
    defs = dg.Definitions(assets=[*assets, *checks], jobs=[dg.define_asset_job(JOB)],
                          loggers={"console": python_logging})
    names = [a.key.to_user_string() for a in assets]
    steps = [*(embedding.steps or ["data"]), *(title(n) for n in names if n != "web_data")]
    with console.plan(steps):
        # the run config names the logger: without one Dagster uses its own console logger
        return defs.resolve_job_def(JOB).execute_in_process(run_config={"loggers": {"console": {}}},
                                                            instance=instance or dg.DagsterInstance.get())


if os.environ.get("CAPFILT_BOOTSTRAP_CONFIG"):  # `dagster dev -f workflows/dagster_defs.py`
    defs = build_definitions(load(os.environ["CAPFILT_BOOTSTRAP_CONFIG"]))
