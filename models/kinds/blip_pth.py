"""Original salesforce/BLIP `.pth` files (`{"model": state_dict}`, read with weights_only=True:
no pickled code runs). They carry no config (models/convert_blip.py reads it off the tensor
shapes) and no tokenizer, so one must be given to load them."""
from __future__ import annotations

from pathlib import Path

from models.convert_blip import load_blip_pth
from models.kinds.base import Look, Probe, adopt_token_ids

SUFFIXES = (".pth", ".pt", ".bin")
NOT_BLIP = ("pytorch_model.bin",)  # transformers' old weights file: its folder is the checkpoint
# what torch.save writes: a zip archive (since torch 1.6) or, before that, a pickle
TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


class BlipPth:
    name = "blip_pth"
    looks = "an original BLIP .pth file"

    def probe(self, look: Look) -> Probe | None:
        if not look.is_file or not look.name.endswith(SUFFIXES) or look.name in NOT_BLIP:
            return None
        if not look.head(4).startswith(TORCH_MAGIC):
            return Probe(look.path, self.name, problem=f"checkpoint {look.path} is not a PyTorch checkpoint "
                                                       "(neither a zip archive nor a pickle)")
        # whether it holds a decoder, an ITM head or both is in its tensors' names: known at load time
        return Probe(look.path, self.name, None, ("captioner", "filter"), tokenizer_problem=(
            f"checkpoint {look.path} is an original BLIP .pth file, which carries no tokenizer: load it once with "
            "Captioner/Filter.from_pretrained(path, tokenizer=...) and save_pretrained it to a folder, then give that folder"))

    def load(self, cls, local: Path, image_size: int | None, tokenizer):
        model = load_blip_pth(cls, local, image_size)
        model.tokenizer = tokenizer
        adopt_token_ids(model, keep_model_ids=False)  # the file has no ids at all
        return model

    def weight_files(self, look: Look) -> list[str]:
        return [look.url()]
