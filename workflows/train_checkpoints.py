"""The checkpoints of a job that trains in this process (`compute.launcher: local`).

Ray Train's local mode (no worker processes, no controller: the job starts in about a second)
keeps no checkpoints of its own, so the loop writes them where Ray Train would: under the run
folder, `checkpoint_NNNNNNNN/` holding our model folder and `train_state.pt`. `train_state.pt` is
written last, under another name and then renamed, so a folder without it (a kill mid-write) is
not a checkpoint; the newest two are kept. A relaunched job resumes from the newest one, as a
Ray Train job resumes from its own.
"""
from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Callable
from pathlib import Path
import tempfile

import fsspec

log = logging.getLogger(__name__)

TRAIN_STATE = "train_state.pt"  # optimizer, step, loss history, RNG: what a resumed job needs beyond the weights
PREFIX = "checkpoint_"
KEEP = 2
_NAME = re.compile(rf"{PREFIX}(\d+)$")


def _steps(run: str) -> list[tuple[int, str]]:
    """(step, path) of the complete checkpoints of `run`, oldest first."""
    fs, root = fsspec.core.url_to_fs(run)
    if not fs.exists(root):
        return []
    found = []
    for path in fs.ls(root, detail=False):
        m = _NAME.search(path.rstrip("/"))
        if m and fs.exists(posixpath.join(path, TRAIN_STATE)):
            found.append((int(m.group(1)), fs.unstrip_protocol(path) if "file" not in fs.protocol else path))
    return sorted(found)


def latest(run: str) -> str | None:
    """The newest complete checkpoint folder of the run at `run` (any fsspec path), or None."""
    found = _steps(run)
    return found[-1][1] if found else None


def save(run: str, step: int, write: Callable[[Path], None]) -> str:
    """Write a checkpoint of `step` under `run`: `write(folder)` fills a local folder, which is
    copied up with train_state.pt last; older checkpoints beyond KEEP are removed."""
    fs, root = fsspec.core.url_to_fs(run)
    target = posixpath.join(root, f"{PREFIX}{step:08d}")
    with tempfile.TemporaryDirectory(prefix="capfilt-ckpt-") as tmp:
        local = Path(tmp)
        write(local)
        fs.makedirs(target, exist_ok=True)
        files = sorted((p for p in local.iterdir() if p.is_file()), key=lambda p: p.name == TRAIN_STATE)
        for path in files:  # the state last: its presence marks the checkpoint complete
            dest = posixpath.join(target, path.name)
            if path.name != TRAIN_STATE:
                fs.put_file(str(path), dest)
                continue
            # ...so it must appear whole: a kill mid-copy leaves only the .partial file behind
            fs.put_file(str(path), dest + ".partial")
            fs.mv(dest + ".partial", dest)
    for _, old in _steps(run)[:-KEEP]:
        fs.rm(fsspec.core.url_to_fs(old)[1], recursive=True)
    log.info("checkpoint of step %d at %s", step, target)
    return target
