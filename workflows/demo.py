"""`capfilt demo`: the embedded default (configs/demo.yaml) — BLIP's bootstrapping on the
synthetic web, round 0 and round 1, and Table 1 for the two (see workflows/bootstrap_cmd.py)."""
from __future__ import annotations

import argparse

from workflows.bootstrap_cmd import bootstrap


def run(args: argparse.Namespace) -> int:
    bootstrap(args.config, args.rounds)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the embedded default (configs/demo.yaml): two bootstrap rounds and Table 1")
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--rounds", type=int, default=None, help="override rounds")
    p.set_defaults(func=run)
