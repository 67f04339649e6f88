"""The synthetic world: deterministic files, the configured noise, Karpathy-style splits, the judge."""
from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from models.errors import CapfiltError
from demo.world import DEFAULT_MIX, NOISE_TYPES, SynthConfig, generate, is_correct, judge, sample_scene
from demo.world.captions import corrupt, describe, realize
from demo.world.splits import scenes, web_rows
from tests.fixtures_web import SMALL, synth_world  # noqa: F401 - fixture
from demo import cli as synth_cmd


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    cfg = SynthConfig(seed=3, web=40, human=10, test=5)
    generate(tmp_path / "a", cfg)
    generate(tmp_path / "b", cfg, workers=2)  # the number of workers must not matter either
    generate(tmp_path / "c", SynthConfig(seed=4, web=40, human=10, test=5))
    a, b, c = (_hashes(tmp_path / x) for x in "abc")
    assert len(a) == 40 + 10 + 5 + 7  # images + synth.json, web.parquet, 2 annotations, 3 truth files
    assert a == b
    assert a.keys() == c.keys()
    differ = [k for k in a if a[k] != c[k]]
    assert len(differ) > 0.9 * len(a)


def _within(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


@pytest.fixture(scope="module")
def web4k() -> tuple[SynthConfig, list[dict]]:
    cfg = SynthConfig(seed=11, web=4000)
    return cfg, web_rows(cfg, scenes(cfg, "web"))


def test_noise_rate_and_mix_as_configured(web4k) -> None:
    cfg, rows = web4k
    n = len(rows)
    kinds = [r["noise"] for r in rows]
    assert _within(sum(k != "clean" for k in kinds), n, cfg.noise)
    for kind in NOISE_TYPES:
        assert _within(kinds.count(kind), n, cfg.noise * DEFAULT_MIX[kind] / sum(DEFAULT_MIX.values())), kind


def test_noise_mix_is_configurable() -> None:
    cfg = SynthConfig(seed=12, web=3000, noise=0.7, mix={"junk": 3, "empty": 1})
    kinds = [r["noise"] for r in web_rows(cfg, scenes(cfg, "web"))]
    assert kinds.count("mismatch") == kinds.count("wrong_attribute") == 0
    assert _within(kinds.count("junk"), 3000, 0.7 * 0.75)
    assert _within(kinds.count("empty"), 3000, 0.7 * 0.25)
    assert _within(kinds.count("clean"), 3000, 0.3)


def test_truth_rows_say_what_each_alt_text_is(web4k) -> None:
    _, rows = web4k
    by_key = {r["key"]: r for r in rows}
    for r in rows:
        if r["noise"] == "clean":
            assert r["caption"] == r["clean_caption"]
        elif r["noise"] == "mismatch":
            assert r["source_key"] != r["key"] and r["caption"] == by_key[r["source_key"]]["clean_caption"]
        elif r["noise"] == "wrong_attribute":
            assert r["attribute"] in {"colour", "shape", "size", "position", "relation"} and r["caption"] != r["clean_caption"]
        elif r["noise"] == "empty":
            assert r["caption"] == ""
    kinds = {r["attribute"] for r in rows if r["noise"] == "wrong_attribute"}
    assert kinds == {"colour", "shape", "size", "position", "relation"}


def test_judge_true_for_clean_false_for_one_wrong_attribute(web4k) -> None:
    _, rows = web4k
    for r in rows:
        v = judge(r, r["clean_caption"])  # a truth row (its scene JSON) is enough to judge
        assert v.correct and v.complete, (r["clean_caption"], v)
        if r["noise"] == "wrong_attribute":
            assert not is_correct(r, r["caption"]), (r["attribute"], r["caption"], r["scene"])
        if r["noise"] in ("junk", "empty"):
            assert not is_correct(r, r["caption"]), r["caption"]


def test_judge_on_fresh_scenes_and_hand_written_captions() -> None:
    for i in range(2000):
        rng = np.random.default_rng([99, i])
        scene = sample_scene(rng)
        plan = describe(scene, rng)
        assert is_correct(scene, realize(plan))
        assert not is_correct(scene, realize(corrupt(plan, scene, rng)[0]))
    scene = sample_scene(np.random.default_rng(0))
    o = scene.objects[0]
    assert is_correct(scene, f"there is a {o.colour} {o.shape} somewhere")
    wrong = next(c for c in ("red", "blue", "green", "white") if all(x.colour != c for x in scene.objects))
    assert not is_correct(scene, f"a {wrong} {o.shape}")
    assert not is_correct(scene, "IMG_2031.jpg") and not is_correct(scene, "")


def test_human_and_test_read_like_coco_karpathy(synth_world: Path) -> None:  # noqa: F811 - fixture
    def karpathy(ann_file: Path, image_root: Path) -> list[tuple[Image.Image, object, str]]:
        # What BLIP's coco_karpathy datasets do: a JSON list of {image, caption, image_id}, images under a root.
        out = []
        for ann in json.load(open(ann_file)):
            img = Image.open(image_root / ann["image"]).convert("RGB")
            out.append((img, ann["caption"], ann["image_id"]))
        return out

    human = karpathy(synth_world / "annotations" / "human.json", synth_world)
    assert len(human) == SMALL.human * SMALL.human_captions
    assert len({i for _, _, i in human}) == SMALL.human
    assert all(isinstance(c, str) and c and img.size == (64, 64) for img, c, _ in human)
    test = karpathy(synth_world / "annotations" / "test.json", synth_world)
    assert len(test) == SMALL.test
    assert all(len(caps) == 5 and len(set(caps)) >= 3 for _, caps, _ in test)
    truth = pq.read_table(synth_world / "truth" / "human.parquet").to_pylist()
    assert all(is_correct(t, t["caption"]) for t in truth)


def test_keys_are_stable_unique_and_dotless(synth_world: Path) -> None:  # noqa: F811 - fixture
    web = pq.read_table(synth_world / "web.parquet").to_pylist()
    keys = [r["key"] for r in web]
    assert keys == [f"web_{i:06d}" for i in range(SMALL.web)]
    assert all("." not in k for k in keys)
    assert all((synth_world / "web" / r["file"]).is_file() for r in web)
    truth = pq.read_table(synth_world / "truth" / "web.parquet")
    assert truth.column("key").to_pylist() == keys


def test_bad_settings_and_folders_get_one_clear_error(tmp_path: Path, synth_world: Path) -> None:  # noqa: F811
    for bad in (SynthConfig(noise=1.5), SynthConfig(mix={"typo": 1.0}), SynthConfig(image_size=4), SynthConfig(web=-1)):
        with pytest.raises(CapfiltError):
            generate(tmp_path / "x", bad)
    with pytest.raises(CapfiltError, match="not empty"):
        generate(synth_world, SMALL)


def test_synth_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    synth_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth", "--out", str(tmp_path / "w"), "--seed", "5", "--web", "30", "--human", "4",
                              "--test", "2", "--noise", "0.5", "--mix", "junk=1,empty=1", "--image-size", "48", "--workers", "1"])
    assert args.func(args) == 0
    summary = json.loads((tmp_path / "w" / "synth.json").read_text())
    assert summary["config"]["mix"] == {"junk": 1.0, "empty": 1.0} and summary["counts"]["web"] == 30
    assert Image.open(tmp_path / "w" / "web" / "web_000000.jpg").size == (48, 48)
    assert "30 web" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", "--out", "x", "--mix", "typo=1"])


def test_objects_limits_how_many_objects_a_scene_holds() -> None:
    from demo.world.splits import scenes

    one = scenes(SynthConfig(web=300, objects=[1]), "web")
    assert {len(s.objects) for s in one} == {1}
    two_three = [len(s.objects) for s in scenes(SynthConfig(web=300, objects=[2, 3]), "web")]
    # N_OBJECTS_P's odds renormalised: 2 objects with p = 0.40 / 0.65
    assert set(two_three) == {2, 3} and _within(two_three.count(2), 300, 0.40 / 0.65)
    with pytest.raises(CapfiltError, match="objects must list scene sizes"):
        SynthConfig(objects=[4]).validate()


def test_injected_copies_are_byte_copies_under_fresh_alt_texts_the_truth_knows(tmp_path: Path) -> None:
    from demo.world.duplicates import inject
    from demo.world.world import Scene

    generate(tmp_path, SynthConfig(seed=4, web=20, human=0, test=0, image_size=32))
    assert inject(tmp_path, 0.25, seed=4) == 5
    web = pq.read_table(tmp_path / "web.parquet").to_pylist()
    truth = {r["key"]: r for r in pq.read_table(tmp_path / "truth" / "web.parquet").to_pylist()}
    of = json.loads((tmp_path / "synth.json").read_text())["duplicates"]["of"]
    assert len(web) == len(truth) == 25 and len(of) == 5 and len(set(of.values())) == 5
    for copy, original in of.items():
        assert (tmp_path / "web" / f"{copy}.jpg").read_bytes() == (tmp_path / "web" / f"{original}.jpg").read_bytes()
        assert truth[copy]["scene"] == truth[original]["scene"]  # the same picture: judged against its scene
        assert truth[copy]["judged_correct"] == is_correct(Scene.from_json(truth[copy]["scene"]), truth[copy]["caption"])
    assert [w["caption"] for w in web if w["key"] in of] != [truth[o]["caption"] for o in of.values()]  # fresh texts
    assert inject(tmp_path, 0.25, seed=4) == 5 and len(pq.read_table(tmp_path / "web.parquet")) == 25  # a rerun
    with pytest.raises(CapfiltError, match="holds 5 injected copies already"):
        inject(tmp_path, 0.5, seed=4)


def test_the_worlds_rules_two_on_opposite_sides_and_wrong_shapes_from_its_own_shapes() -> None:
    """The demo's world: three shapes, smooth grounds; two objects sit left and right or top and
    bottom (so they always have a relation to state); a wrong-shape text names a shape the world
    draws and the scene lacks (never one no image shows, which a filter could drop unseen)."""
    from demo.world.vocab import WORLD_SHAPES
    from demo.world.world import BACKGROUNDS

    wrong_shapes = 0
    for i in range(600):
        rng = np.random.default_rng([7, i])
        scene = sample_scene(rng, counts=(1, 2))
        assert {o.shape for o in scene.objects} <= set(WORLD_SHAPES) and scene.background in BACKGROUNDS
        if len(scene.objects) == 2:
            assert {o.slot for o in scene.objects} in ({"left", "right"}, {"top", "bottom"}), scene
        plan = describe(scene, rng)
        bad, attribute = corrupt(plan, scene, rng)
        if attribute == "shape":
            wrong_shapes += 1
            named = {m.shape for m in bad.mentions} - {m.shape for m in plan.mentions}
            assert named and named <= set(WORLD_SHAPES) - {o.shape for o in scene.objects}, (scene, realize(bad))
    assert wrong_shapes > 50  # the rule was exercised, not skipped
    # a scene that holds every shape of the world gets no wrong-shape text at all
    full = next(s for s in (sample_scene(np.random.default_rng([8, i]), counts=(3,)) for i in range(500))
                if {o.shape for o in s.objects} == set(WORLD_SHAPES))
    for i in range(50):
        rng = np.random.default_rng([9, i])
        assert corrupt(describe(full, rng), full, rng)[1] != "shape"


def test_a_one_object_caption_says_where_its_object_is() -> None:
    """With colour and shape alone a caption fits many images, so ITM's in-batch hard negatives
    would often be true pairs (bench/false_negatives.py): every one-object caption names the
    object's place, read back by the judge's parser (not by the template it came from)."""
    from demo.world.judge import parse

    for i in range(300):
        rng = np.random.default_rng([11, i])
        scene = sample_scene(rng, counts=(1,))
        text = realize(describe(scene, rng))
        claims = parse(text).claims
        assert len(claims) == 1 and claims[0].slot == scene.objects[0].slot, text
