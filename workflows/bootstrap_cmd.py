"""`capfilt bootstrap --config FILE --rounds K`: the Dagster assets of K rounds, materialized
in-process on a persistent instance (`{out}/dagster`, or $DAGSTER_HOME), so a killed run
resumes where it stopped; then BLIP's Table 1 for the rounds, printed and written to
`{out}/report/`."""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from models.errors import CapfiltError
from workflows import rounds as R

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bootstrap", help="run K rounds of BLIP's bootstrapping as Dagster assets (resumable)")
    p.add_argument("--config", required=True, help="bootstrap config (YAML); see configs/demo.yaml")
    p.add_argument("--rounds", type=int, default=None, help="override rounds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    bootstrap(args.config, args.rounds)
    return 0


def _instance(out: Path):
    import dagster as dg

    home = Path(os.environ.get("DAGSTER_HOME") or out / "dagster").absolute()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


def bootstrap(config: str, rounds: int | None = None) -> dict:
    from workflows.dagster_defs import materialize_all

    cfg = R.load(config, rounds=rounds)
    out = Path(cfg.out)
    t0 = time.perf_counter()
    result = materialize_all(config, rounds, instance=_instance(out))
    if not result.success:
        raise CapfiltError("the bootstrap failed: see the log above; run the same command again to resume")
    summary = summarise(cfg)
    summary["minutes"] = (time.perf_counter() - t0) / 60
    print(summary["table"])
    print(f"\nreport: {summary['report']}  ({summary['minutes']:.1f} min)")
    return summary


def summarise(cfg: R.BootstrapConfig) -> dict:
    """Each round's figures (from what the assets wrote), the truth figures for the demo, Table 1
    as Markdown and JSON, and the round-0 CapFilt report with a section across rounds."""
    out = Path(cfg.out)
    per_round = []
    for k in range(cfg.rounds):
        ev = json.loads((out / "train" / f"round{k}_filter" / "model" / "eval.json").read_text())
        per_round.append({"round": k, "eval": ev["figures"]})
    data = R.prepare_data(cfg)
    capfilt0 = str(out / "round0_capfilt") if (out / "round0_capfilt" / "manifest.json").exists() else None
    truth = R.truth_figures(data, capfilt0) if data.get("synth") else None
    warmup = R.vision_warmup_figures(cfg)
    table = R.table1(per_round, truth, warmup)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    (report / "table1.md").write_text(table + "\n")
    promoted = json.loads((out / "promoted.json").read_text()) if (out / "promoted.json").exists() else None
    (report / "bootstrap.json").write_text(json.dumps({"rounds": per_round, "truth": truth, "promoted": promoted,
                                                       "vision_warmup": warmup}, indent=1))
    page = str(report / "table1.md")
    if capfilt0:
        page = _round_report(cfg, data, capfilt0, per_round, truth)
    return {"rounds": per_round, "truth": truth, "table": table, "report": page, "promoted": promoted,
            "vision_warmup": warmup}


def _round_report(cfg, data: dict, capfilt0: str, per_round: list[dict], truth: dict | None) -> str:
    """The round-0 CapFilt report, with the rounds' evaluation figures and a plot across rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.report import Figure, Section, truth_from_synth, write_report

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
    truth_map = truth_from_synth(data["web"], data["synth"]) if data.get("synth") else None
    return write_report(capfilt0, threshold=cfg.threshold, truth=truth_map, sections=[section])
