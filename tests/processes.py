"""Finding this test process's own Ray workers by their process title, to kill one by PID."""
from __future__ import annotations

import os
from pathlib import Path


def _descends_from(pid: int, ancestor: int, depth: int = 6) -> bool:
    for _ in range(depth):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])  # the parent's PID
        except (OSError, ValueError, IndexError):
            return False
        if pid == ancestor:
            return True
    return False


def our_pids(title: str) -> list[int]:
    """PIDs whose command line holds `title` (Ray names a worker after its actor class) and that
    descend from this process: another run on the machine is never touched."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if title.encode() in cmdline and _descends_from(int(entry), os.getpid()):
                pids.append(int(entry))
    return pids
