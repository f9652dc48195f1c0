"""Captions to token ids in CLIP4Clip's format, with open_clip's BPE.

The original builds ``[SOT] + tokens`` cut to ``max_words - 1`` entries, appends ``[EOT]`` and
pads with 0; the mask is 1 over SOT..EOT. The EOT id is the largest id, so ``argmax`` finds it.

Marker spellings follow the original (OpenAI's tokenizer): ``<|startoftext|>`` and
``<|endoftext|>`` written inside a caption become the marker ids, while open_clip's own
``<start_of_text>``/``<end_of_text>`` are ordinary text. Checked against the original's ids on
43 awkward captions in ``tests/test_golden.py``.
"""
from __future__ import annotations

import functools

import numpy as np
import regex
import torch

_MARKERS = ("<|startoftext|>", "<|endoftext|>")
# Bounds on what reaches the BPE, whose cost grows with the square of a word's length (a query
# of one 40,000-character word took 35 s). CLIP keeps at most 77 tokens, which real text
# reaches long before either bound, so they change nothing for captions or queries a person
# writes.
MAX_TEXT_CHARS = 1024
MAX_WORD_CHARS = 64
# OpenAI CLIP's pre-tokenisation pattern (the original's), with its marker spellings
_PAT = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|"""
                     r"""[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


@functools.lru_cache(maxsize=1)
def _bpe():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def bound_text(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` as the tokenizer reads it: at most ``limit`` characters (runs of white space
    count as one). Every caption and query goes through it before BPE."""
    if not isinstance(text, str):
        raise TypeError(f"captions and queries are text, got {type(text).__name__}: {text!r:.80}")
    if len(text) <= limit:
        return text
    return " ".join(text[: 16 * limit].split())[:limit]


class Tokenizer:
    def __init__(self, max_words: int = 32):
        if max_words < 3:
            raise ValueError("max_words must be at least 3")
        self.max_words = max_words
        self.bpe = _bpe()
        self.sot = self.bpe.encoder["<start_of_text>"]
        self.eot = self.bpe.encoder["<end_of_text>"]
        self._marker_ids = dict(zip(_MARKERS, (self.sot, self.eot)))

    def bpe_ids(self, caption: str) -> list[int]:
        """BPE ids of ``caption`` as the original's ``tokenize`` + ``convert_tokens_to_ids``
        (of ``bound_text(caption)``, each word cut to ``MAX_WORD_CHARS``)."""
        from open_clip.tokenizer import basic_clean, whitespace_clean

        bpe = self.bpe
        ids: list[int] = []
        for token in _PAT.findall(whitespace_clean(basic_clean(bound_text(caption))).lower()):
            if token in self._marker_ids:
                ids.append(self._marker_ids[token])
                continue
            token = "".join(bpe.byte_encoder[b] for b in token[:MAX_WORD_CHARS].encode("utf-8"))
            ids.extend(bpe.encoder[t] for t in bpe.bpe(token).split(" "))
        return ids

    def encode(self, caption: str) -> list[int]:
        ids = [self.sot] + self.bpe_ids(caption)
        return ids[: self.max_words - 1] + [self.eot]

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = np.zeros((len(captions), self.max_words), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, caption in enumerate(captions):
            row = self.encode(caption)
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)
