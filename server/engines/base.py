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
from typing import Any, AsyncIterator, Callable, Literal, Protocol, runtime_checkable

from genapi.config import Task


class EngineError(Exception):
    """Base for errors an engine reports; services map them to gRPC codes."""


class EngineOverloaded(EngineError):
    """Admission control refused the request (-> RESOURCE_EXHAUSTED)."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineInvalidRequest(EngineError):
    """The backend cannot serve this request as asked (-> INVALID_ARGUMENT).

    `reason` is the OpenAI error code (ErrorInfo.reason, e.g. "context_length_exceeded")
    and `param` the request field at fault, when the backend knows them."""

    def __init__(self, message: str, param: str | None = None, reason: str = "invalid_value"):
        super().__init__(message)
        self.param = param
        self.reason = reason


class EngineUnavailable(EngineError):
    """The backend cannot be used here (missing extra, no GPU) (-> FAILED_PRECONDITION / UNAVAILABLE)."""


# Below this temperature sampling is greedy (as in vLLM): dividing logits by a tiny or
# subnormal temperature overflows float32 to inf, and softmax to NaN.
GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass
class SamplingParams:
    temperature: float = 1.0  # below GREEDY_BELOW_TEMPERATURE (0 included): greedy
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)


#: media kind -> the checkpoint config section of its encoder
ENCODER_CONFIGS = {"image": "vision_config", "audio": "audio_config"}


def media_kinds(config) -> tuple[str, ...]:
    """The media kinds a checkpoint config takes ("image" with a `vision_config`, "audio"
    with an `audio_config`); empty for a text-only model."""
    return tuple(kind for kind, section in ENCODER_CONFIGS.items() if getattr(config, section, None) is not None)


#: The media kinds a prompt can hold: the ContentPart fields, MediaInput.kind,
#: ChatModelInfo.media and TensorRT-LLM's multi_modal_data keys alike.
MEDIA_KINDS = ("image", "audio")


@dataclass
class MediaInput:
    """One image or audio clip of a prompt as the model's processor prepared it (in the
    core, where the prompt is templated): `arrays` are the processor outputs for this part
    alone, e.g. {"pixel_values": float32 [1, 3, H, W]} for an image (plus "image_sizes"
    for processors that give them), {"input_features": float32 [1, mel, frames],
    "feature_attention_mask": [1, frames]} for audio. The prompt already holds the part's
    placeholder tokens; the engine's encoder turns `arrays` into the features that replace
    them. Media inputs follow the order of their placeholders in the prompt.

    `placeholder` and `span` say where the part stands: the token id the chat template
    wrote for it, and (start, length) of the tokens that replaced it in the prompt (for
    backends that take the template's prompt and expand it themselves: TensorRT-LLM).
    `source`: the decoded part (RGB PIL image, float32 samples), kept only for engines
    whose ChatModelInfo.raw_media asks for it."""

    kind: Literal["image", "audio"]
    arrays: dict[str, Any] = field(default_factory=dict)
    placeholder: int = -1
    span: tuple[int, int] = (0, 0)
    source: Any = None


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
    media: list[MediaInput] = field(default_factory=list)  # in placeholder order
    constraint: Constraint | None = None
    #: max_tokens is only what the context leaves (the caller gave none and the model has
    #: no max_output_tokens): the token budget charges the completion as it is generated
    #: instead of reserving the whole context up front (see BudgetCharge).
    charge_by_use: bool = False


@dataclass
class BudgetCharge:
    """What one request holds of an engine's token budget (`max_budget_tokens`): its prompt
    plus `reserved` (choices × max_tokens) from admission on, or, when it is charged by use
    (`reserved` 0), its prompt plus the tokens generated so far."""

    prompt: int
    reserved: int
    generated: int = 0

    @classmethod
    def of(cls, request: GenerationRequest, choices: int | None = None) -> "BudgetCharge":
        """`choices`: sequences the engine really runs (default request.n)."""
        per_choice = 0 if request.charge_by_use else request.max_tokens
        return cls(len(request.prompt_ids), per_choice * (request.n if choices is None else choices))

    @property
    def tokens(self) -> int:
        return self.prompt + max(self.reserved, self.generated)

    def add(self, generated: int) -> int:
        """Counts `generated` more tokens; returns how much the charge grew (0 while they
        fit in what was reserved)."""
        before = self.tokens
        self.generated += generated
        return self.tokens - before


class Reservation:
    """A request's place in an engine's admission, taken by `Generator.reserve` before the
    request is templated and tokenized, so that a full engine refuses it before that work.
    `generate(request, reservation)` takes it over (from then on the request's end gives
    the place back); `release()` gives it back if the request never gets there. Idempotent."""

    def __init__(self, n: int, on_release: Callable[["Reservation"], None]):
        self.n = n
        self._on_release: Callable[["Reservation"], None] | None = on_release

    def take(self) -> None:
        """The engine's generate() owns the place now: release() does nothing."""
        self._on_release = None

    def release(self) -> None:
        give_back, self._on_release = self._on_release, None
        if give_back is not None:
            give_back(self)


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


#: Timing observers (server/metrics.py registers one): called as `fn(kind, model, seconds)`
#: with kind "step" (one decode step of a chat engine's batch) or "queue" (a request's wait
#: from submission to its batch slots). Engines call `observe`; it never raises.
OBSERVERS: list = []


def observe(kind: str, model: str, seconds: float) -> None:
    for fn in OBSERVERS:
        try:
            fn(kind, model, seconds)
        except Exception:  # a metrics bug must not break the engine's reader thread
            pass


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
    forward_passes: int = 0  # embedding/rerank engines: batches run (each may merge requests)


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
    #: Media kinds the model takes in messages ("image", "audio"); empty for a text-only model.
    media: tuple[str, ...] = ()
    #: The checkpoint's transformers processor (AutoProcessor) when `media` is not empty:
    #: turns an image or a clip into its placeholder tokens and arrays (chat/media_prompt.py).
    processor: Any = None
    #: The engine takes the decoded media themselves (MediaInput.source), not only the
    #: processor's arrays (TensorRT-LLM runs its own input processor).
    raw_media: bool = False

    def __post_init__(self):
        # A multimodal checkpoint may keep its media-aware chat template with its processor
        # only (chat_template.json, which AutoProcessor reads and AutoTokenizer does not):
        # when the processor has one, prompts are rendered with it.
        template = processor_chat_template(self.processor) if self.media else None
        if template:
            self.tokenizer.chat_template = template


def processor_chat_template(processor) -> str | None:
    """A processor's chat template (its "default" one where it has several by name)."""
    template = getattr(processor, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template if isinstance(template, str) and template.strip() else None


@runtime_checkable
class Generator(Protocol):
    """Chat / text generation. `generate` yields events until every choice finished;
    closing the stream early (or calling `abort`) removes the request from the batch."""

    chat_info: ChatModelInfo | None

    def reserve(self, n: int = 1, least_tokens: int = 0) -> Reservation:
        """Takes an admission place for a request of `n` choices before it is templated
        and tokenized (a plain method): EngineOverloaded at once when the engine would
        refuse it anyway (its queue is full; its token budget lacks `least_tokens`, a lower
        bound of the request's charge such as n × max_tokens)."""

    def generate(self, request: GenerationRequest, reservation: Reservation | None = None
                 ) -> AsyncIterator[EngineEvent]:
        """Admit the request right away, in the place `reservation` holds (without one it
        reserves its own), raising EngineOverloaded when full (the token budget is checked
        here, now that the prompt is known; the reservation is then released); a plain
        method, not a coroutine. Returns an async iterator of its events. The caller
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


@dataclass
class EmbeddingRequest:
    """Inputs to embed: each a text (tokenized by the engine, special tokens added) or a
    list of token ids (used as they are). `dimensions`: keep the first N values of each
    vector and normalize again (None: the model's size). `truncate_prompt_tokens`: cut
    longer inputs to this many tokens (capped at the model's limit) instead of refusing
    them (None: refuse)."""

    request_id: str
    inputs: list[str | list[int]]
    dimensions: int | None = None
    truncate_prompt_tokens: int | None = None


@dataclass
class EmbeddingResult:
    #: float32 array [len(inputs), dimensions], every row L2-normalized.
    embeddings: Any
    #: Tokens of all inputs, after truncation.
    prompt_tokens: int


@dataclass
class ScoreRequest:
    """Relevance of each document to the query (rerank); truncation as in EmbeddingRequest."""

    request_id: str
    query: str
    documents: list[str]
    truncate_prompt_tokens: int | None = None


@dataclass
class ScoreResult:
    #: One score per document, in document order (cross-encoder: its activated logit;
    #: bi-encoder: cosine similarity of normalized embeddings, in [-1, 1]).
    scores: list[float]
    #: Tokens scored (query and documents), after truncation.
    prompt_tokens: int


@dataclass
class EncoderInfo:
    """What callers of an embedding/rerank engine need to know, set by `start()`."""

    #: "bi-encoder" (embeddings; rerank by cosine) or "cross-encoder" (rerank only).
    kind: Literal["bi-encoder", "cross-encoder"]
    #: Size of the embedding vectors (0 for a cross-encoder).
    dimensions: int
    #: Longest input (bi-encoder) or query + document pair (cross-encoder), in tokens.
    max_input_tokens: int
    #: Valid token ids are below it.
    vocab_size: int


async def wait_ready(events: Any) -> None:
    """Awaits a `generate()` stream's `ready()` where it has one (see Generator)."""
    ready = getattr(events, "ready", None)
    if callable(ready):
        await ready()


@runtime_checkable
class Embedder(Protocol):
    """Text embeddings: many inputs per call, one normalized vector each. Raises
    EngineInvalidRequest (with `param`) for inputs the model cannot take, EngineOverloaded
    when its queue is full."""

    encoder_info: EncoderInfo | None

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult: ...


@runtime_checkable
class Scorer(Protocol):
    """Query/document relevance scores (rerank); errors as for Embedder."""

    encoder_info: EncoderInfo | None

    async def score(self, request: ScoreRequest) -> ScoreResult: ...


@dataclass(frozen=True)
class VadParams:
    """Voice-activity detection that places window cuts at silences (see
    engines/torch/whisper_windows.plan_windows): a 20 ms frame is voiced when its RMS
    level relative to the loudest frame is above -60 dB x (1 - threshold)."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 200


@dataclass
class TranscriptionRequest:
    """Speech to text. `audio`: the encoded file (decoded by the engine). `task`:
    "transcribe" or "translate" (into English). `language`: ISO-639-1 code or None
    (detected from the first window). `prompt`: conditioning text. `temperature`: 0 is
    greedy. `words`: compute word timestamps. `vad`: cut windows at silences (None:
    fixed 30 s windows)."""

    request_id: str
    audio: bytes
    task: Literal["transcribe", "translate"] = "transcribe"
    language: str | None = None
    prompt: str = ""
    temperature: float = 0.0
    words: bool = False
    logprobs: bool = False
    vad: VadParams | None = None


@dataclass
class TranscriptionStarted:
    """The audio is decoded: its duration (seconds) and how many windows it is cut into."""

    duration_s: float
    windows: int


@dataclass
class TranscriptWord:
    word: str
    start: float  # seconds, within its segment
    end: float


@dataclass
class TranscriptSegment:
    """One segment; times in seconds, ordered, within the audio's duration."""

    id: int
    seek: int  # start of its window, in 10 ms frames
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[TranscriptWord] = field(default_factory=list)


@dataclass
class TranscriptionDelta:
    """One window's text (deltas concatenate to the done text), its segments, and
    its tokens' log probabilities when asked for."""

    text: str
    segments: list[TranscriptSegment]
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class TranscriptionDone:
    text: str
    language: str  # Whisper's lower-case English name ("english")
    duration_s: float
    prompt_tokens: int
    output_tokens: int
    audio_tokens: int = 0  # encoder positions carrying the audio (50 per second)


TranscriptionEvent = TranscriptionStarted | TranscriptionDelta | TranscriptionDone


@dataclass
class TranscriberInfo:
    """What callers of a transcription engine need to know, set by `start()`."""

    #: Language codes the model knows (empty for English-only checkpoints).
    languages: list[str]
    #: Longest audio accepted, in seconds.
    max_audio_s: float


@runtime_checkable
class Transcriber(Protocol):
    """Speech to text: `transcribe` decodes the audio (EngineInvalidRequest with param
    "file" for empty, corrupt or zero-length audio), then yields TranscriptionStarted,
    one TranscriptionDelta per window in time order, and TranscriptionDone. Closing the
    iterator early aborts the request's remaining windows."""

    transcriber_info: TranscriberInfo | None

    def transcribe(self, request: TranscriptionRequest) -> AsyncIterator[TranscriptionEvent]: ...


#: The capability protocol an engine must implement to serve a task.
CAPABILITIES: dict[Task, type] = {
    Task.CHAT: Generator,
    Task.EMBEDDING: Embedder,
    Task.RERANK: Scorer,
    Task.TRANSCRIPTION: Transcriber,
}
