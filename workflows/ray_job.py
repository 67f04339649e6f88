"""The entrypoint of a bootstrap job submitted to a Ray cluster (workflows/launch.py RayJobs):

    python -m workflows.ray_job      # run by the cluster's job server, never by hand

It opens the Dagster Pipes session the submitter set up (its context arrives in the job's
environment), takes the job from the session's extras (`kind`: train or capfilt, `config`: the
job's whole config), runs it here, on the cluster (RAY_ADDRESS, set by the job server, makes
`train` and `run` join it), and sends the result back as one Pipes message. A config that is
wrong fails here with the same one message as on the command line, in the job's log.
"""
from __future__ import annotations

import json
import logging
import sys

from dagster_pipes import open_dagster_pipes

import workflows.train as train_jobs
from pipeline import run as capfilt_run
from pipeline.config import RunConfig, build
from pipeline.config import validate as validate_run
from workflows.train_config import TrainConfig, validate


def run_job(kind: str, config: dict) -> dict:
    """The job's result, JSON-safe, as `train` or `pipeline.run.run` returns it."""
    if kind == "train":
        result = train_jobs.train(validate(TrainConfig.from_dict(config)))
    elif kind == "capfilt":
        values = dict(config)
        every = float(values.pop("progress_every"))  # RayJobs.capfilt sends it
        result = capfilt_run.run(validate_run(build(RunConfig, values, "the submitted CapFilt config")), progress_every=every)
    else:
        raise ValueError(f"unknown job kind {kind!r}: train or capfilt")
    return json.loads(json.dumps(result, default=str))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    with open_dagster_pipes() as pipes:
        kind, config = pipes.get_extra("kind"), pipes.get_extra("config")
        pipes.log.info(f"capfilt {kind} job on the Ray cluster")
        pipes.report_custom_message({"result": run_job(kind, config)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
