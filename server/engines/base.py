"""The engine interface: a lifecycle base every backend implements, one protocol per
capability (generate, embed, score, transcribe), and the neutral types they speak.

Services translate proto requests into engine requests (`GenerationRequest`: already
templated and tokenized) and engine events back into proto events, so backends never
see protobuf. The registry picks a backend by the model's task and checks that it
implements that task's capability protocol (`CAPABILITIES`).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Literal, Protocol, runtime_checkable

from genapi.config import Task


class EngineError(Exception):
    """Base for errors an engine reports; services map them to gRPC codes."""


class EngineOverloaded(EngineError):
    """Admission control refused the request (-> RESOURCE_EXHAUSTED)."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineInvalidRequest(EngineError):
    """The backend cannot serve this request as asked (-> INVALID_ARGUMENT); `param` names
    the request field at fault when one is (e.g. "response_format")."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


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
class MediaPart:
    """An image or audio clip of a prompt, as bytes (already fetched); the engine's
    processor decodes it. Media parts follow the order of their placeholders."""

    kind: Literal["image", "audio"]
    data: bytes
    mime_type: str = ""


@dataclass(frozen=True)
class Constraint:
    """A grammar that every token of a choice must follow (xgrammar).

    kind: "json_object" (any JSON object; spec unused), "json_schema" (spec: JSON Schema
    text), "structural_tag" (spec: an xgrammar structural-tag JSON text: free text until
    a trigger, then constrained tags), "ebnf" (spec: EBNF/GBNF grammar text), "regex"."""

    kind: Literal["json_object", "json_schema", "structural_tag", "ebnf", "regex"]
    spec: str = ""


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
    media: list[MediaPart] = field(default_factory=list)
    constraint: Constraint | None = None


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


class EngineBase(abc.ABC):
    """Lifecycle every engine has, whatever it serves."""

    name: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Load weights (in the engine's own process where it has one); called once inside
        the event loop. Raises EngineUnavailable when it cannot."""

    async def stop(self) -> None:
        """Release resources at shutdown."""

    def ready(self) -> bool:
        """False once the engine can no longer serve (its process died)."""
        return True

    @abc.abstractmethod
    def stats(self) -> EngineStats: ...


@dataclass
class ChatModelInfo:
    """What callers of a chat engine need to know about its model, set by `start()`."""

    #: Hugging Face tokenizer (chat template, encode, decode).
    tokenizer: Any
    #: Maximum prompt + completion tokens.
    context_length: int
    #: Size of the output distribution (valid token ids are below it).
    vocab_size: int


@runtime_checkable
class Generator(Protocol):
    """Chat / text generation. `generate` yields events until every choice finished;
    closing the stream early (or calling `abort`) removes the request from the batch."""

    chat_info: ChatModelInfo | None

    def generate(self, request: GenerationRequest) -> AsyncIterator[EngineEvent]:
        """Admit the request right away (raise EngineOverloaded when full; this is a plain
        method, not a coroutine) and return an async iterator of its events. The caller
        must end it with `close_events()` whatever happens (finished, cancelled, failed,
        never iterated): closing it before the end aborts the request, so a request
        lives exactly as long as its caller wants it.

        A request with a `constraint` may be refused after admission (its grammar does
        not compile, or not in time): the stream's optional `async ready()` returns once
        the engine accepted it and raises EngineInvalidRequest otherwise; callers await
        it (`wait_ready`) before telling their own caller the request started."""

    async def abort(self, request_id: str) -> None:
        """Drop a request; its sequences leave the batch at the next step."""


async def close_events(events: Any) -> None:
    """Ends a `generate()` stream, aborting its request unless it already ended. Streams
    with a synchronous `close()` are closed before anything is awaited, so the abort
    happens even in a `finally` that a second cancellation interrupts."""
    close = getattr(events, "close", None)
    if callable(close):
        close()
    aclose = getattr(events, "aclose", None)
    if callable(aclose):
        await aclose()


async def wait_ready(events: Any) -> None:
    """Awaits a `generate()` stream's `ready()` where it has one (see Generator)."""
    ready = getattr(events, "ready", None)
    if callable(ready):
        await ready()


@runtime_checkable
class Embedder(Protocol):
    """Text embeddings: many inputs per call, one vector each."""

    async def embed(self, request: Any) -> Any: ...


@runtime_checkable
class Scorer(Protocol):
    """Query/document relevance scores (rerank)."""

    async def score(self, request: Any) -> Any: ...


@runtime_checkable
class Transcriber(Protocol):
    """Speech to text: an async iterator of text, segment and word events."""

    def transcribe(self, request: Any) -> AsyncIterator[Any]: ...


#: The capability protocol an engine must implement to serve a task.
CAPABILITIES: dict[Task, type] = {
    Task.CHAT: Generator,
    Task.EMBEDDING: Embedder,
    Task.RERANK: Scorer,
    Task.TRANSCRIPTION: Transcriber,
}
