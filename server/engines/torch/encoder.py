"""The embedding/rerank engine process: loads a sentence-transformers checkpoint and
merges concurrent requests into shared forward passes (dynamic batching).

Two kinds of checkpoint, told apart by `config.json` (`*ForSequenceClassification`
architectures are cross-encoders):
  bi-encoder     `SentenceTransformer(path)`: the modules declared in `modules.json`
                 (transformer, pooling, normalization, ...) give one vector per sequence,
                 L2-normalized here whatever the modules say.
  cross-encoder  `CrossEncoder(path)`: one logit per (query, document) pair, passed
                 through the checkpoint's activation (sigmoid for one label), as
                 `CrossEncoder.predict` does.

The parent (`embed.py`) tokenizes and validates; this process only sees token ids.
Messages (engines/worker.py): `Submit(EncodeJob)` in; one `Step` per round out, whose
`events[request_id]` is `[array]` (bi-encoder: float32 [n, dims]; cross-encoder: float32
[n]) and `ended[request_id]` "finished" or the error text.

A round takes every job waiting in the pipe, waiting up to `max_wait_ms` after the first
for more (bounded by `max_batch` sequences), sorts all their sequences by length (so a
pass pads little), and runs passes of at most `max_batch` sequences and
`max_batch_tokens` padded tokens. Options: device, dtype, threads (torch intra-op
threads), max_batch (64), max_batch_tokens (32768), max_wait_ms (2).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..worker import Abort, Step, Stop, Submit

log = logging.getLogger("genapi.engine.encoder")

DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_BATCH_TOKENS = 32768
DEFAULT_MAX_WAIT_MS = 2.0


@dataclass
class EncodeJob:
    """Sequences of one request: token ids (and segment ids for cross-encoder pairs).
    `dimensions`: bi-encoder output size (first N values, normalized again)."""

    request_id: str
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None = None
    dimensions: int | None = None


def checkpoint_kind(path: str | Path) -> str:
    """"cross-encoder" when config.json declares a sequence-classification architecture,
    else "bi-encoder"."""
    try:
        archs = json.loads((Path(path) / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        archs = []
    return "cross-encoder" if any(a.endswith("ForSequenceClassification") for a in archs) else "bi-encoder"


def plan_passes(lengths: list[int], max_batch: int, max_tokens: int) -> list[list[int]]:
    """Groups sequence positions into forward passes: sorted by length (longest first, so
    a pass pads to its first sequence), at most `max_batch` sequences and, unless a single
    sequence is longer, `max_tokens` padded tokens (count x longest) per pass."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    passes: list[list[int]] = []
    for i in order:
        cur = passes[-1] if passes else None
        if cur and len(cur) < max_batch and (len(cur) + 1) * lengths[cur[0]] <= max_tokens:
            cur.append(i)
        else:
            passes.append([i])
    return passes


def normalize_rows(matrix: np.ndarray, dimensions: int | None = None) -> np.ndarray:
    """The first `dimensions` columns (all when None), each row scaled to unit L2 norm
    (rows of zeros stay zero). float32."""
    m = np.asarray(matrix, dtype=np.float32)
    if dimensions is not None:
        m = m[:, :dimensions]
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms > 0, norms, 1.0)


class EncoderLoop:
    """The child side (engines/worker.py `factory`): `load()` then `run(conn)`."""

    def __init__(self, name: str, path: str, options: dict):
        self.name, self.path = name, path
        self.options = dict(options)
        self.max_batch = int(self.options.get("max_batch", DEFAULT_MAX_BATCH))
        self.max_tokens = int(self.options.get("max_batch_tokens", DEFAULT_MAX_BATCH_TOKENS))
        self.max_wait_s = float(self.options.get("max_wait_ms", DEFAULT_MAX_WAIT_MS)) / 1000
        self.kind = checkpoint_kind(path)
        self.model = None
        self.device = None
        self.pad_id = 0
        self.use_type_ids = False

    # ---- loading -------------------------------------------------------------------
    def load(self) -> dict:
        import os

        import torch

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a directory, never the hub
        device = self.options.get("device", "auto")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = self.options.get("dtype", "auto")
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("device = 'cuda' but no CUDA device is available")
        if self.options.get("threads"):
            torch.set_num_threads(int(self.options["threads"]))
        from sentence_transformers import CrossEncoder, SentenceTransformer

        cls = CrossEncoder if self.kind == "cross-encoder" else SentenceTransformer
        model = cls(self.path, device=device, local_files_only=True)
        model.to(getattr(torch, dtype)).eval()
        if self.kind == "cross-encoder" and model.num_labels != 1:
            raise RuntimeError(f"a rerank cross-encoder needs one label, this one has {model.num_labels}")
        tokenizer = model.tokenizer
        self.model, self.device = model, torch.device(device)
        self.pad_id = tokenizer.pad_token_id or 0
        self.use_type_ids = "token_type_ids" in tokenizer.model_input_names
        transformer = model[0]
        hf_model = getattr(transformer, "model", None) or getattr(transformer, "auto_model", None)
        info = {
            "kind": self.kind,
            "dimensions": 0 if self.kind == "cross-encoder" else int(model.get_embedding_dimension()),
            "max_input_tokens": int(model.max_seq_length),
            "vocab_size": int(hf_model.get_input_embeddings().num_embeddings),
            "do_lower_case": bool(getattr(transformer, "do_lower_case", False)),
            "tokenizer": tokenizer,  # pickled: the parent tokenizes with the very same one
        }
        log.info("%s: %s %s on %s (%s), %d tokens max%s", self.name, self.kind, type(hf_model).__name__,
                 device, dtype, info["max_input_tokens"],
                 f", {info['dimensions']} dimensions" if info["dimensions"] else "")
        return info

    # ---- forward passes -------------------------------------------------------------
    def _features(self, rows: list[list[int]], types: list[list[int]] | None) -> dict:
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        tt = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
            if types is not None:
                tt[i, :len(r)] = torch.tensor(types[i])
        features = {"input_ids": ids, "attention_mask": mask}
        if self.use_type_ids:
            features["token_type_ids"] = tt
        return {k: v.to(self.device) for k, v in features.items()}

    def forward(self, rows: list[list[int]], types: list[list[int]] | None = None) -> np.ndarray:
        """One pass: float32 [n, dims] raw sentence embeddings, or [n] activated scores."""
        import torch

        with torch.inference_mode():
            out = self.model(self._features(rows, types))
            if self.kind == "cross-encoder":
                return self.model.activation_fn(out["scores"]).float().reshape(-1).cpu().numpy()
            return out["sentence_embedding"].float().cpu().numpy()

    def encode(self, jobs: list[EncodeJob]) -> tuple[dict[str, np.ndarray], int]:
        """Every sequence of `jobs` through shared passes; per request its output rows,
        and the number of passes run."""
        seqs = [(j, k) for j, job in enumerate(jobs) for k in range(len(job.input_ids))]
        lengths = [len(jobs[j].input_ids[k]) for j, k in seqs]
        outputs: list = [None] * len(seqs)
        passes = plan_passes(lengths, self.max_batch, self.max_tokens)
        for group in passes:
            rows = [jobs[seqs[i][0]].input_ids[seqs[i][1]] for i in group]
            types = None
            if self.kind == "cross-encoder":  # pairs always carry their segment ids
                types = [jobs[seqs[i][0]].token_type_ids[seqs[i][1]] for i in group]
            for i, value in zip(group, self.forward(rows, types)):
                outputs[i] = value
        results: dict[str, np.ndarray] = {}
        start = 0
        for job in jobs:
            part = np.stack(outputs[start:start + len(job.input_ids)])
            start += len(job.input_ids)
            results[job.request_id] = part if self.kind == "cross-encoder" else normalize_rows(part, job.dimensions)
        return results, len(passes)

    # ---- the loop ------------------------------------------------------------------
    def run(self, conn) -> None:
        pending: dict[str, EncodeJob] = {}
        while True:
            try:
                if not pending and not self._take(conn.recv(), pending):
                    return
                deadline = time.monotonic() + self.max_wait_s
                while sum(len(j.input_ids) for j in pending.values()) < self.max_batch:
                    if not conn.poll(max(0.0, deadline - time.monotonic())):
                        break
                    if not self._take(conn.recv(), pending):
                        return
                while conn.poll(0):  # whatever else already arrived joins this round
                    if not self._take(conn.recv(), pending):
                        return
            except (EOFError, OSError):
                return
            jobs, pending = list(pending.values()), {}
            if not jobs:
                continue
            try:
                results, passes = self.encode(jobs)
                step = Step(events={rid: [r] for rid, r in results.items()},
                            ended={rid: "finished" for rid in results}, forward_passes=passes)
            except Exception as e:  # a failed pass fails the requests it served, not the engine
                log.exception("%s: forward pass failed", self.name)
                step = Step(ended={j.request_id: f"forward pass failed: {e}" for j in jobs})
            try:
                conn.send(step)
            except (EOFError, OSError):
                return

    @staticmethod
    def _take(msg, pending: dict) -> bool:
        """Files one message; False on Stop."""
        if isinstance(msg, Submit):
            pending[msg.request.request_id] = msg.request
        elif isinstance(msg, Abort):
            pending.pop(msg.request_id, None)
        elif isinstance(msg, Stop):
            return False
        return True
