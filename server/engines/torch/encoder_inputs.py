"""Tokenization and validation of embedding and rerank inputs (pure functions of a
Hugging Face tokenizer): the engine's parent side runs them before a request reaches the
engine process, so every refusal names the input at fault.

Rules (the errors are EngineInvalidRequest, param in OpenAI's words):
- a text is tokenized with special tokens (as sentence-transformers does, lower-cased
  first when the checkpoint says `do_lower_case`); token ids are used as they are and
  must be below the model's vocabulary size;
- empty texts and empty token lists are refused;
- a sequence longer than the model's limit is refused, naming the limit, unless
  `truncate` is set: then it is cut to min(truncate, limit) tokens, keeping the first
  ones (texts keep their closing special token; pairs are cut longest-first, as
  `CrossEncoder` does);
- the request's tokens together may not exceed `max_request_tokens`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..base import EngineInvalidRequest


@dataclass
class TokenizerSpec:
    tokenizer: object
    max_input_tokens: int
    vocab_size: int
    do_lower_case: bool = False


def _cap(spec: TokenizerSpec, truncate: int | None, pair: bool) -> int | None:
    if not truncate:
        return None
    specials = spec.tokenizer.num_special_tokens_to_add(pair=pair)
    return max(min(truncate, spec.max_input_tokens), specials + 1)


def _too_long(param: str, n: int, spec: TokenizerSpec, what: str) -> EngineInvalidRequest:
    return EngineInvalidRequest(
        f"Invalid '{param}': {what} has {n} tokens, more than this model's limit of {spec.max_input_tokens} "
        "tokens. Shorten it, or set truncate_prompt_tokens to truncate it.", param.split("[")[0])


def _label(param: str, i: int) -> str:
    return param if param == "query" else f"{param}[{i}]"


def _prepare(spec: TokenizerSpec, text: str) -> str:
    return text.lower() if spec.do_lower_case else text


def check_total(total: int, limit: int, param: str) -> None:
    if total > limit:
        raise EngineInvalidRequest(f"Invalid '{param}': the request has {total} tokens, more than the "
                                   f"{limit} allowed per request.", param)


def tokenize_inputs(spec: TokenizerSpec, inputs: list[str | list[int]], truncate: int | None,
                    max_request_tokens: int, param: str = "input") -> tuple[list[list[int]], int]:
    """Token ids of each input (texts or id lists) and their total count."""
    cap = _cap(spec, truncate, pair=False)
    texts = [(i, s) for i, s in enumerate(inputs) if isinstance(s, str)]
    rows: list = [None] * len(inputs)
    for i, s in enumerate(inputs):
        if not s:
            raise EngineInvalidRequest(f"Invalid '{_label(param, i)}': an input may not be empty.", param)
    if texts:
        tok = spec.tokenizer([_prepare(spec, s) for _, s in texts], add_special_tokens=True, verbose=False)
        long = []
        for (i, _), ids in zip(texts, tok["input_ids"]):
            rows[i] = ids
            if len(ids) > spec.max_input_tokens or (cap and len(ids) > cap):
                long.append(i)
        if long and cap is None:
            i = long[0]
            raise _too_long(_label(param, i), len(rows[i]), spec, "the input")
        if long:
            cut = spec.tokenizer([_prepare(spec, inputs[i]) for i in long], add_special_tokens=True,
                                 truncation=True, max_length=cap, verbose=False)["input_ids"]
            for i, ids in zip(long, cut):
                rows[i] = ids
    for i, s in enumerate(inputs):
        if isinstance(s, str):
            continue
        bad = next((t for t in s if not 0 <= t < spec.vocab_size), None)
        if bad is not None:
            raise EngineInvalidRequest(f"Invalid '{_label(param, i)}': token id {bad} is out of this model's "
                                       f"vocabulary (ids 0 to {spec.vocab_size - 1}).", param)
        if len(s) > spec.max_input_tokens and cap is None:
            raise _too_long(_label(param, i), len(s), spec, "the input")
        rows[i] = list(s[:cap] if cap else s)
    total = sum(len(r) for r in rows)
    check_total(total, max_request_tokens, param)
    return rows, total


def tokenize_pairs(spec: TokenizerSpec, query: str, documents: list[str], truncate: int | None,
                   max_request_tokens: int) -> tuple[list[list[int]], list[list[int]], int]:
    """Token ids and segment ids of each (query, document) pair, and their total count."""
    if not query:
        raise EngineInvalidRequest("Invalid 'query': it may not be empty.", "query")
    for i, d in enumerate(documents):
        if not d:
            raise EngineInvalidRequest(f"Invalid 'documents[{i}]': a document may not be empty.", "documents")
    cap = _cap(spec, truncate, pair=True)
    q = _prepare(spec, query)
    docs = [_prepare(spec, d) for d in documents]
    enc = spec.tokenizer([q] * len(docs), docs, add_special_tokens=True, verbose=False)
    ids = list(enc["input_ids"])
    types = list(enc.get("token_type_ids") or [[0] * len(r) for r in ids])
    long = [i for i, r in enumerate(ids) if len(r) > spec.max_input_tokens or (cap and len(r) > cap)]
    if long and cap is None:
        raise _too_long(f"documents[{long[0]}]", len(ids[long[0]]), spec, "the query with this document")
    if long:
        cut = spec.tokenizer([q] * len(long), [docs[i] for i in long], add_special_tokens=True,
                             truncation="longest_first", max_length=cap, verbose=False)
        cut_types = cut.get("token_type_ids") or [[0] * len(r) for r in cut["input_ids"]]
        for i, r, t in zip(long, cut["input_ids"], cut_types):
            ids[i], types[i] = r, t
    total = sum(len(r) for r in ids)
    check_total(total, max_request_tokens, "documents")
    return ids, types, total
