"""`capfilt download`: a URL list to img2dataset shards."""
from __future__ import annotations

import argparse

from pipeline.download import download


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
    p.add_argument("--keep", nargs="*", default=[], metavar="COLUMN", help="more URL-list columns to keep")


def download_list(url_list: str, args: argparse.Namespace, shard_size: int = 10_000, allow_hosts: tuple = ()):
    """Download `url_list` as the options in `args` say (their own shard size and hosts first)."""
    return download(url_list, args.out, image_size=args.image_size, resize_mode=args.resize_mode,
                    processes=args.processes, threads=args.threads, timeout=args.timeout, retries=args.retries,
                    extra_columns=args.keep, shard_size=args.shard_size or shard_size,
                    allow_hosts=tuple(args.allow_host or allow_hosts))


def print_stats(out: str, stats) -> None:
    print(f"{out}: {stats.successes} downloaded, {stats.failed} failed, of {stats.count} rows in {stats.shards} shard(s)")
    for reason, n in sorted(stats.errors.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {n:>7}  {reason}")


def run(args: argparse.Namespace) -> int:
    print_stats(args.out, download_list(args.url_list, args))
    return 0
