"""What a rerun into an output may do with what it finds there: resume, reuse, refuse or restart.

- nothing of ours there: a fresh start;
- partial work (OUT/.capfilt/run.json, no manifest) of the same identity: resume it;
- a finished dataset (manifest.json) of the same identity: reuse it, nothing to do;
- either of another identity, or work without a recorded identity: refused, with one message
  naming what changed and the ways out, unless `restart` asks to discard it all first.
See pipeline/identity.py for what an identity holds.
"""
from __future__ import annotations

import json
import logging

import fsspec

from models.errors import CapfiltError
from pipeline import identity as ident
from pipeline import manifest as mf
from pipeline.outputs import OutputRoot

log = logging.getLogger(__name__)
_RUN = f"{ident.WORK}/{ident.RUN}"
_DOWNLOAD = f"{ident.WORK}/{ident.DOWNLOAD}"
_DOWNLOAD_RECORD = f"{ident.WORK}/{ident.DOWNLOAD_RECORD}"
MAX_CHANGES = 12  # lines of "what changed" in a refusal


def _root(out: str) -> OutputRoot:
    fs, path = fsspec.core.url_to_fs(out)
    return OutputRoot(fs, path.rstrip("/"))


def settle(out: str, identity: dict, restart: bool = False) -> dict | None:
    """The manifest of the finished run in `out` when it is this run (nothing to do); else None,
    once `out` is ready for this run's work: fresh, resumed, or (restart) emptied of the old one,
    and its run.json written."""
    root = _root(out)
    if root.fs.exists(root.path(mf.MANIFEST)):
        done = mf.read(out)
        old = ident.from_manifest(done)
        if old == identity and not restart:
            log.info("%s already holds this run, complete: nothing to do", out)
            root.rm(root.path(f"{ident.WORK}/{ident.STAGING}"), recursive=True)  # left by a kill after the manifest
            return done
        if not restart:
            raise refusal(out, diff(old, identity), finished=True)
    else:
        old = ident.read_json(root, _RUN)
        if old == identity and not restart:
            log.info("resuming the run in %s: its identity is unchanged", out)
            return None
        if not restart and (old is not None or _has_work(root)):
            raise refusal(out, diff(old, identity), finished=False)
    if restart:
        log.warning("restart: discarding the work and outputs in %s", out)
    discard(root)
    ident.write_json(root, _RUN, identity)  # before anything else is written: all that follows is this run's
    return None


def _has_work(root: OutputRoot) -> bool:
    names = (*ident.LEGACY, "shards", "rejected", f"{ident.WORK}/{ident.STAGING}", f"{ident.WORK}/{ident.CHECKPOINT}",
             _DOWNLOAD)
    return any(root.fs.exists(root.path(n)) for n in names)


def discard(root: OutputRoot) -> None:
    """Remove a run's outputs and work, the manifest first (the output then reads as incomplete).
    The download cache stays: `prepare_download` judges it by its own identity."""
    for name in (*ident.PUBLISHED, *ident.LEGACY, f"{ident.WORK}/{ident.STAGING}", f"{ident.WORK}/{ident.CHECKPOINT}",
                 _RUN):
        root.rm(root.path(name), recursive=True)


def prepare_download(out: str, record: dict) -> str:
    """The download folder of a URL-list run in `out`, emptied unless it was made from the same list
    with the same settings (img2dataset's incremental mode would keep another list's shards)."""
    root = _root(out)
    folder = root.path(_DOWNLOAD)
    if ident.read_json(root, _DOWNLOAD_RECORD) != record:
        if root.fs.exists(folder):
            log.info("the download cache in %s was made from another URL list or settings: downloading again", out)
        root.rm(folder, recursive=True)
        ident.write_json(root, _DOWNLOAD_RECORD, record)
    return ident.work(out, ident.DOWNLOAD)


def refusal(out: str, changes: list[str], finished: bool) -> CapfiltError:
    what = "a finished dataset" if finished else "the partial work (interrupted, not finished) of a run"
    again = "To reuse it, run the config that made it" if finished else "To resume it, run the config that started it"
    lost = "delete that dataset and make this one in its place" if finished else "discard the partial work and start over"
    return CapfiltError(
        f"{mf.scrub_text(out)} holds {what} of another identity than this run's:\n  - " + "\n  - ".join(changes)
        + f"\n{again}; to make this run, give a new output folder, or run it again with {ident.RESTART_HINT} "
        f"to {lost}.")


def diff(old: dict | None, new: dict) -> list[str]:
    """What changed from `old` to `new`, one line each, e.g. "filter.threshold 0.5 -> 0.0"."""
    if not isinstance(old, dict) or not old:
        return ["its identity was not recorded (made by a version before identities, or its record is lost)"]
    out = []
    if old.get("version") != new.get("version"):
        out.append(f"capfilt version {old.get('version')} -> {new.get('version')}")
    if old.get("precision") != new.get("precision"):
        out.append(f"the models' precision on this machine {old.get('precision')} -> {new.get('precision')} "
                   "(compute.precision; auto follows the hardware)")
    out += _params(old.get("params") or {}, new.get("params") or {})
    out += _inputs(old.get("inputs") or [], new.get("inputs") or [])
    out += _models(old.get("models") or [], new.get("models") or [])
    if not out and old != new:
        out.append(f"the identity's format {old.get('format')} -> {new.get('format')}")
    return out[:MAX_CHANGES] + ([f"... and {len(out) - MAX_CHANGES} more"] if len(out) > MAX_CHANGES else [])


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        out.update(_flat(v, name + ".") if isinstance(v, dict) and v else {name: v})
    return out


def _show(value) -> str:
    return "(unset)" if value is _UNSET else json.dumps(value, ensure_ascii=False)


_UNSET = object()


def _params(old: dict, new: dict) -> list[str]:
    a, b = _flat(old), _flat(new)
    return [f"{k} {_show(a.get(k, _UNSET))} -> {_show(b.get(k, _UNSET))}"
            for k in sorted(a.keys() | b.keys()) if a.get(k, _UNSET) != b.get(k, _UNSET)]


def _where(entry: dict) -> str:
    return str(entry.get("url_list") or entry.get("parquet") or entry)


def _inputs(old: list, new: list) -> list[str]:
    a, b = {_where(e): e for e in old}, {_where(e): e for e in new}
    out = []
    gone, added = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
    if gone or added:
        show = lambda paths: ", ".join(paths[:3]) + (f" (+{len(paths) - 3} more)" if len(paths) > 3 else "")  # noqa: E731
        out.append(f"input {show(gone) or '(none)'} -> {show(added) or '(none)'}")
    changed = [p for p in sorted(a.keys() & b.keys()) if a[p] != b[p]]
    for p in changed[:3]:
        x, y = a[p].get("sha256") or "", b[p].get("sha256") or ""
        how = f"sha256 {x[:12]}… -> {y[:12]}…" if x != y else "its tar's size or checksum differs"
        out.append(f"input {p} changed in place ({how})")
    if len(changed) > 3:
        out.append(f"... {len(changed) - 3} more input shards changed")
    return out


def _models(old: list, new: list) -> list[str]:
    out = []
    for i in range(max(len(old), len(new))):
        x = old[i] if i < len(old) else {}
        y = new[i] if i < len(new) else {}
        role = y.get("role") or x.get("role")
        if x.get("checkpoint") != y.get("checkpoint") or x.get("role") != y.get("role"):
            out.append(f"{role} checkpoint {x.get('checkpoint', '(none)')} -> {y.get('checkpoint', '(none)')}")
        elif x.get("sha256") != y.get("sha256"):
            out.append(f"{role} checkpoint {y.get('checkpoint')} holds other weights "
                       f"(sha256 {str(x.get('sha256'))[:12]}… -> {str(y.get('sha256'))[:12]}…)")
    return out
