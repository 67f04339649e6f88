"""The image encoder's start: a timm checkpoint through model.vit_init, and the demo's warm-up."""
import json

import numpy as np
import pytest
import torch

from models.config import MEDConfig
from models.errors import CapfiltError
from models.vision import build_vision_encoder
from workflows.train_config import TrainConfig, validate
from workflows.train_loop import build_model
from demo.warmup import CHECKPOINT, FIGURES, train_vision_warmup


def test_labelled_scenes_carry_the_labels_of_their_scene():
    from demo.world.labelled import CLASSES, labelled_scenes
    from demo.world.world import sample_scene

    pixels, labels = labelled_scenes(5, 32, np.random.default_rng(3))
    rng = np.random.default_rng(3)  # the same draws, read back from the scenes themselves
    objects = [sample_scene(rng, (1,)).objects[0] for _ in range(5)]
    assert pixels.shape == (5, 3, 32, 32) and pixels.dtype == torch.uint8
    for attribute, names in CLASSES.items():
        assert [names[int(i)] for i in labels[attribute]] == [getattr(o, attribute) for o in objects]


def test_warmup_learns_colour_on_held_out_scenes_and_is_reused(tmp_path):
    figures = train_vision_warmup(tmp_path, "tiny", 0, steps=150, scenes=600, held_out=200)
    assert figures["chance"]["colour"] == pytest.approx(1 / 4)  # the four colours scenes hold
    # colour is what a ViT reads first (bench/learnability.py): far above chance after 150 steps
    assert figures["accuracy"]["colour"] > 0.6
    stamp = (tmp_path / CHECKPOINT).stat().st_mtime_ns
    assert train_vision_warmup(tmp_path, "tiny", 0, steps=150, scenes=600, held_out=200) == figures
    assert (tmp_path / CHECKPOINT).stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / FIGURES).read_text()) == figures


def test_warmup_schedule_rises_linearly_then_decays_by_cosine_to_zero():
    from demo.warmup import lr_at

    # 1,000 steps: 100 warm-up steps (the cap), then a cosine over the other 900
    assert lr_at(0, 1000, 1e-3) == pytest.approx(1e-5)
    assert lr_at(49, 1000, 1e-3) == pytest.approx(5e-4)
    assert lr_at(100, 1000, 1e-3) == pytest.approx(1e-3)
    assert lr_at(550, 1000, 1e-3) == pytest.approx(5e-4)  # half-way through the cosine: cos(pi/2) = 0
    assert lr_at(1000, 1000, 1e-3) == pytest.approx(0.0, abs=1e-12)
    # a short run warms up over a tenth of its steps
    assert lr_at(1, 20, 1e-3) == pytest.approx(1e-3)


def test_warmup_draws_enough_scenes_for_its_steps(tmp_path):
    figures = train_vision_warmup(tmp_path, "tiny", 16, steps=60, held_out=50, batch_size=100)
    assert figures["scenes"] == 600  # 60 steps x 100 / 10: each scene seen about 10 times
    assert train_vision_warmup(tmp_path / "short", "tiny", 16, steps=3, held_out=50)["scenes"] == 500
    # a warm-up left by other settings (a config changed between runs) is trained again, not reused
    again = train_vision_warmup(tmp_path, "tiny", 16, steps=40, held_out=50, batch_size=100)
    assert (again["steps"], again["scenes"]) == (40, 500)
    assert json.loads((tmp_path / FIGURES).read_text()) == again


def _pretrain_cfg(**model) -> TrainConfig:
    return validate(TrainConfig.from_dict({
        "task": "pretrain", "name": "vit", "data": {"human": ["unused.json"]},
        "model": {"preset": "tiny", "vocab_size": 300, **model}, "optim": {"steps": 1},
    }))


def test_pretraining_starts_both_image_encoders_from_vit_init(tmp_path, tiny_tokenizer):
    torch.manual_seed(7)
    vit = build_vision_encoder(MEDConfig.preset("tiny"))
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    tiny_tokenizer.save_pretrained(tmp_path / "tok")

    model, _ = build_model(_pretrain_cfg(vit_init=str(tmp_path / "vit.pth")), str(tmp_path / "tok"))
    for name, saved in vit.state_dict().items():
        torch.testing.assert_close(model.visual.state_dict()[name], saved, rtol=0, atol=0)
        torch.testing.assert_close(model.visual_m.state_dict()[name], saved, rtol=0, atol=0)
    scratch, _ = build_model(_pretrain_cfg(), str(tmp_path / "tok"))
    assert not torch.equal(scratch.visual.pos_embed, vit.pos_embed)


def test_vit_init_only_starts_a_new_model_and_must_exist(tmp_path, tiny_tokenizer):
    with pytest.raises(CapfiltError, match="model.vit_init starts the image encoder of a new model"):
        _pretrain_cfg(vit_init="vit.pth", init="some/checkpoint")
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    with pytest.raises(CapfiltError, match="vit.pth does not exist"):
        build_model(_pretrain_cfg(vit_init=str(tmp_path / "vit.pth")), str(tmp_path / "tok"))


def test_rounds_report_the_warmup_only_when_they_start_from_it(tmp_path):
    from demo.bootstrap import warmup_figures
    from demo.config import from_dict

    def demo(vision_warmup: int, **model):
        return from_dict({"out": str(tmp_path), "demo": {"vision_warmup": vision_warmup},
                          "train": {"model": {"preset": "tiny", "vocab_size": 100, **model}}}, "demo.yaml")

    cfg = demo(8)
    assert cfg.bootstrap.train.model.vit_init == str(tmp_path / "train" / "vision_warmup" / CHECKPOINT)
    folder = tmp_path / "train" / "vision_warmup"
    assert warmup_figures(cfg) is None  # not run yet
    folder.mkdir(parents=True)
    (folder / FIGURES).write_text(json.dumps({"steps": 8}))
    assert warmup_figures(cfg) == {"steps": 8}
    given = demo(8, vit_init="imagenet_vit.pth")  # a given checkpoint wins: a warm-up left on disk is not the start
    assert given.bootstrap.train.model.vit_init == "imagenet_vit.pth" and warmup_figures(given) is None
    assert warmup_figures(demo(0)) is None and demo(0).bootstrap.train.model.vit_init == ""
