"""How the captioner writes: one options type, from a run config to `Captioner.caption` unchanged,
checked in one place."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from models.errors import CapfiltError

# BLIP's captioner prompt: decoding starts after it, and fine-tuning masks it from the LM loss
DEFAULT_PROMPT = "a picture of "
# nucleus: BLIP's CapFilt (diverse captions); beam: BLIP Table 2's comparison; greedy: for debugging
METHODS = ("nucleus", "beam", "greedy")


@dataclass
class SamplingOptions:
    method: str = "nucleus"
    num_captions: int = 1  # per image
    top_p: float = 0.9  # nucleus
    num_beams: int = 3  # beam
    min_length: int = 5  # tokens, the prompt included (transformers' convention)
    max_length: int = 30
    repetition_penalty: float = 1.0
    prompt: str = DEFAULT_PROMPT

    def problems(self, where: str = "captioner") -> list[str]:
        """Every mistake in these options, each naming its key under `where`."""
        out = []
        if self.method not in METHODS:
            out.append(f"{where}.method={self.method!r}: use one of {METHODS}")
        if self.num_captions < 1:
            out.append(f"{where}.num_captions={self.num_captions} must be at least 1")
        if not 0.0 < self.top_p <= 1.0:
            out.append(f"{where}.top_p={self.top_p} must be within (0, 1]")
        if self.num_beams < 1:
            out.append(f"{where}.num_beams={self.num_beams} must be at least 1")
        if self.method == "beam" and self.num_captions > self.num_beams:
            out.append(f"{where}: beam search returns at most num_beams={self.num_beams} captions, "
                       f"not num_captions={self.num_captions}")
        if not 0 <= self.min_length <= self.max_length:
            out.append(f"{where}.min_length={self.min_length} must be within [0, max_length={self.max_length}]")
        if self.repetition_penalty <= 0:
            out.append(f"{where}.repetition_penalty={self.repetition_penalty} must be > 0 (1.0: none)")
        return out

    def check(self, where: str = "captioner") -> "SamplingOptions":
        problems = self.problems(where)
        if problems:
            raise CapfiltError("; ".join(problems))
        return self

    @classmethod
    def of(cls, section) -> "SamplingOptions":
        """The options held by a config section that has these fields (and maybe others)."""
        return cls(**{f.name: getattr(section, f.name) for f in dataclasses.fields(cls)})
