"""A synthetic visual world where the truth of every caption is known (the embedded default's data).

Evaluation reads truth/ and `judge`; the pipeline sees only what a real web would give it.
"""
from demo.world.captions import DEFAULT_MIX, NOISE_TYPES
from demo.world.splits import SynthConfig, generate, load_summary
from demo.world.judge import Verdict, is_correct, judge
from demo.world.render import render, render_jpeg
from demo.world.serve import serve_folder, serve_synthetic, url_list, write_url_list
from demo.world.world import Obj, Scene, sample_scene

__all__ = [
    "DEFAULT_MIX", "NOISE_TYPES", "Obj", "Scene", "SynthConfig", "Verdict", "generate", "is_correct", "judge",
    "load_summary", "render", "render_jpeg", "sample_scene", "serve_folder", "serve_synthetic", "url_list",
    "write_url_list",
]
