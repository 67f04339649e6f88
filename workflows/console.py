"""What a person sees of a bootstrap (`capfilt bootstrap`, `capfilt demo`), and where the rest goes.

The console shows a line when each step starts and one when it ends, with its time and a key
figure (`[ 3/11] round0 pretrain    200 steps  loss 4.12  72 s`), progress lines between them,
our own warnings and anyone's errors. Everything else (Dagster's event stream, our loggers at
DEBUG, what Ray, img2dataset and the libraries print) goes to the run's log file,
`{out}/logs/bootstrap.log`, which every attempt appends to: a resumed run keeps the first one's.
`--verbose` keeps everything on the console, as every other command does, and still writes the file.

A record is a progress line of the step running when it carries `progress=True`
(`log.info(..., extra=PROGRESS)`); pipeline/ marks its own with that attribute without importing
this module (its arrows point down).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

PROGRESS = {"progress": True}  # extra= of a record that is a progress line of the running step
OURS = ("models", "pipeline", "workflows", "demo")  # our packages: their warnings are for a person
EVENTS = "dagster.events"  # the Python logger Dagster's events go to (workflows/dagster_defs.py)
LOG_FILE = Path("logs") / "bootstrap.log"  # under the run's `out`
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _State:
    steps_only = False  # the console shows steps (setup), and a run log takes the rest
    total = 0  # steps of the run under way (plan); 0: no run is shown
    started = 0
    width = 0
    current: Step | None = None


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


class Step:
    """One step of a planned run: `done(figure)` names what it made, for its closing line."""

    def __init__(self, name: str, number: int):
        self.name, self.number, self.figure, self.reused = name, number, "", False
        self.start = time.perf_counter()

    def done(self, figure: str) -> None:
        self.figure = figure

    def elapsed(self) -> str:
        return _seconds(time.perf_counter() - self.start)

    def number_tag(self) -> str:
        return f"[{self.number:>{len(str(_State.total))}}/{_State.total}]"

    def tag(self) -> str:
        return f"{self.number_tag()} {self.name:<{_State.width}}"


@contextlib.contextmanager
def plan(names: list[str]):
    """The steps a run is about to take (numbered as they start); step lines are shown only
    while a plan runs, so a function that opens a step outside one (the summary naming the data
    again, `dagster dev`) says nothing on the console."""
    _State.total, _State.started, _State.width = len(names), 0, max(map(len, names), default=0)
    try:
        yield
    finally:
        _State.total, _State.current = 0, None


@contextlib.contextmanager
def step(name: str):
    """A line when the step starts, and one when it ends: its figure and time, `done already`
    when it found its work done (already_done), FAILED when it raised."""
    if not _State.total or _State.current is not None:  # no run shown, or inside another step
        yield Step(name, 0)
        return
    _State.started += 1
    s = _State.current = Step(name, _State.started)
    log.info("%s  ...", s.tag())
    try:
        yield s
    except BaseException:
        log.error("%s  FAILED after %s", s.tag(), s.elapsed())
        raise
    finally:
        _State.current = None
    if s.reused:
        log.info("%s  done already%s", s.tag(), f": {s.figure}" if s.figure else "")
    else:
        log.info("%s  %s%s", s.tag(), f"{s.figure}  " if s.figure else "", s.elapsed())


def already_done() -> None:
    """The running step found its work done by an earlier attempt (a resumed run)."""
    if _State.current is not None:
        _State.current.reused = True


class _ForAPerson(logging.Filter):
    """Step and progress lines, our warnings, anyone's errors; never Dagster's event stream (a
    failed step's traceback is in the file; the step's own line and the error say what failed)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == EVENTS or record.name.startswith(EVENTS + "."):
            return False
        if record.name == __name__ or getattr(record, "progress", False):
            return record.levelno >= logging.INFO
        ours = record.name.split(".")[0] in OURS
        return record.levelno >= (logging.WARNING if ours else logging.ERROR)


class _Lines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == __name__:  # step lines, FAILED ones too, are written for the console
            return message
        s = _State.current
        if getattr(record, "progress", False) and s is not None and s.number:  # under its step's name
            return f"{' ' * len(s.number_tag())} {s.name:<{_State.width}}  {message}  {s.elapsed()}"
        if getattr(record, "progress", False):
            return message
        return f"{record.levelname} {record.name}: {message}"


def _console_stream():
    """The console as it is now, kept apart from fd 1 and 2, which a run log takes over: a copy
    of the stream's descriptor, or the stream itself when it has none (pytest's capsys)."""
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    except (AttributeError, OSError, ValueError):
        return sys.stderr


@contextlib.contextmanager
def setup(verbose: bool, steps: bool):
    """The command's logging. steps: a bootstrap's console (step lines; a run log takes the
    rest, see run_log); else, or with verbose, every record at INFO (DEBUG with verbose) on stderr."""
    if verbose or not steps:
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT)
        yield
        return
    root = logging.getLogger()
    handler = logging.StreamHandler(_console_stream())
    handler.addFilter(_ForAPerson())
    handler.setFormatter(_Lines())
    levels = {name: logging.getLogger(name).level for name in ("", *OURS)}
    root.setLevel(logging.INFO)  # libraries' DEBUG (PIL's per-image chunks, fonts) would swamp the file
    for name in OURS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    root.addHandler(handler)
    _State.steps_only = True
    try:
        yield
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if handler.stream is not sys.stderr:
            handler.stream.close()
        _State.steps_only = False


@contextlib.contextmanager
def run_log(path: Path):
    """Append the whole log of this attempt to `path`. Under a steps console (setup) whatever is
    written to stdout or stderr meanwhile goes there too, by descriptor, so that Ray's forwarded
    worker output, C++ warnings, img2dataset's prints and subprocesses reach the file rather than
    the person; Ray Data's progress bars are turned off (they would only fill the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", buffering=1)
    stream.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')}  pid {os.getpid()}  {' '.join(sys.argv)}\n")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    log.info("the full log: %s", path)
    redirected = _redirect(stream) if _State.steps_only else None
    bars = _progress_bars(False) if _State.steps_only else None
    t0 = time.perf_counter()
    try:
        yield
    except BaseException:
        log.error("failed after %s; the full log: %s", _seconds(time.perf_counter() - t0), path)
        raise
    finally:
        if bars is not None:
            _progress_bars(bars)
        if redirected is not None:
            _restore(*redirected)
        root.removeHandler(handler)
        stream.close()


def _redirect(stream):
    """fd 1 and 2 onto the log, and sys.stdout and sys.stderr onto them (they may be other
    objects, as under pytest): what Dagster's own capture of a step's output expects to find."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = (sys.stdout, sys.stderr, os.dup(1), os.dup(2))
    os.dup2(stream.fileno(), 1)
    os.dup2(stream.fileno(), 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    return saved


def _restore(stdout, stderr, fd1: int, fd2: int) -> None:
    sys.stdout.flush(), sys.stderr.flush()
    os.dup2(fd1, 1), os.dup2(fd2, 2)
    os.close(fd1), os.close(fd2)
    sys.stdout, sys.stderr = stdout, stderr


def _progress_bars(enabled: bool) -> bool:
    """Set Ray Data's progress bars on or off; returns what they were."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    before, ctx.enable_progress_bars = ctx.enable_progress_bars, enabled
    return before
