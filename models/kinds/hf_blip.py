"""transformers' BLIP folders (`save_pretrained` of BlipForConditionalGeneration, which loads as a
Captioner, or BlipForImageTextRetrieval, a Filter): config.json with "architectures",
model.safetensors (read with safetensors: no pickle), and the tokenizer's files. The weight and
config mapping, shared with the export, is models/convert_hf.py."""
from __future__ import annotations

import logging
from pathlib import Path

from safetensors.torch import load_file

from models.checkpoint import CONFIG, WEIGHTS, load_state
from models.convert_hf import ARCHITECTURES, check_tied, hf_to_ours, med_config_from_hf
from models.errors import CapfiltError
from models.kinds.base import Look, Probe, adopt_token_ids, role_of

log = logging.getLogger(__name__)

KNOWN = " and ".join(f"{arch} (as a {role.capitalize()})" for arch, role in ARCHITECTURES.items())


class HfBlipFolder:
    name = "hf_blip"
    looks = f"a transformers BLIP folder (save_pretrained of {' or '.join(ARCHITECTURES)})"

    def probe(self, look: Look) -> Probe | None:
        config = look.config
        if config is None or "architecture" in config:  # ours name one "architecture"
            return None
        archs = config.get("architectures") or []
        arch = str(archs[0]) if archs else None
        if not (config.get("model_type") == "blip" or (arch or "").startswith("Blip")):
            return None
        if arch is not None and arch not in ARCHITECTURES:
            return Probe(look.path, self.name, arch, problem=f"checkpoint {look.path} holds a transformers {arch}: "
                                                             f"CapFilt loads {KNOWN}")
        # no class named: both roles, the weights tell at load time
        roles = (ARCHITECTURES[arch],) if arch else ("captioner", "filter")
        problem = no_tokenizer = None
        if WEIGHTS not in look.names:
            other = sorted(n for n in look.names if n.endswith((".bin", ".safetensors", ".pth")))
            hint = f" (it has {', '.join(other)}: re-save it with save_pretrained, which writes one {WEIGHTS})"
            problem = f"checkpoint {look.path} is a transformers BLIP folder without {WEIGHTS}" + (hint if other else "")
        if not look.has_tokenizer:
            no_tokenizer = (f"checkpoint {look.path} carries no tokenizer (tokenizer.json or vocab.txt): "
                            "save it with its tokenizer")
        return Probe(look.path, self.name, arch, roles, problem, no_tokenizer)

    def load(self, cls, local: Path, image_size: int | None, tokenizer):
        model = load_hf_blip(cls, local, image_size)
        model.tokenizer = tokenizer
        adopt_token_ids(model, keep_model_ids=True)  # the HF config's pad/sep/bos ids are the model's own
        return model

    def weight_files(self, look: Look) -> list[str]:
        return [look.member(WEIGHTS)] if WEIGHTS in look.names else []


def load_hf_blip(cls, folder: Path, image_size: int | None = None):
    """Build `cls` (Captioner or Filter) from a transformers BLIP `save_pretrained` folder whose
    probe found no problem (models/loaders.py load)."""
    from transformers import BlipConfig  # transformers' BLIP modules take seconds to import: only when used

    folder = Path(folder)
    want = role_of(cls)
    state = load_file(str(folder / WEIGHTS))
    # a config naming no class was taken for both roles: the weights tell which it holds
    holds = "captioner" if any(k.startswith("text_decoder.") for k in state) else "filter"
    if holds != want:
        raise CapfiltError(f"{folder} holds a {holds} (by its weights), not a {want}: "
                           f"load it with {holds.capitalize()}.from_pretrained")
    try:
        hf_config = BlipConfig.from_pretrained(str(folder), local_files_only=True)
    except (ValueError, TypeError, OSError) as err:
        raise CapfiltError(f"{folder}/{CONFIG} is not a valid transformers BLIP config: {err}") from None
    cfg = med_config_from_hf(hf_config)
    check_tied(state, str(folder), "text_decoder.")
    ours = {}
    for name, tensor in state.items():
        new = hf_to_ours(name)
        if new is None:
            if not name.endswith("position_ids"):
                log.warning("%s: ignoring %s, which has no place in a %s", folder, name, want)
            continue
        ours.setdefault(new, tensor)  # a tied alias never overwrites the tensor it aliases
    model = cls(cfg, image_size=image_size)
    load_state(model, ours, str(folder), strict=True)
    log.info("loaded %s from transformers BLIP folder %s", cls.__name__, folder)
    return model
