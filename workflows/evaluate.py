"""Evaluation as BLIP reports it: image-text retrieval both ways (ITC top-k candidates reranked by
ITM match logit + ITC similarity, R@1/5/10) and captioning (BLEU-4 and CIDEr with pycocoevalcap)
on a Karpathy-style test split."""
from __future__ import annotations

import io
import logging
import re

import fsspec
import numpy as np
import torch
from PIL import Image

from models.captioner import Captioner
from models.checkpoint import local_folder, read_config
from models.filter import Filter
from models.precision import DEFAULT_PRECISION
from models.sampling import DEFAULT_PROMPT
from workflows.train_data import default_image_root, karpathy_images, pre_caption

log = logging.getLogger(__name__)


def recall_at_k(i2t: np.ndarray, t2i: np.ndarray, img2txt: list[list[int]], txt2img: list[int],
                ks=(1, 5, 10)) -> dict[str, float]:
    """BLIP's itm_eval: an image's rank is that of its best-placed true text; a text's rank that
    of its image. Scores: (images, texts) and (texts, images), higher is better. In percent."""
    ranks_i = np.array([min(int(np.where(np.argsort(-row) == t)[0][0]) for t in img2txt[i]) for i, row in enumerate(i2t)])
    ranks_t = np.array([int(np.where(np.argsort(-row) == txt2img[t])[0][0]) for t, row in enumerate(t2i)])
    out = {}
    for k in ks:
        out[f"txt_r{k}"] = 100.0 * float(np.mean(ranks_i < k))
        out[f"img_r{k}"] = 100.0 * float(np.mean(ranks_t < k))
    out["r_mean"] = float(np.mean(list(out.values())))
    return out


def _tokens(text: str) -> str:
    """pycocoevalcap's scorers want space-separated tokens (its PTB tokenizer needs Java)."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def caption_scores(candidates: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    res = {k: [_tokens(v)] for k, v in candidates.items()}
    gts = {k: [_tokens(r) for r in references[k]] for k in candidates}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider": float(cider)}


def load_test(annotations: str, image_root: str = "") -> tuple[list[str], list[np.ndarray], list[list[str]]]:
    root = (image_root or default_image_root(annotations)).rstrip("/")
    keys, images, captions = [], [], []
    for path, caps in karpathy_images(annotations):
        with fsspec.open(f"{root}/{path}", "rb") as fh:
            images.append(np.asarray(Image.open(io.BytesIO(fh.read())).convert("RGB")))
        keys.append(path)
        captions.append(caps)
    return keys, images, captions


@torch.inference_mode()
def retrieval_scores(filt, images: list[np.ndarray], texts: list[str], k_test: int, batch_size: int = 64):
    """(i2t, t2i) score matrices: -100 off the ITC top-k, ITM match logit + ITC similarity on it."""
    image_embeds, image_feat = [], []
    for a in range(0, len(images), batch_size):
        with filt.autocast():
            emb = filt.encode_image(np.stack(images[a:a + batch_size]))
            image_feat.append(torch.nn.functional.normalize(filt.vision_proj(emb[:, 0]).float(), dim=-1))
        image_embeds.append(emb)
    image_embeds, image_feat = torch.cat(image_embeds), torch.cat(image_feat)
    text_feat = torch.cat([filt.features(texts=texts[a:a + batch_size])[0] for a in range(0, len(texts), batch_size)])
    ids, padding = filt._tokens(texts, 35)
    sims = image_feat @ text_feat.T  # (I, T)
    i2t = torch.full_like(sims, -100.0)
    t2i = torch.full_like(sims.T, -100.0)
    k_i2t, k_t2i = min(k_test, sims.shape[1]), min(k_test, sims.shape[0])
    with filt.autocast():
        for i in range(sims.shape[0]):
            top_sim, top = sims[i].topk(k_i2t)
            logits = filt.itm_logits(image_embeds[[i]], ids[top], padding[top], torch.zeros_like(top))
            i2t[i, top] = logits[:, 1] + top_sim
        for t in range(sims.shape[1]):
            top_sim, top = sims[:, t].topk(k_t2i)
            logits = filt.itm_logits(image_embeds[top], ids[[t]].expand(len(top), -1), padding[[t]].expand(len(top), -1),
                                     torch.arange(len(top), device=top.device))
            t2i[t, top] = logits[:, 1] + top_sim
    return i2t.cpu().numpy(), t2i.cpu().numpy()


def evaluate(checkpoint: str, test: str, image_root: str = "", k_test: int = 256, num_beams: int = 3,
             max_length: int = 20, min_length: int = 5, batch_size: int = 64, device: str | None = None,
             prompt: str = DEFAULT_PROMPT, captioner: str = "", image_size: int = 0,
             precision: str = DEFAULT_PRECISION) -> dict:
    """Retrieval figures of `checkpoint` (the filter, or any model with ITC/ITM) and captioning
    figures of `captioner` (default: the same checkpoint) on a Karpathy test file."""
    with local_folder(checkpoint) as local:
        _, cfg = read_config(local)
    size = image_size or cfg.finetune_image_size
    keys, images, captions = load_test(test, image_root)
    texts, txt2img, img2txt = [], [], []
    for i, caps in enumerate(captions):
        img2txt.append(list(range(len(texts), len(texts) + len(caps))))
        texts += [pre_caption(c) for c in caps]
        txt2img += [i] * len(caps)
    filt = Filter.from_pretrained(checkpoint, image_size=size, device=device, precision=precision)
    i2t, t2i = retrieval_scores(filt, images, texts, k_test, batch_size)
    figures = recall_at_k(i2t, t2i, img2txt, txt2img)
    del filt
    cap = Captioner.from_pretrained(captioner or checkpoint, image_size=size, device=device, precision=precision)
    written = {}
    for a in range(0, len(images), batch_size):
        out = cap.caption(np.stack(images[a:a + batch_size]), method="beam", num_beams=num_beams,
                          max_length=max_length, min_length=min_length, prompt=prompt)
        written.update({keys[a + j]: c[0] for j, c in enumerate(out)})
    figures.update(caption_scores(written, dict(zip(keys, captions))))
    figures.update(images=len(images), texts=len(texts), image_size=size, k_test=k_test, precision=cap.precision)
    log.info("evaluation of %s on %s: %s", checkpoint, test, figures)
    return {"figures": figures, "captions": written}
