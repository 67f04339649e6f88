"""A synthetic visual world where the truth of every caption is known (the embedded default's data).

Evaluation reads truth/ and `judge`; the pipeline sees only what a real web would give it.
"""
from pipeline.synth.captions import DEFAULT_MIX, NOISE_TYPES
from pipeline.synth.splits import SynthConfig, generate, load_summary
from pipeline.synth.judge import Verdict, is_correct, judge
from pipeline.synth.render import render, render_jpeg
from pipeline.synth.serve import serve_folder, serve_synthetic, url_list, write_url_list
from pipeline.synth.world import Obj, Scene, sample_scene

__all__ = [
    "DEFAULT_MIX", "NOISE_TYPES", "Obj", "Scene", "SynthConfig", "Verdict", "generate", "is_correct", "judge",
    "load_summary", "render", "render_jpeg", "sample_scene", "serve_folder", "serve_synthetic", "url_list",
    "write_url_list",
]
