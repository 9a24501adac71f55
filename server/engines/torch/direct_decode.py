"""Token decoding for the per-step detokenizers, without transformers' per-call wrapper.

Each sequence's `Detokenizer` decodes twice per token; at a few hundred sequences per
step, transformers' `decode` (argument conversion, isinstance checks, special-token
properties) costs more than the Rust decode under it (bench/RESULTS.md, issue 17).
"""
from __future__ import annotations


class DirectDecoder:
    """`decode(ids, skip_special_tokens)` straight from a fast tokenizer's Rust backend:
    the same text as `tokenizer.decode`, which does exactly that when it has no
    clean-up of tokenization spaces to apply."""

    def __init__(self, backend):
        self._decode = backend.decode

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._decode(ids, skip_special_tokens=skip_special_tokens)


def decoder_for(tokenizer):
    """A `DirectDecoder` when that gives the same text as `tokenizer.decode` (a fast
    tokenizer without clean_up_tokenization_spaces), else the tokenizer itself."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return tokenizer
    return DirectDecoder(backend)
