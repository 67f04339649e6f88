"""Does CapFilt work? The demo's two bootstrap rounds over several seeds.

    python -m bench.bootstrap [--config configs/demo.yaml] [--seeds 0 1 2 3 4] [--workdir DIR]
                              [--steps PRETRAIN CAPTION FILTER] [--vision-warmup STEPS]
                              [--vit-lr-scale SHARE] [--test IMAGES] [--image-size PIXELS]
                              [--finetune-image-size PIXELS] [--web IMAGES] [--human IMAGES]
                              [--noise SHARE] [--duplicates SHARE] [--compare] [--best-of N]

For each seed: a fresh synthetic world and the whole bootstrap (round 0 on the raw web + human
captions, CapFilt with round 0's fine-tuned captioner and filter, round 1 from scratch on the
cleaned data + human captions), as `make demo` runs it. Prints a line per seed, a table of the
seeds, the figures as mean ± standard deviation, and the goals of demo/goals.py: on the mean and
seed by seed, with the one-sided paired t-test of the CapFilt model's R@1 against the no-CapFilt
model's. Per seed it also prints the wrong-attribute texts dropped per attribute, and the floor of
a filter that reads colour but not shape, size, place or relation (every mismatch, junk, empty and
wrong-colour text dropped, the finer errors kept at the clean rate): when that floor is above the
goal's share of the input's noise, the goal needs a filter that reads the finer attributes
(`python -m bench.learnability` shows how many steps the ViT needs for each).

--duplicates SHARE injects copies into the world before it is downloaded (demo/world/duplicates.py:
that share of its web images again, byte for byte, each under a fresh alt-text); --compare then
sets what dedup and best of N change beside the config's run: the same round 0, CapFilt without
dedup, and CapFilt with --best-of N captions per image (the best one reaching the threshold
kept), each followed by its own round 1 (bench/bootstrap_variants.py). Per variant it prints the
rows, the copies removed, the noise of the kept web texts and of the whole kept set, the kept
synthetic captions' truth and diversity (distinct 1- and 2-grams), and round 1's retrieval.
Figures, not pass/fail.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import yaml


def one_seed(config: dict, seed: int, root: Path, duplicates: float = 0.0, compare: bool = False,
             best_of: int = 4) -> dict:
    from demo.bootstrap import make_world, run
    from demo.config import load
    from demo.goals import run_figures

    values = {**config, "seed": seed, "out": str(root / f"seed{seed}")}
    path = root / f"seed{seed}.yaml"
    path.write_text(yaml.safe_dump(values))
    os.environ["DAGSTER_HOME"] = str(root / f"seed{seed}" / "dagster")
    t0 = time.perf_counter()
    demo = load(path)
    if duplicates:
        from demo.world.duplicates import inject

        make_world(demo)
        copies = inject(demo.world_dir, duplicates, seed)
        print(f"seed {seed}: {copies} copies injected into the synthetic web", flush=True)
    summary = run(str(path))
    r0, r1 = (r["eval"] for r in summary["rounds"][:2])
    t = summary["truth"]
    if compare:
        from bench.bootstrap_variants import compare as compare_variants, table

        rows = compare_variants(demo, summary, best_of)
        print(f"seed {seed}: CapFilt variants, each followed by its own round 1 "
              f"({(time.perf_counter() - t0) / 60:.1f} min so far)\n" + table(rows, r0), flush=True)
    return {"seed": seed, "minutes": (time.perf_counter() - t0) / 60, **run_figures(summary["rounds"], t),
            "floor": t["noisy_floor_colour_only"], "dropped_by_attribute": t["dropped_by_attribute"],
            "warmup": (summary.get("vision_warmup") or {}).get("accuracy")}


def _ms(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:7.2f} ± {sd:5.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workdir", default="")
    parser.add_argument("--steps", type=int, nargs=3, metavar=("PRETRAIN", "CAPTION", "FILTER"),
                        help="training steps per job instead of the config's (e.g. 800 200 200)")
    parser.add_argument("--vision-warmup", type=int, default=None, metavar="STEPS",
                        help="steps of the ViT's warm-up on labelled scenes instead of the config's (0: random start)")
    parser.add_argument("--vit-lr-scale", type=float, default=None, metavar="SHARE",
                        help="the image encoder's lr as a share of each job's lr instead of the config's")
    parser.add_argument("--test", type=int, default=None, metavar="IMAGES",
                        help="test images in the synthetic world instead of the config's (more: less eval noise)")
    parser.add_argument("--image-size", type=int, default=None, metavar="PIXELS",
                        help="side of the synthetic world's images instead of the config's (pre-training still "
                             "resizes them to the model's size)")
    parser.add_argument("--finetune-image-size", type=int, default=None, metavar="PIXELS",
                        help="image size of the captioner, the filter, CapFilt and the evaluation instead of the "
                             "config's (BLIP: 384 against 224 for pre-training)")
    parser.add_argument("--web", type=int, default=None, metavar="IMAGES",
                        help="web images in the synthetic world instead of the config's")
    parser.add_argument("--human", type=int, default=None, metavar="IMAGES",
                        help="human-captioned images in the synthetic world instead of the config's")
    parser.add_argument("--noise", type=float, default=None, metavar="SHARE",
                        help="share of noisy web alt-texts instead of the config's (e.g. 0.3 or 0.5: not tuned on)")
    parser.add_argument("--duplicates", type=float, default=0.0, metavar="SHARE",
                        help="inject this share of the web images again as copies (each under a fresh alt-text)")
    parser.add_argument("--compare", action="store_true",
                        help="also run CapFilt without dedup and with best of N, each with its own round 1")
    parser.add_argument("--best-of", type=int, default=4, metavar="N", help="captions per image of the best-of-N variant")
    args = parser.parse_args()
    if not 0 <= args.duplicates <= 1:
        parser.error(f"--duplicates is a share of the web images, within [0, 1]; got {args.duplicates}")
    if args.best_of < 2:
        parser.error(f"--best-of must be at least 2 (N = 1 is the config's own run); got {args.best_of}")
    config = yaml.safe_load(Path(args.config).read_text())
    for job, steps in zip(("pretrain", "caption", "filter"), args.steps or ()):
        config[job] = {**config.get(job, {}), "steps": steps}
    demo = config.setdefault("demo", {})
    if args.vision_warmup is not None:
        demo["vision_warmup"] = args.vision_warmup
    if args.vit_lr_scale is not None:
        optim = config.setdefault("train", {}).setdefault("optim", {})
        optim["vit_lr_scale"] = args.vit_lr_scale
    world = {k: v for k, v in (("test", args.test), ("image_size", args.image_size), ("web", args.web),
                                ("human", args.human), ("noise", args.noise)) if v is not None}
    demo["world"] = {**demo.get("world", {}), **world}
    if args.finetune_image_size is not None:
        config["finetune_image_size"] = args.finetune_image_size
    if args.compare:  # the variants are measured, not guarded: a keep rate out of bounds is a figure too
        config["checks"] = {**config.get("checks", {}), "min_keep_rate": 0.0, "max_keep_rate": 1.0}
    if config.get("rounds", 2) < 2:
        config["rounds"] = 2
    root = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="capfilt-bench-bootstrap-"))
    root.mkdir(parents=True, exist_ok=True)
    rows, failed = [], []
    try:
        for seed in args.seeds:
            try:
                rows.append(one_seed(config, seed, root, args.duplicates, args.compare, args.best_of))
            except Exception as err:  # a seed whose asset check stopped the bootstrap is a result too
                failed.append((seed, f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[-1]}"))
                print(f"seed {seed}: the bootstrap stopped: {failed[-1][1]}", flush=True)
                continue
            r = rows[-1]
            print(f"seed {seed}: noisy web texts {100 * r['noisy_before']:.1f}% -> {100 * r['noisy_after']:.1f}% kept "
                  f"(whole kept set with synthetic captions {100 * r['noisy_set']:.1f}%); "
                  f"TR R@1 {r['tr_r1_0']:.1f} -> {r['tr_r1_1']:.1f}, IR R@1 {r['ir_r1_0']:.1f} -> {r['ir_r1_1']:.1f}, "
                  f"CIDEr {r['cider_0']:.3f} -> {r['cider_1']:.3f} ({r['minutes']:.1f} min)", flush=True)
            print(f"  wrong-attribute texts dropped: " + ", ".join(
                f"{a} {100 * v:.0f}%" for a, v in r["dropped_by_attribute"].items())
                + f" (clean texts {100 * (1 - r['clean_kept']):.0f}%); a colour-only filter's floor "
                  f"{100 * r['floor']:.1f}%", flush=True)
            if r["warmup"]:
                print("  image encoder started from the vision warm-up, held-out accuracy " + ", ".join(
                    f"{a} {100 * v:.0f}%" for a, v in r["warmup"].items()), flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    if failed:
        print(f"\n{len(failed)} of {len(args.seeds)} seeds stopped: " + "; ".join(f"seed {s}: {e}" for s, e in failed))
    if not rows:
        return
    from demo.goals import seed_goal_lines

    print(f"\n{'seed':>4} {'TR R@1 0 -> 1':>14} {'IR R@1 0 -> 1':>14} {'CIDEr 0 -> 1':>14} {'noisy web':>10} "
          f"{'kept web':>9} {'clean kept':>10} {'synth true':>10} {'kept set':>9} {'min':>5}")
    for r in rows:
        print(f"{r['seed']:>4} {r['tr_r1_0']:6.1f} {r['tr_r1_1']:6.1f} {r['ir_r1_0']:7.1f} {r['ir_r1_1']:6.1f} "
              f"{r['cider_0']:7.3f} {r['cider_1']:6.3f} {100 * r['noisy_before']:9.1f}% {100 * r['noisy_after']:8.1f}% "
              f"{100 * r['clean_kept']:9.1f}% {100 * r['synthetic_correct']:9.1f}% {100 * r['noisy_set']:8.1f}% "
              f"{r['minutes']:5.1f}")
    col = {k: [r[k] for r in rows] for k in rows[0] if k not in ("warmup", "dropped_by_attribute")}
    ratio_floor = [a / b for a, b in zip(col["floor"], col["noisy_before"])]
    print(f"\nover {len(rows)} seeds (mean ± sd):")
    print(f"  noisy share of web texts: before {_ms([100 * x for x in col['noisy_before']])} %, "
          f"kept {_ms([100 * x for x in col['noisy_after']])} %; whole kept set {_ms([100 * x for x in col['noisy_set']])} %")
    print(f"  clean web texts kept {_ms([100 * x for x in col['clean_kept']])} %, kept synthetic captions wholly "
          f"true {_ms([100 * x for x in col['synthetic_correct']])} %")
    print(f"  a filter that sees colour but not shape, size, place or relation: after/before at best "
          f"{_ms(ratio_floor)}")
    print(f"  TR R@1: no CapFilt {_ms(col['tr_r1_0'])}, CapFilt {_ms(col['tr_r1_1'])}")
    print(f"  IR R@1: no CapFilt {_ms(col['ir_r1_0'])}, CapFilt {_ms(col['ir_r1_1'])}")
    print(f"  CIDEr:  no CapFilt {_ms(col['cider_0'])}, CapFilt {_ms(col['cider_1'])}")
    print(f"  minutes per seed {_ms(col['minutes'])}")
    print("\nthe goals (demo/goals.py):")
    print("\n".join(seed_goal_lines(rows)))

if __name__ == "__main__":
    main()
