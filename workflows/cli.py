"""The `capfilt` command line: one sub-command per job."""
from __future__ import annotations

import argparse
import logging
import sys

from demo import cli as demo_cli  # the dispatcher is the one production module that names the demo
from models.errors import CapfiltError
from workflows import bootstrap_cmd, calibrate_cmd, download_cmd, run_cmd, train


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capfilt", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except CapfiltError as err:  # one clear message, no traceback
        print(f"capfilt {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
