"""A bootstrap's console (workflows/console.py), without a bootstrap: step lines numbered as they
start, done already and FAILED, progress lines under their step, what is kept off the console,
and the run log that takes fd 1 and 2 and is appended to by every attempt. (The demo's end-to-end
test in tests/test_demo.py checks the same on a real run.)"""
import logging
import os
import subprocess
import sys

import pytest

from workflows import console


def _attempt(log_file, fail=False):
    with console.plan(["world", "round0 pretrain", "round0 eval"]):
        with console.run_log(log_file):
            with console.step("world") as s:
                console.already_done()
                s.done("3 images")
            with console.step("round0 pretrain") as s:
                logging.getLogger("workflows.train_loop").info("step 10/20  loss 4.300", extra=console.PROGRESS)
                logging.getLogger("workflows.train_loop").info("training in fp32")  # file only
                logging.getLogger("dagster.events").error("STEP_FAILURE - a Dagster event")  # file only
                logging.getLogger("some.library").warning("a library's warning")  # file only
                logging.getLogger("pipeline.run").warning("our own warning")
                print("a print from a library")
                os.write(2, b"written to fd 2 by C code\n")
                subprocess.run([sys.executable, "-c", "print('a subprocess prints')"], check=True)
                s.done("20 steps  loss 4.120")
            with console.step("round0 eval"):
                if fail:
                    raise RuntimeError("boom")


def test_steps_on_the_console_and_everything_in_the_appended_log(tmp_path, capfd):
    log_file = tmp_path / "logs" / "bootstrap.log"
    with console.setup(verbose=False, steps=True):
        _attempt(log_file)
        with pytest.raises(RuntimeError):
            _attempt(log_file, fail=True)
    err = capfd.readouterr().err.splitlines()
    first = err[:err.index(f"the full log: {log_file}", 1)]
    assert first[0] == f"the full log: {log_file}"
    assert first[1:] == [
        "[1/3] world            ...",
        "[1/3] world            done already: 3 images",
        "[2/3] round0 pretrain  ...",
        first[4],
        "WARNING pipeline.run: our own warning",
        first[6],
        "[3/3] round0 eval      ...",
        first[8],
    ]
    assert first[4].startswith("      round0 pretrain  step 10/20  loss 4.300  ") and first[4].endswith(" s")
    assert first[6].startswith("[2/3] round0 pretrain  20 steps  loss 4.120  ")
    assert first[8].startswith("[3/3] round0 eval      ") and first[8].endswith(" s")
    assert err[-2].startswith("[3/3] round0 eval      FAILED after ")
    assert err[-1].startswith("failed after ") and err[-1].endswith(f"the full log: {log_file}")
    text = log_file.read_text()
    assert text.count("\n===== ") == 2  # both attempts, the first kept
    for line in ("training in fp32", "STEP_FAILURE - a Dagster event", "a library's warning", "a print from a library",
                 "written to fd 2 by C code", "a subprocess prints", "[2/3] round0 pretrain  20 steps"):
        assert text.count(line) == 2, line


def test_a_step_outside_a_planned_run_says_nothing(tmp_path, capfd):
    with console.setup(verbose=False, steps=True):
        with console.step("data") as s:  # e.g. the summary naming the data again after the run
            s.done("web")
    assert capfd.readouterr().err == ""
