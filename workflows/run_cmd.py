"""`capfilt run --config FILE`: one CapFilt run (download, caption, filter, decide, write)."""
from __future__ import annotations

import argparse
import dataclasses
import json

from pipeline import dashboard
from pipeline.config import load
from pipeline.run import run as run_capfilt


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run CapFilt over web shards or a URL list, as a YAML config says")
    p.add_argument("--config", required=True, help="run config (YAML); see configs/capfilt.example.yaml")
    p.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")
    p.add_argument("--restart", action="store_true",
                   help="discard the work and outputs already in the output folder (another config's, or an "
                        "interrupted run's) and run from the start; without it, a rerun resumes or reuses work only "
                        "under the same identity (inputs, models, parameters, version) and refuses anything else")
    dashboard.add_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    cfg.compute = dataclasses.replace(cfg.compute, dashboard=dashboard.from_args(cfg.compute.dashboard, args))
    manifest = run_capfilt(cfg, progress_every=args.progress_every, restart=args.restart)
    print(json.dumps({"output": cfg.output, "counts": manifest["counts"]}, indent=2))
    return 0
