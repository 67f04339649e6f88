"""bench.bootstrap's comparison (--compare): what dedup and best of N change in the kept set's
noise and in retrieval, on the synthetic world with copies injected (--duplicates).

The seed's demo bootstrap runs once as the config says (`as_config`); each other variant starts
from the same round 0 (its fine-tuned captioner and filter, and its vocabulary) and changes only
the CapFilt run: `no_dedup` (exact and near dedup off) and `best_of_N` (N captions per image, the
best one reaching the threshold kept: captioner.keep both, top_k 1). Each variant then CapFilts
the web with round 0's models, pre-trains round 1 from scratch on its output + the human
captions, fine-tunes and evaluates it, as the bootstrap's round 1 does.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline import manifest as mf
from pipeline.diversity import distinct_ngrams
from pipeline.sinks import read_shards


def variants(best_of: int) -> dict[str, dict]:
    """Name -> what it changes in the CapFilt template (section -> fields)."""
    return {"no_dedup": {"dedup": {"exact": False, "near": False}},
            f"best_of_{best_of}": {"captioner": {"num_captions": best_of, "keep": "both", "top_k": 1}}}


def kept_figures(demo, capfilt_out: str) -> dict:
    """What the truth says of a CapFilt output's kept set, its counts and its synthetic captions' diversity."""
    from demo.truth import table1_figures

    t = table1_figures(demo.bootstrap.data.web, demo.world_dir, capfilt_out)
    c = mf.read(capfilt_out)["counts"]
    kept = read_shards(capfilt_out, columns=["texts", "origins"]).to_pylist()
    synthetic = [x for r in kept for x, o in zip(r["texts"], r["origins"]) if o == "synthetic"]
    web, kept_set = c["texts_kept"]["web"], c["texts_kept"]["web"] + c["texts_kept"]["synthetic"]
    return {"rows_in": c["rows_in"], "kept": c["kept"], "duplicates": c.get("duplicates", 0),
            "noisy_before": t["noisy_before"], "noisy_web_kept": t["noisy_after"] if web else None,
            "noisy_set": t["noisy_kept_set"] if kept_set else None, "synthetic_kept": t["synthetic_kept"],
            "synthetic_correct": t["synthetic_correct"] if synthetic else None,
            "distinct_1": distinct_ngrams(synthetic, 1)["share"], "distinct_2": distinct_ngrams(synthetic, 2)["share"]}


def run_variant(demo, name: str, changes: dict) -> dict:
    """One variant's CapFilt of the web with round 0's models, and round 1 trained on its output."""
    from demo.bootstrap import embedding
    from workflows import rounds as R

    base = demo.bootstrap
    c = base.capfilt
    capfilt = dataclasses.replace(c, **{section: dataclasses.replace(getattr(c, section), **fields)
                                        for section, fields in changes.items()})
    cfg = dataclasses.replace(base, out=str(Path(base.out) / "variants" / name), capfilt=capfilt)
    cfg.train_root.mkdir(parents=True, exist_ok=True)
    vocabulary = cfg.train_root / "round0_pretrain"  # round 1 speaks round 0's vocabulary
    if not vocabulary.exists():
        vocabulary.symlink_to(base.train_root / "round0_pretrain", target_is_directory=True)
    data = {"web": base.data.web, "human": list(base.data.human), "test": base.data.test}
    captioner0, filter0 = (str(base.train_root / f"round0_{job}" / "model") for job in ("captioner", "filter"))
    out = R.capfilt(cfg, data, captioner0, filter0, "round0_capfilt", embedding=embedding(demo), round=0)
    model = R.pretrain(cfg, 1, data, out["output"])
    captioner, filter_model = (R.finetune(cfg, 1, data, model, task) for task in ("caption", "filter"))
    return {"variant": name, **kept_figures(demo, out["output"]),
            **_recall(R.evaluate(cfg, 1, data, filter_model, captioner))}


def _recall(figures: dict) -> dict:
    return {"tr_r1": figures["txt_r1"], "ir_r1": figures["img_r1"], "r_mean": figures["r_mean"],
            "cider": figures["cider"]}


def compare(demo, summary: dict, best_of: int) -> list[dict]:
    """Every variant's figures, the config's own first (from the bootstrap that ran)."""
    rows = [{"variant": "as_config", **kept_figures(demo, str(demo.out / "round0_capfilt")),
             **_recall(summary["rounds"][1]["eval"])}]
    for name, changes in variants(best_of).items():
        rows.append(run_variant(demo, name, changes))
    return rows


def table(rows: list[dict], round0: dict) -> str:
    """The variants side by side, as text."""
    def pct(x):
        return "    –" if x is None else f"{100 * x:5.1f}"

    lines = [f"  {'variant':<12} {'rows':>5} {'dups':>5} {'kept':>5} {'noisy web kept %':>16} {'noisy set %':>11} "
             f"{'synth kept':>10} {'synth ok %':>10} {'dist-1 %':>8} {'dist-2 %':>8} {'TR R@1':>6} {'IR R@1':>6} "
             f"{'R mean':>6} {'CIDEr':>6}"]
    for r in rows:
        lines.append(f"  {r['variant']:<12} {r['rows_in']:>5} {r['duplicates']:>5} {r['kept']:>5} "
                     f"{pct(r['noisy_web_kept']):>16} {pct(r['noisy_set']):>11} {r['synthetic_kept']:>10} "
                     f"{pct(r['synthetic_correct']):>10} {pct(r['distinct_1']):>8} {pct(r['distinct_2']):>8} "
                     f"{r['tr_r1']:6.1f} {r['ir_r1']:6.1f} {r['r_mean']:6.1f} {r['cider']:6.3f}")
    lines.append(f"  (round 0, no CapFilt: TR R@1 {round0['txt_r1']:.1f}, IR R@1 {round0['img_r1']:.1f}, "
                 f"R mean {round0['r_mean']:.1f}; web texts noisy before the filter {pct(rows[0]['noisy_before']).strip()}%)")
    return "\n".join(lines)
