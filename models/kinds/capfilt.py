"""Our own checkpoint folders: config.json naming the class that saved it ("architecture"),
model.safetensors and the tokenizer's files (models/checkpoint.py writes them)."""
from __future__ import annotations

from pathlib import Path

from models.checkpoint import CONFIG, WEIGHTS, load_checkpoint
from models.kinds.base import Look, Probe

# the class that saved a checkpoint -> the roles it can serve: a pre-training checkpoint holds
# every part; MED holds the decoder and its LM head but no ITM head
ROLES_OF = {"BlipPretrain": ("captioner", "filter"), "MED": ("captioner",), "Captioner": ("captioner",),
            "Filter": ("filter",)}


class CapfiltFolder:
    name = "capfilt"
    looks = f"a CapFilt checkpoint folder ({CONFIG}, {WEIGHTS}, tokenizer files)"

    def probe(self, look: Look) -> Probe | None:
        if look.config is None or "architecture" not in look.config:
            return None
        arch = str(look.config["architecture"])
        roles, problem = ROLES_OF.get(arch, ()), None
        if not roles:
            problem = (f"checkpoint {look.path} holds a CapFilt {arch}, which is neither a captioner nor a filter "
                       f"(known: {', '.join(ROLES_OF)})")
        elif WEIGHTS not in look.names:
            problem = f"checkpoint {look.path} has {CONFIG} but no {WEIGHTS}"
        no_tokenizer = None if look.has_tokenizer else (
            f"checkpoint {look.path} carries no tokenizer (tokenizer.json or vocab.txt): save it with its tokenizer")
        return Probe(look.path, self.name, arch, roles, problem, no_tokenizer)

    def load(self, cls, local: Path, image_size: int | None, tokenizer):
        # strict=False: a pre-training checkpoint holds more than a captioner or a filter needs
        model = load_checkpoint(cls, local, image_size, strict=False)
        model.tokenizer = tokenizer
        return model

    def weight_files(self, look: Look) -> list[str]:
        return [look.member(WEIGHTS)] if WEIGHTS in look.names else []
