"""MEDConfig: one small dataclass for the whole MED model, with JSON presets named after the model."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from models.errors import CapfiltError

PRESET_DIR = Path(__file__).parent / "configs"

# BLIP Table 3: which text-transformer parts the image-grounded encoder and decoder share.
SHARING = ("all", "all_but_ca", "all_but_sa", "none")


@dataclass
class MEDConfig:
    name: str = "custom"
    # vision (timm ViT, pre-norm)
    image_size: int = 224  # pre-training size
    finetune_image_size: int = 384  # captioner, filter and CapFilt run at this size
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp_ratio: float = 4.0
    vision_eps: float = 1e-6  # BLIP's ViT; transformers' BLIP configs default to 1e-5
    drop_path: float = 0.0
    grad_checkpointing: bool = False
    # text (BERT, post-norm)
    vocab_size: int = 30524  # bert-base-uncased 30,522 + [DEC] + [ENC]
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_ffn: int = 3072
    max_positions: int = 512
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    share: str = "all_but_sa"  # BLIP's default: encoder and decoder differ only in self-attention
    # special tokens (BLIP's tokenizer: WordPiece plus [DEC] = bos and [ENC])
    pad_token_id: int = 0
    cls_token_id: int = 101
    sep_token_id: int = 102
    dec_token_id: int = 30522
    enc_token_id: int = 30523
    # pre-training objectives
    embed_dim: int = 256  # ITC projection
    queue_size: int = 57600  # 0 turns the feature queues off (in-batch negatives only)
    momentum: float = 0.995
    temp: float = 0.07
    alpha: float = 0.4  # momentum-distillation weight, reached after the ramp
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        if self.share not in SHARING:
            raise CapfiltError(f"share={self.share!r} is not one of {SHARING} (BLIP Table 3)")
        for side in ("vision", "text"):
            width, heads = getattr(self, f"{side}_width"), getattr(self, f"{side}_heads")
            if width % heads:
                raise CapfiltError(f"{side}_width={width} is not divisible by {side}_heads={heads}")
        for size in (self.image_size, self.finetune_image_size):
            if size % self.patch_size:
                raise CapfiltError(f"image size {size} is not a multiple of patch_size={self.patch_size}")
        if self.queue_size < 0:
            raise CapfiltError(f"queue_size={self.queue_size} must be >= 0")

    @classmethod
    def from_dict(cls, values: dict) -> "MEDConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CapfiltError(f"unknown MEDConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> "MEDConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise CapfiltError(f"model config {path} does not exist") from None
        except json.JSONDecodeError as err:
            raise CapfiltError(f"model config {path} is not valid JSON: {err}") from None

    @classmethod
    def preset(cls, name: str, **overrides) -> "MEDConfig":
        path = PRESET_DIR / f"{name}.json"
        if not path.exists():
            names = sorted(p.stem for p in PRESET_DIR.glob("*.json"))
            raise CapfiltError(f"no model preset {name!r}; presets: {names}")
        return dataclasses.replace(cls.from_json(path), **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def with_tokenizer(self, tokenizer) -> "MEDConfig":
        """The vocabulary size and special-token ids of a tokenizer built by models.tokenizer."""
        ids = tokenizer.convert_tokens_to_ids
        return dataclasses.replace(
            self,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
            dec_token_id=ids("[DEC]"),
            enc_token_id=ids("[ENC]"),
        )
