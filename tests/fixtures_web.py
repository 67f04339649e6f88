"""Fixtures for the synthetic web: a small world on disk and a server for it on 127.0.0.1.

Import the fixtures into a test module (`from tests.fixtures_web import local_web, synth_world`).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.world import SynthConfig, generate, serve_folder
from demo.world.serve import QuietHandler

SMALL = SynthConfig(seed=7, web=36, human=12, test=6)
SLOW_SECONDS = 5.0  # well past the 2 s download timeout the tests use


class SlowHandler(QuietHandler):
    """Like the plain server, but anything under /slow/ answers only after SLOW_SECONDS."""

    def do_GET(self) -> None:
        if self.path.startswith("/slow/"):
            time.sleep(SLOW_SECONDS)
        super().do_GET()


@pytest.fixture(scope="session")
def synth_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "world"
    generate(root, SMALL)
    return root


@pytest.fixture(scope="session")
def local_web(synth_world: Path) -> Iterator[str]:
    """Base URL of the world's web/ folder, served with SlowHandler."""
    with serve_folder(synth_world / "web", handler=SlowHandler) as base:
        yield base
