"""The demo's Dagster definitions: the bootstrap's assets (workflows/dagster_defs.py) with the
demo's injection points. `dagster dev -f demo/dagster_defs.py` shows them (config from
$CAPFILT_DEMO_CONFIG, default configs/demo.yaml); `capfilt demo` materializes them in-process."""
from __future__ import annotations

import os

from demo.bootstrap import embedding
from demo.config import load
from workflows.dagster_defs import build_definitions

_demo = load(os.environ.get("CAPFILT_DEMO_CONFIG", "configs/demo.yaml"))
defs = build_definitions(_demo.bootstrap, embedding(_demo))
