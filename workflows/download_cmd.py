"""`capfilt download`: a URL list to img2dataset shards."""
from __future__ import annotations

import argparse

from pipeline.download import download
from pipeline.polite import Politeness

POLITE = Politeness()  # its defaults, written there once


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download a URL list into WebDataset shards with img2dataset")
    p.add_argument("--url-list", required=True, help="Parquet or CSV with a 'url' column (and optionally 'caption', 'key')")
    add_options(p)
    p.set_defaults(func=run)


def add_options(p: argparse.ArgumentParser) -> None:
    """The download's options (shared with the demo's synth-download)."""
    p.add_argument("--out", required=True, help="output folder (local path or fsspec URL); reruns resume")
    p.add_argument("--image-size", type=int, default=64, help="resize to this side (default 64)")
    p.add_argument("--resize-mode", default="border", choices=["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"])
    p.add_argument("--processes", type=int, default=1, help="download processes (default 1)")
    p.add_argument("--threads", type=int, default=16, help="download threads per process (default 16)")
    p.add_argument("--timeout", type=float, default=10, help="seconds per URL (default 10)")
    p.add_argument("--retries", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=None, help="rows per shard (default 10000)")
    p.add_argument("--allow-host", action="append", default=None, metavar="HOST",
                   help="a host, address or CIDR to reach although not public (repeat)")
    g = p.add_argument_group("politeness", "per-host limits (per download process) and retries of 429/503 answers")
    g.add_argument("--host-concurrency", type=int, default=POLITE.host_concurrency, metavar="N",
                   help=f"requests in flight to one host; 0: no limit (default {POLITE.host_concurrency})")
    g.add_argument("--host-rate", type=float, default=POLITE.host_rate, metavar="PER_S",
                   help=f"requests started per second to one host; 0: no limit (default {POLITE.host_rate:g})")
    g.add_argument("--busy-retries", type=int, default=POLITE.busy_retries, metavar="N",
                   help=f"retries of a 429/503 answer, after its Retry-After (default {POLITE.busy_retries})")
    g.add_argument("--backoff", type=float, default=POLITE.backoff, metavar="S",
                   help=f"first wait when a 429/503 has no Retry-After, doubled each retry (default {POLITE.backoff:g} s)")
    g.add_argument("--max-wait", type=float, default=POLITE.max_wait, metavar="S",
                   help=f"longest wait for one retry; a Retry-After asking more fails the row (default {POLITE.max_wait:g} s)")
    p.add_argument("--keep", nargs="*", default=[], metavar="COLUMN", help="more URL-list columns to keep")


def download_list(url_list: str, args: argparse.Namespace, shard_size: int = 10_000, allow_hosts: tuple = ()):
    """Download `url_list` as the options in `args` say (their own shard size and hosts first)."""
    return download(url_list, args.out, image_size=args.image_size, resize_mode=args.resize_mode,
                    processes=args.processes, threads=args.threads, timeout=args.timeout, retries=args.retries,
                    extra_columns=args.keep, shard_size=args.shard_size or shard_size,
                    allow_hosts=tuple(args.allow_host or allow_hosts), politeness=politeness(args))


def politeness(args: argparse.Namespace) -> Politeness:
    return Politeness(host_concurrency=args.host_concurrency, host_rate=args.host_rate,
                      busy_retries=args.busy_retries, backoff=args.backoff, max_wait=args.max_wait)


def print_stats(out: str, stats) -> None:
    print(f"{out}: {stats.successes} downloaded, {stats.failed} failed, of {stats.count} rows in {stats.shards} shard(s)")
    for reason, n in sorted(stats.errors.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {n:>7}  {reason}")


def run(args: argparse.Namespace) -> int:
    print_stats(args.out, download_list(args.url_list, args))
    return 0
