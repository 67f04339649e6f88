"""MED structure: presets, encoder/decoder sharing, attention masks, checkpoints across image sizes."""
import dataclasses

import pytest
import timm
import torch
import torch.nn.functional as F

from models.config import SHARING, MEDConfig
from models.errors import CapfiltError
from models.med import MED
from models.pretrain import BlipPretrain
from models.tokenizer import encode
from models.vision import build_vision_encoder, load_timm_weights
from tests.conftest import CORPUS


@pytest.mark.parametrize("preset, timm_name", [("base", "vit_base_patch16_224"), ("large", "vit_large_patch16_224")])
def test_vision_presets_are_timms_vits(preset, timm_name):
    with torch.device("meta"):
        ours = build_vision_encoder(MEDConfig.preset(preset))
        reference = timm.create_model(timm_name, pretrained=False, num_classes=0)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(ours) == shapes(reference)
    assert ours.norm.eps == 1e-6


def test_base_text_side_is_bert_base():
    cfg = MEDConfig.preset("base")
    with torch.device("meta"):
        model = MED(cfg)
    encoder = model.text_encoder
    assert encoder.embeddings.word.weight.shape == (30524, 768)
    assert len(encoder.layers) == 12 and encoder.layers[0].self_attn.heads == 12
    assert encoder.layers[0].ffn.fc1.weight.shape == (3072, 768)
    assert encoder.layers[0].cross_attn.key.weight.shape == (768, 768)  # image tokens are 768 wide


def test_presets_reject_bad_values():
    with pytest.raises(CapfiltError, match="not one of"):
        MEDConfig.preset("tiny", share="some")
    with pytest.raises(CapfiltError, match="no model preset"):
        MEDConfig.preset("huge")
    with pytest.raises(CapfiltError, match="unknown MEDConfig keys"):
        MEDConfig.from_dict({"hidden_size": 3})


def _shared(a, b):
    return all(x is y for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("share", SHARING)
def test_sharing_strategies_share_the_same_parameter_objects(tiny_cfg, share):
    model = MED(dataclasses.replace(tiny_cfg, share=share))
    enc, dec = model.text_encoder, model.text_decoder
    assert _shared(enc.embeddings, dec.embeddings) == (share != "none")
    for e, d in zip(enc.layers, dec.layers):
        assert _shared(e.ffn, d.ffn) == (share != "none")
        assert _shared(e.self_attn, d.self_attn) == (share in ("all", "all_but_ca"))
        assert _shared(e.cross_attn, d.cross_attn) == (share in ("all", "all_but_sa"))
    assert model.lm_head.word_embeddings.weight is dec.embeddings.word.weight  # tied output matrix


def test_a_decoder_update_moves_shared_weights_but_not_the_encoders_self_attention(tiny_cfg, tiny_tokenizer):
    torch.manual_seed(0)
    model = MED(tiny_cfg)  # default: all but self-attention shared
    assert tiny_cfg.share == "all_but_sa"
    ids, padding = encode(tiny_tokenizer, CORPUS[:4])
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    logits = model.decode(ids, padding, model.encode_image(torch.randn(4, 3, 64, 64)))
    F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    moved = {n for n, p in model.named_parameters(remove_duplicate=False) if not torch.equal(p, snapshot[n])}
    assert "text_encoder.layers.0.ffn.fc1.weight" in moved
    assert "text_encoder.layers.1.cross_attn.query.weight" in moved
    assert "text_encoder.embeddings.word.weight" in moved
    assert "text_decoder.layers.0.self_attn.query.weight" in moved
    assert not any(n.startswith("text_encoder.") and ".self_attn." in n for n in moved)


def _logits_with_token_changed(model, ids, padding, position, image_embeds):
    changed = ids.clone()
    changed[:, position] = (changed[:, position] + 7) % model.cfg.dec_token_id
    outs = []
    for x in (ids, changed):
        outs.append(
            {
                "decoder": model.decode(x, padding, image_embeds),
                "text": model.encode_text(x, padding),
                "grounded": model.encode_grounded(x, padding, image_embeds),
            }
        )
    return outs


def test_decoder_mask_is_causal_and_encoder_masks_are_not(tiny_cfg, tiny_tokenizer):
    torch.manual_seed(0)
    model = MED(tiny_cfg).eval()
    ids, padding = encode(tiny_tokenizer, CORPUS[:2])
    padding = torch.ones_like(padding)
    image_embeds = model.encode_image(torch.randn(2, 3, 64, 64))
    with torch.no_grad():
        before, after = _logits_with_token_changed(model, ids, padding, 5, image_embeds)
    # the decoder's positions 0..4 cannot see token 5; position 5 onwards can
    torch.testing.assert_close(before["decoder"][:, :5], after["decoder"][:, :5], rtol=0, atol=1e-6)
    assert (before["decoder"][:, 5:] - after["decoder"][:, 5:]).abs().amax(-1).min() > 1e-4
    for mode in ("text", "grounded"):  # bidirectional: every position sees token 5
        assert (before[mode][:, :5] - after[mode][:, :5]).abs().amax(-1).min() > 1e-4


def test_padding_is_invisible(tiny_cfg, tiny_tokenizer):
    torch.manual_seed(0)
    model = MED(tiny_cfg).eval()
    ids, padding = encode(tiny_tokenizer, ["a red ball", "a small red circle to the left of a blue square"])
    n = int(padding[0].sum())
    assert n < ids.shape[1]
    image_embeds = model.encode_image(torch.randn(2, 3, 64, 64))
    with torch.no_grad():
        before, after = _logits_with_token_changed(model, ids, padding, n, image_embeds)  # a padded slot
    for mode in ("decoder", "text", "grounded"):
        torch.testing.assert_close(before[mode][0, :n], after[mode][0, :n], rtol=0, atol=1e-6)


def test_checkpoint_saved_at_pretraining_size_loads_at_finetuning_size(tiny_cfg, tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = BlipPretrain(tiny_cfg)
    model.save_pretrained(tmp_path / "ckpt", tokenizer=tiny_tokenizer)
    big = BlipPretrain.from_pretrained(tmp_path / "ckpt", image_size=tiny_cfg.finetune_image_size)
    assert big.image_size == 96 and big.visual.pos_embed.shape == (1, 1 + 12 * 12, 128)
    # reference: the 8x8 grid of the saved table, bicubic-resized to 12x12 by hand; [CLS] kept
    for name in ("visual", "visual_m"):
        old = getattr(model, name).pos_embed.detach()
        grid = old[:, 1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
        expected = F.interpolate(grid, size=(12, 12), mode="bicubic", align_corners=False)
        expected = torch.cat([old[:, :1], expected.permute(0, 2, 3, 1).reshape(1, 144, -1)], dim=1)
        torch.testing.assert_close(getattr(big, name).pos_embed.detach(), expected)
    for name, p in model.state_dict().items():
        if not name.endswith("pos_embed"):
            assert torch.equal(p, big.state_dict()[name]), name
    # sharing survives the round trip (shared tensors are stored once)
    assert big.text_decoder.layers[0].ffn.fc1.weight is big.text_encoder.layers[0].ffn.fc1.weight
    ids, padding = encode(tiny_tokenizer, CORPUS[:2])
    losses = big(torch.randn(2, 3, 96, 96), ids, padding)
    assert all(torch.isfinite(v) for v in losses.values())


def test_checkpoint_errors_are_clear(tiny_cfg, tmp_path):
    with pytest.raises(CapfiltError, match="no config.json"):
        MED.from_pretrained(tmp_path)
    model = MED(tiny_cfg)
    model.save_pretrained(tmp_path / "ok")
    with pytest.raises(CapfiltError, match=r"text_encoder.layers.0.ffn.fc1.weight has shape \(512, 128\).*\(256, 128\)"):
        MED.from_pretrained(tmp_path / "ok", text_ffn=256)
    (tmp_path / "ok" / "model.safetensors").unlink()
    with pytest.raises(CapfiltError, match="no model.safetensors"):
        MED.from_pretrained(tmp_path / "ok")


def test_vit_starts_from_a_timm_checkpoint_file(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    imagenet = timm.create_model(
        "vit_base_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=128, depth=3,
        num_heads=4, num_classes=10,
    )
    torch.save(imagenet.state_dict(), tmp_path / "vit.pth")
    ours = build_vision_encoder(tiny_cfg)
    load_timm_weights(ours, tmp_path / "vit.pth")
    assert torch.equal(ours.blocks[2].mlp.fc1.weight, imagenet.blocks[2].mlp.fc1.weight)
    assert torch.equal(ours.patch_embed.proj.weight, imagenet.patch_embed.proj.weight)
    assert ours.pos_embed.shape == (1, 65, 128)  # 4x4 grid resampled to 8x8
    torch.testing.assert_close(ours.pos_embed[:, 0], imagenet.pos_embed[:, 0])


def test_gradient_checkpointing_gives_the_same_gradients(tiny_cfg):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    grads = []
    for flag in (False, True):
        torch.manual_seed(1)
        vit = build_vision_encoder(dataclasses.replace(tiny_cfg, grad_checkpointing=flag))
        assert vit.grad_checkpointing == flag
        vit.forward_features(images).square().mean().backward()
        grads.append(vit.blocks[0].attn.qkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])
