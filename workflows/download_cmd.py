"""`capfilt download`: a URL list (or a synthetic world, served for the occasion) to img2dataset shards."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download a URL list into WebDataset shards with img2dataset")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--url-list", help="Parquet or CSV with a 'url' column (and optionally 'caption', 'key')")
    src.add_argument("--synthetic", metavar="DIR", help="a `capfilt synth` folder: served on 127.0.0.1 while downloading")
    p.add_argument("--out", required=True, help="output folder (local path or fsspec URL); reruns resume")
    p.add_argument("--image-size", type=int, default=64, help="resize to this side (default 64)")
    p.add_argument("--resize-mode", default="border", choices=["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"])
    p.add_argument("--processes", type=int, default=1, help="download processes (default 1)")
    p.add_argument("--threads", type=int, default=16, help="download threads per process (default 16)")
    p.add_argument("--timeout", type=float, default=10, help="seconds per URL (default 10)")
    p.add_argument("--retries", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=None, help="rows per shard (default 10000; 500 with --synthetic)")
    p.add_argument("--allow-host", action="append", default=None, metavar="HOST",
                   help="a host, address or CIDR to reach although not public (repeat; --synthetic allows 127.0.0.1)")
    p.add_argument("--keep", nargs="*", default=[], metavar="COLUMN", help="more URL-list columns to keep")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.download import download

    opts = dict(image_size=args.image_size, resize_mode=args.resize_mode, processes=args.processes,
                threads=args.threads, timeout=args.timeout, retries=args.retries, extra_columns=args.keep)
    if args.url_list:
        stats = download(args.url_list, args.out, shard_size=args.shard_size or 10_000,
                         allow_hosts=tuple(args.allow_host or ()), **opts)
    else:
        from demo.world.serve import serve_synthetic

        with tempfile.TemporaryDirectory(prefix="capfilt-synth-") as tmp:
            with serve_synthetic(args.synthetic, Path(tmp) / "url_list.parquet") as url_list:
                stats = download(url_list, args.out, shard_size=args.shard_size or 500,
                                 allow_hosts=tuple(args.allow_host or ("127.0.0.1",)), **opts)
    print(f"{args.out}: {stats.successes} downloaded, {stats.failed} failed, of {stats.count} rows in {stats.shards} shard(s)")
    for reason, n in sorted(stats.errors.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {n:>7}  {reason}")
    return 0
