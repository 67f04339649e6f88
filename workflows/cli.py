"""The `capfilt` command line: one sub-command per job."""
from __future__ import annotations

import argparse
import sys

from demo import cli as demo_cli  # the dispatcher is the one production module that names the demo
from models.errors import CapfiltError
from workflows import bootstrap_cmd, calibrate_cmd, console, download_cmd, run_cmd, train


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capfilt", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging (bootstrap, demo: the whole log on the console, not only the steps)")
    sub = parser.add_subparsers(dest="command", required=True)
    # Each job module adds its own sub-command; keep this list short and flat.
    demo_cli.add_parser(sub)  # demo, synth, serve, synth-download
    download_cmd.add_parser(sub)
    run_cmd.add_parser(sub)
    calibrate_cmd.add_parser(sub)
    train.add_parsers(sub)
    bootstrap_cmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    # A bootstrap (bootstrap, demo) shows its steps and logs the rest to its run's file
    # (workflows/console.py); every other command logs to the console.
    with console.setup(args.verbose, steps=getattr(args, "steps_console", False)):
        try:
            return int(args.func(args) or 0)
        except CapfiltError as err:  # one clear message, no traceback
            print(f"capfilt {args.command}: error: {err}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
