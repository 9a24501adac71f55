"""Well-formed UTF-8 for constrained sequences of byte-level vocabularies.

A byte-level tokenizer can spell one character over several byte tokens. xgrammar (0.2.9)
checks the grammar's characters but admits some byte sequences that are not UTF-8
(overlong forms such as E0 80 80, surrogates ED A0..BF): they decode to U+FFFD each, so a
string the grammar counted as one character becomes three, and a schema's maxLength or
pattern no longer holds on the decoded text. `Utf8Table` tracks, per constrained
sequence, where it stands inside a character and forbids the tokens whose bytes would
break well-formedness there (RFC 3629, section 4), so what the grammar accepted is what
the client decodes.
"""
from __future__ import annotations

import torch

# Decoder states: (continuation bytes still due, range of the next one). State 0 is
# "between characters"; states 4-7 are the lead bytes whose second byte is restricted.
STATES = ((0, 0x80, 0xBF), (1, 0x80, 0xBF), (2, 0x80, 0xBF), (3, 0x80, 0xBF),
          (2, 0xA0, 0xBF), (2, 0x80, 0x9F), (3, 0x90, 0xBF), (3, 0x80, 0x8F))
BETWEEN = 0


def step(state: int, byte: int) -> int | None:
    """The state after `byte`, or None when the byte cannot come there."""
    due, lo, hi = STATES[state]
    if due:
        return due - 1 if lo <= byte <= hi else None  # states 0..3: later bytes are 80..BF
    if byte < 0x80:
        return 0
    if 0xC2 <= byte <= 0xDF:
        return 1
    if 0xE1 <= byte <= 0xEF and byte != 0xED:
        return 2
    if 0xF1 <= byte <= 0xF3:
        return 3
    return {0xE0: 4, 0xED: 5, 0xF0: 6, 0xF4: 7}.get(byte)


class Utf8Table:
    """allowed: [states, vocab] bool (the token may follow that state); following:
    state -> list of the state after each token (-1 where not allowed)."""

    def __init__(self, token_bytes: list[bytes], device: torch.device):
        follow = []
        for s in range(len(STATES)):
            row = []
            for raw in token_bytes:
                state: int | None = s
                for b in raw:
                    state = step(state, b)
                    if state is None:
                        break
                row.append(-1 if state is None else state)
            follow.append(row)
        self.following = follow
        self.allowed = torch.tensor(follow, device=device) >= 0

    @torch.inference_mode()  # the logits come from the model's inference mode
    def mask(self, logits: torch.Tensor, rows: list[int], states: list[int]) -> None:
        """Forbidden tokens of each row -> -inf, in place; a row left with no token (a
        vocabulary without the bytes to finish a character) keeps its logits."""
        for row, state in zip(rows, states):
            masked = logits[row].masked_fill(~self.allowed[state], float("-inf"))
            if torch.isfinite(masked).any():
                logits[row] = masked

    def after(self, state: int, token: int) -> int:
        """The state once `token` is emitted (between characters when it was not allowed)."""
        return max(self.following[state][token], BETWEEN)
