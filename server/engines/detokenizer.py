"""Incremental detokenization with stop strings.

Text is released only when it is complete UTF-8 and cannot be the start of a stop
string, so stop text never reaches the client even when it spans several tokens.
"""
from __future__ import annotations


class Detokenizer:
    def __init__(self, tokenizer, prompt_ids: list[int], stop: list[str]):
        self.tok = tokenizer
        self.stop = [s for s in stop if s]
        self.max_stop = max((len(s) for s in self.stop), default=0)
        # A few prompt tokens of context make the first tokens decode with the
        # right leading spaces for tokenizers that strip them at the start.
        self.ids: list[int] = list(prompt_ids[-4:])
        self.prefix = 0
        self.read = len(self.ids)
        self.text = ""  # decoded completion text so far
        self.released = 0  # chars of self.text already handed out

    def push(self, token: int) -> None:
        self.ids.append(token)
        prefix_text = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        full = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(full) > len(prefix_text) and not full.endswith("\ufffd"):
            self.text += full[len(prefix_text):]
            self.prefix, self.read = self.read, len(self.ids)

    def take(self) -> tuple[str, str | None]:
        """Returns (releasable text, matched stop string or None). After a match the
        text up to the stop string is returned and nothing more should be pushed."""
        if self.stop:
            start = max(0, self.released - self.max_stop + 1)
            hit = None
            for s in self.stop:
                i = self.text.find(s, start)
                if i != -1 and (hit is None or i < hit[0]):
                    hit = (i, s)
            if hit:
                out = self.text[self.released:hit[0]]
                self.released = hit[0]
                return out, hit[1]
            end = len(self.text) - self._held_suffix()
        else:
            end = len(self.text)
        out = self.text[self.released:end]
        self.released = max(self.released, end)
        return out, None

    def flush(self) -> str:
        """At the end of generation: everything not yet released (no stop matched),
        including tokens held back as an incomplete UTF-8 character (decoded with U+FFFD)."""
        if self.read < len(self.ids):
            prefix_text = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
            self.text += self.tok.decode(self.ids[self.prefix:], skip_special_tokens=True)[len(prefix_text):]
            self.prefix = self.read = len(self.ids)
        out = self.text[self.released:]
        self.released = len(self.text)
        return out

    def _held_suffix(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        tail = self.text[max(self.released, len(self.text) - self.max_stop + 1):]
        for n in range(len(tail), 0, -1):
            t = tail[-n:]
            if any(s.startswith(t) for s in self.stop):
                return n
        return 0


def _byte_level_table() -> dict[str, int]:
    """Byte-level BPE spells raw bytes with printable characters: the 188 printable
    Latin-1 bytes stand for themselves and the other 68 are shifted to 256 upwards."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {chr(b): b for b in keep}
    extra = 0
    for b in range(256):
        if b not in keep:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_BYTE_LEVEL = _byte_level_table()


def token_bytes(tokenizer, token_id: int) -> bytes:
    """The raw UTF-8 bytes of one token (possibly a partial character)."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if piece and all(c in _BYTE_LEVEL for c in piece) and token_id not in tokenizer.all_special_ids:
        return bytes(_BYTE_LEVEL[c] for c in piece)
    return tokenizer.decode([token_id], skip_special_tokens=False).encode("utf-8", "replace")
