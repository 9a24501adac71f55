"""The engine interface every backend implements, and the neutral types it speaks.

Services translate proto requests into `GenerationRequest` (already templated and
tokenized) and engine events back into proto events, so backends never see protobuf.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import AsyncIterator, Literal


class EngineError(Exception):
    """Base for errors an engine reports; services map them to gRPC codes."""


class EngineOverloaded(EngineError):
    """Admission control refused the request (-> RESOURCE_EXHAUSTED)."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineInvalidRequest(EngineError):
    """The backend cannot serve this request as asked (-> INVALID_ARGUMENT)."""


class EngineUnavailable(EngineError):
    """The backend cannot be used here (missing extra, no GPU) (-> FAILED_PRECONDITION / UNAVAILABLE)."""


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)


@dataclass
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    max_tokens: int  # per choice, already resolved against the context
    n: int = 1
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class TopLogprob:
    token: str
    logprob: float
    bytes: bytes


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    bytes: bytes
    top: list[TopLogprob] = field(default_factory=list)


@dataclass
class TextEvent:
    """New output text of one choice. `num_tokens` counts the tokens generated since
    the previous event of that choice (text may lag tokens: partial UTF-8, a possible
    stop-string prefix held back)."""

    choice: int
    text: str
    num_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class FinishEvent:
    choice: int
    reason: Literal["stop", "length"]
    num_tokens: int = 0  # tokens generated since the previous event of that choice
    stop_sequence: str = ""


EngineEvent = TextEvent | FinishEvent


@dataclass
class EngineStats:
    active_sequences: int = 0
    queued_requests: int = 0
    cache_slots_used: int = 0
    cache_slots_total: int = 0
    requests_finished: int = 0
    requests_aborted: int = 0
    requests_rejected: int = 0
    budget_tokens_used: int = 0


class Engine(abc.ABC):
    """A loaded chat model. `generate` yields events until every choice finished;
    closing the iterator early (or calling `abort`) removes the request from the batch."""

    #: Hugging Face tokenizer (chat template, encode, decode).
    tokenizer: object
    #: Maximum prompt + completion tokens.
    context_length: int
    #: Size of the output distribution (valid token ids are below it).
    vocab_size: int

    @abc.abstractmethod
    async def start(self) -> None:
        """Load weights and start the scheduler; called once inside the event loop."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[EngineEvent]:
        """Admit the request right away (raise EngineOverloaded when full; this is a plain
        method, not a coroutine) and return an async iterator of its events. Closing the
        iterator before the end aborts the request."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Drop a request; its sequences leave the batch at the next step."""

    @abc.abstractmethod
    def stats(self) -> EngineStats: ...

    def ready(self) -> bool:
        return True

    async def stop(self) -> None:
        """Release resources at shutdown."""
