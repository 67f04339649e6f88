"""The demo's commands: `capfilt demo` runs the embedded default (configs/demo.yaml); `capfilt
synth` makes a synthetic world, `capfilt serve` serves its web on 127.0.0.1, and `capfilt
synth-download` serves it while img2dataset downloads it (workflows/cli.py names these)."""
from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

import tempfile

from demo import bootstrap
from demo.world.captions import DEFAULT_MIX, NOISE_TYPES
from demo.world.serve import serve_synthetic
from demo.world.splits import SynthConfig, generate
from demo.world.world import N_OBJECTS_P
from workflows import download_cmd


def _mix(text: str) -> dict[str, float]:
    """'mismatch=0.5,junk=0.5' -> {'mismatch': 0.5, 'junk': 0.5}."""
    try:
        pairs = [part.split("=") for part in text.split(",") if part.strip()]
        mix = {k.strip(): float(v) for k, v in pairs}
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected TYPE=WEIGHT,... with types {', '.join(NOISE_TYPES)}") from err
    unknown = set(mix) - set(NOISE_TYPES)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown noise type(s) {', '.join(sorted(unknown))}; known: {', '.join(NOISE_TYPES)}")
    return mix


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="run the embedded default (configs/demo.yaml): two bootstrap rounds and Table 1")
    d.add_argument("--config", default="configs/demo.yaml")
    d.add_argument("--rounds", type=int, default=None, help="override rounds")
    d.set_defaults(func=run_demo, steps_console=True)  # a bootstrap's console (workflows/console.py)

    p = sub.add_parser("synth", help="make a synthetic web (noisy alt-texts), human and test splits, and their truth")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--web", type=int, default=2000, help="web images (default 2000)")
    p.add_argument("--human", type=int, default=1000, help="human-captioned images (default 1000)")
    p.add_argument("--test", type=int, default=500, help="test images (default 500)")
    p.add_argument("--noise", type=float, default=0.4, help="share of noisy web alt-texts (default 0.4)")
    default_mix = ",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items())
    p.add_argument("--mix", type=_mix, default=None, help=f"noise type weights (default {default_mix})")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--human-captions", type=int, default=3, help="captions per human image (default 3)")
    p.add_argument("--test-captions", type=int, default=5, help="captions per test image (default 5)")
    p.add_argument("--objects", type=int, nargs="+", default=list(N_OBJECTS_P),
                   help="object counts a scene may have (default 1 2 3)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="rendering processes")
    p.add_argument("--overwrite", action="store_true", help="replace a world already in --out")
    p.set_defaults(func=run_synth)

    s = sub.add_parser("serve", help="serve a synthetic world's web on 127.0.0.1 until interrupted")
    s.add_argument("dir", help="a folder made by `capfilt synth`")
    s.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    s.add_argument("--url-list", default=None, help="where to write the URL list for this server (default DIR/url_list.parquet)")
    s.set_defaults(func=run_serve)

    g = sub.add_parser("synth-download", help="serve a synthetic world's web on 127.0.0.1 while img2dataset "
                                              "downloads it into shards")
    g.add_argument("dir", help="a folder made by `capfilt synth`")
    download_cmd.add_options(g)
    g.set_defaults(func=run_synth_download)


def run_demo(args: argparse.Namespace) -> int:
    bootstrap.run(args.config, args.rounds)
    return 0


def run_synth_download(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="capfilt-synth-") as tmp:
        with serve_synthetic(args.dir, Path(tmp) / "url_list.parquet") as url_list:
            stats = download_cmd.download_list(url_list, args, shard_size=500, allow_hosts=("127.0.0.1",))
    download_cmd.print_stats(args.out, stats)
    return 0


def run_synth(args: argparse.Namespace) -> int:
    cfg = SynthConfig(seed=args.seed, web=args.web, human=args.human, test=args.test, noise=args.noise,
                      mix=args.mix or dict(DEFAULT_MIX), image_size=args.image_size,
                      human_captions=args.human_captions, test_captions=args.test_captions, objects=args.objects)
    summary = generate(args.out, cfg, overwrite=args.overwrite, workers=args.workers)
    counts = summary["counts"]
    noisy = counts["web"] - summary["web_noise_counts"]["clean"]
    print(f"wrote {args.out}: {counts['web']} web ({noisy} noisy), {counts['human']} human, {counts['test']} test images")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    list_path = Path(args.url_list) if args.url_list else Path(args.dir) / "url_list.parquet"
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # a service manager stops us with TERM, a person with Ctrl-C
        signal.signal(sig, lambda *_: stop.set())
    with serve_synthetic(args.dir, list_path, port=args.port) as written:
        print(f"serving {args.dir}/web; URL list for this server: {written} (Ctrl-C stops)", flush=True)
        while not stop.wait(0.5):
            pass
    return 0
