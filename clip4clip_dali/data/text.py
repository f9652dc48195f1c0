"""Captions to token ids in CLIP4Clip's format, with open_clip's BPE.

The original builds ``[SOT] + tokens`` cut to ``max_words - 1`` entries, appends ``[EOT]`` and
pads with 0; the mask is 1 over SOT..EOT. The EOT id is the largest id, so ``argmax`` finds it.
"""
from __future__ import annotations

import functools

import numpy as np
import torch


@functools.lru_cache(maxsize=1)
def _bpe():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


class Tokenizer:
    def __init__(self, max_words: int = 32):
        if max_words < 3:
            raise ValueError("max_words must be at least 3")
        self.max_words = max_words
        self.bpe = _bpe()
        self.sot = self.bpe.encoder["<start_of_text>"]
        self.eot = self.bpe.encoder["<end_of_text>"]

    def encode(self, caption: str) -> list[int]:
        ids = [self.sot] + self.bpe.encode(caption)
        return ids[: self.max_words - 1] + [self.eot]

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = np.zeros((len(captions), self.max_words), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, caption in enumerate(captions):
            row = self.encode(caption)
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)
