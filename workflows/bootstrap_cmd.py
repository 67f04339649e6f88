"""`capfilt bootstrap --config FILE --rounds K`: the Dagster assets of K rounds, materialized
in-process on a persistent instance (`{out}/dagster`, or $DAGSTER_HOME), so a killed run
resumes where it stopped; then BLIP's Table 1 for the rounds, printed and written to
`{out}/report/`. An embedding (the demo) runs the same function with its own injection points."""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from models.errors import CapfiltError
from pipeline.report import Figure, Section, write_report
from workflows import console, dagster_defs
from workflows.bootstrap_config import BootstrapConfig, load
from workflows.rounds import Embedding, rounds_table

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bootstrap", help="run K rounds of BLIP's bootstrapping as Dagster assets (resumable)")
    p.add_argument("--config", required=True, help="bootstrap config (YAML); see configs/bootstrap.example.yaml")
    p.add_argument("--rounds", type=int, default=None, help="override rounds")
    p.set_defaults(func=run, steps_console=True)


def run(args: argparse.Namespace) -> int:
    bootstrap(load(args.config, rounds=args.rounds))
    return 0


def _instance(out: Path):
    import dagster as dg

    home = Path(os.environ.get("DAGSTER_HOME") or out / "dagster").absolute()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


def bootstrap(cfg: BootstrapConfig, embedding: Embedding | None = None) -> dict:
    """Every round's assets, materialized; then the summary (printed and written under report/).
    The attempt's whole log is appended to `{out}/logs/bootstrap.log` (workflows/console.py)."""
    embedding = embedding or Embedding()
    t0 = time.perf_counter()
    log_file = Path(cfg.out) / console.LOG_FILE
    with console.run_log(log_file):
        result = dagster_defs.materialize_all(cfg, embedding, instance=_instance(Path(cfg.out)))
        if not result.success:
            raise CapfiltError(f"the bootstrap failed: see {log_file}; run the same command again to resume")
        summary = summarise(cfg, embedding)
    summary["minutes"] = (time.perf_counter() - t0) / 60
    print(summary["table"])
    print(f"\nreport: {summary['report']}  ({summary['minutes']:.1f} min)")
    print(f"the full log: {log_file}")
    return summary


def summarise(cfg: BootstrapConfig, embedding: Embedding) -> dict:
    """Each round's figures (from what the assets wrote), the table (the embedding's, when it has
    one), and the round-0 CapFilt report with a section across rounds."""
    out = Path(cfg.out)
    per_round = []
    for k in range(cfg.rounds):
        ev = json.loads((cfg.train_root / f"round{k}_filter" / "model" / "eval.json").read_text())
        per_round.append({"round": k, "eval": ev["figures"]})
    data = embedding.prepare(cfg)  # the data are made already: this only names them
    table, extra = rounds_table(per_round), {}
    if embedding.summarise is not None:
        table, extra = embedding.summarise(cfg, data, per_round)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    (report / "table1.md").write_text(table + "\n")
    promoted = dagster_defs.promoted(cfg)
    (report / "bootstrap.json").write_text(json.dumps({"rounds": per_round, "promoted": promoted, **extra}, indent=1))
    page = str(report / "table1.md")
    capfilt0 = out / "round0_capfilt"
    if (capfilt0 / "manifest.json").exists():
        page = _round_report(cfg, embedding, data, str(capfilt0), per_round)
    return {"rounds": per_round, "table": table, "report": page, "promoted": promoted, **extra}


def _round_report(cfg: BootstrapConfig, embedding: Embedding, data: dict, capfilt0: str, per_round: list[dict]) -> str:
    """The round-0 CapFilt report, with the rounds' evaluation figures and a plot across rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = [r["round"] for r in per_round]
    for key, label in (("txt_r1", "TR R@1"), ("img_r1", "IR R@1"), ("txt_r5", "TR R@5"), ("img_r5", "IR R@5")):
        ax.plot(xs, [r["eval"][key] for r in per_round], marker="o", label=label)
    ax.set_xlabel("round"), ax.set_ylabel("recall (%)"), ax.set_xticks(xs), ax.legend(fontsize=8)
    header = ["round", "TR R@1", "TR R@5", "TR R@10", "IR R@1", "IR R@5", "IR R@10", "BLEU-4", "CIDEr"]
    rows = [[r["round"]] + [f"{r['eval'][k]:.1f}" for k in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10")]
            + [f"{r['eval']['bleu4']:.3f}", f"{r['eval']['cider']:.3f}"] for r in per_round]
    paragraphs = ["Round 0 is pre-trained on the raw web and the human captions (no CapFilt); round k on round k-1's "
                  "CapFilt output and the human captions. Retrieval is scored with each round's fine-tuned filter, "
                  "captions with its fine-tuned captioner, on the clean test split."]
    section = Section("Bootstrap rounds", paragraphs=paragraphs, figures=[Figure("rounds", fig, "recall by round")],
                      table=(header, rows))
    truth = embedding.truth(data, data["web"]) if embedding.truth else None
    return write_report(capfilt0, threshold=cfg.capfilt.filter.threshold, truth=truth, sections=[section])
