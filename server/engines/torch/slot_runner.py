"""Batched forward passes for Llama-family checkpoints over a slot KV cache.

Each sequence owns one slot of a preallocated cache `[slots, kv_heads, max_len, head_dim]`
per layer. Prefill runs prompts causally and writes their keys/values into their slots (a long
prompt can also be prefilled chunk by chunk with `extend`);
decode runs one token for every active sequence in a single batched pass, attending over
each slot up to that sequence's own length (a padding mask handles the ragged lengths).

The Hugging Face modules do the projections, norms, MLP and rotary embedding, so every
RoPE variant and the numerics of the checkpoint's own code are kept; only attention and
the cache are ours. Works for Llama, Mistral, Qwen2 and Qwen3 layouts (q_norm/k_norm).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .multimodal import embeddable, splice


def supports(model) -> bool:
    """True when the checkpoint has the Llama-family module layout this runner drives."""
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(model, "lm_head"):
        return False
    if not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return False
    layer = inner.layers[0]
    attn = getattr(layer, "self_attn", None)
    cfg = model.config
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", False):
        return False
    if "sliding_attention" in (getattr(cfg, "layer_types", None) or []):
        return False
    return (
        attn is not None
        and all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
        and hasattr(layer, "mlp")
        and hasattr(layer, "input_layernorm")
        and hasattr(layer, "post_attention_layernorm")
    )


class SlotRunner:
    def __init__(self, model, slots: int, max_len: int, device: torch.device, dtype: torch.dtype):
        cfg = model.config
        self.model = model
        self.inner = model.model
        self.layers = list(self.inner.layers)
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.slots = slots
        self.max_len = max_len
        self.device = device
        shape = (slots, self.n_kv, max_len, self.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers]
        self.scale = self.layers[0].self_attn.scaling if hasattr(self.layers[0].self_attn, "scaling") else self.head_dim**-0.5

    def _qkv(self, attn, h, cos, sin):
        b, t, _ = h.shape
        q = attn.q_proj(h).view(b, t, -1, self.head_dim)
        k = attn.k_proj(h).view(b, t, -1, self.head_dim)
        v = attn.v_proj(h).view(b, t, -1, self.head_dim).transpose(1, 2)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        return q, k, v

    def _layer(self, layer, h, attend, cos, sin):
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        q, k, v = self._qkv(attn, x, cos, sin)
        o = attend(q, k, v)
        b, t = h.shape[:2]
        h = h + attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def _logits(self, h):
        return self.model.lm_head(self.inner.norm(h)).float()

    def _embed(self, x: torch.Tensor, media) -> torch.Tensor:
        """Token embeddings [B, T, hidden], with media features in place of their
        placeholders (`media`: one multimodal.MediaSplice or None per row, or None)."""
        if not media or all(m is None for m in media):
            return self.inner.embed_tokens(x)
        return splice(self.inner.embed_tokens(embeddable(x, self.inner.embed_tokens.num_embeddings)), media)

    @torch.inference_mode()
    def prefill(self, slots: list[int], prompts: list[list[int]], media=None) -> torch.Tensor:
        """Runs several prompts, one per slot, in one padded forward pass; returns each
        prompt's next-token logits [B, vocab] (float32). `media`: per prompt, a
        multimodal.MediaSplice (image or audio features for its placeholders) or None."""
        b, n = len(prompts), max(len(p) for p in prompts)
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        x = torch.tensor([p + [0] * (n - len(p)) for p in prompts], device=self.device)
        pos = torch.arange(n, device=self.device).expand(b, n)
        # Causal within each prompt; padded keys masked (padded queries are discarded).
        causal = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
        mask = None if b == 1 else (causal & (pos < lens.unsqueeze(1)).unsqueeze(1)).unsqueeze(1)
        h = self._embed(x, media)
        cos, sin = self.inner.rotary_emb(h, pos)
        for li, layer in enumerate(self.layers):
            def attend(q, k, v, li=li):
                for row, (slot, p) in enumerate(zip(slots, prompts)):
                    self.k[li][slot, :, :len(p)] = k[row, :, :len(p)]
                    self.v[li][slot, :, :len(p)] = v[row, :, :len(p)]
                return F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.scale,
                    enable_gqa=self.n_kv != self.n_heads)
            h = self._layer(layer, h, attend, cos, sin)
        last = h[torch.arange(b, device=self.device), lens - 1]
        return self._logits(last)

    @torch.inference_mode()
    def extend(self, slot: int, tokens: list[int], start: int, media=None) -> torch.Tensor:
        """Chunked prefill: runs `tokens` at positions start.. of `slot`, attending to the
        slot's first `start` cached positions as well; returns the last token's logits
        [1, vocab] (float32). `media`: the prompt's multimodal.MediaSplice (whole-prompt
        positions; the chunk takes its own part) or None."""
        n, end = len(tokens), start + len(tokens)
        x = torch.tensor([tokens], device=self.device)
        pos = torch.arange(start, end, device=self.device).unsqueeze(0)
        # Query i sits at position start + i and sees every key up to it.
        mask = (torch.arange(end, device=self.device) <= pos.view(n, 1)).view(1, 1, n, end)
        h = self._embed(x, [media.window(start, end) if media is not None else None])
        cos, sin = self.inner.rotary_emb(h, pos)
        for li, layer in enumerate(self.layers):
            def attend(q, k, v, li=li):
                kc, vc = self.k[li], self.v[li]
                kc[slot, :, start:end] = k[0]
                vc[slot, :, start:end] = v[0]
                return F.scaled_dot_product_attention(
                    q, kc[slot:slot + 1, :, :end], vc[slot:slot + 1, :, :end], attn_mask=mask, scale=self.scale,
                    enable_gqa=self.n_kv != self.n_heads)
            h = self._layer(layer, h, attend, cos, sin)
        return self._logits(h[:, -1])

    @torch.inference_mode()
    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        """One step for a batch: token i sits at positions[i] of slots[i]. Returns [B, vocab]."""
        b = len(slots)
        x = torch.tensor(tokens, device=self.device).unsqueeze(1)
        pos = torch.tensor(positions, device=self.device)
        sl = torch.tensor(slots, device=self.device)
        span = max(positions) + 1
        # Attention reads the cache as a view over the slot range [lo, hi), never a gathered
        # copy: with holes in the range, queries are scattered into it (idle rows attend
        # to position 0 and are dropped), which costs far less than copying the cache.
        lo, hi = min(slots), max(slots) + 1
        dense = hi - lo == b and slots == sorted(slots)
        rows = sl - lo
        range_pos = pos if dense else torch.zeros(hi - lo, dtype=pos.dtype, device=self.device).index_copy_(0, rows, pos)
        mask = (torch.arange(span, device=self.device) <= range_pos.unsqueeze(1)).view(hi - lo, 1, 1, span)
        h = self.inner.embed_tokens(x)
        cos, sin = self.inner.rotary_emb(h, pos.unsqueeze(1))
        for li, layer in enumerate(self.layers):
            def attend(q, k, v, li=li):
                kc, vc = self.k[li], self.v[li]
                kc[sl, :, pos] = k[:, :, 0]
                vc[sl, :, pos] = v[:, :, 0]
                if not dense:
                    q = q.new_zeros((hi - lo, *q.shape[1:])).index_copy_(0, rows, q)
                out = F.scaled_dot_product_attention(
                    q, kc[lo:hi, :, :span], vc[lo:hi, :, :span], attn_mask=mask, scale=self.scale,
                    enable_gqa=self.n_kv != self.n_heads)
                return out if dense else out[rows]
            h = self._layer(layer, h, attend, cos, sin)
        return self._logits(h[:, -1])

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Shares a prefilled prompt with another choice (n > 1)."""
        for kc, vc in zip(self.k, self.v):
            kc[dst, :, :length] = kc[src, :, :length]
            vc[dst, :, :length] = vc[src, :, :length]

    def free(self, slot: int) -> None:
        """Nothing to release: a slot's stale entries are masked out by the next owner's length."""


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)
