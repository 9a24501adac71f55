"""POST /v1/audio/transcriptions and /v1/audio/translations: which form fields exist and
what values they may take.

`validate_audio_form(form, task)` checks the multipart text fields (werkzeug's MultiDict)
against OpenAI's CreateTranscriptionRequest / CreateTranslationRequest and returns a
plain dict of typed values, raising APIError (400) naming the first bad field:

  model                    required, an identifier
  language                 ISO-639-1 code (transcriptions; the core checks it against the model)
  prompt                   conditioning text (at most MAX_PROMPT_CHARS characters)
  temperature              0 to 1 (default 0: greedy)
  response_format          json (default) | text | srt | vtt | verbose_json
  timestamp_granularities  `timestamp_granularities[]` (or without brackets), repeated:
                           segment and/or word; used by verbose_json
  include                  `include[]`: logprobs (json and verbose_json, and streams)
  chunking_strategy        "auto", a JSON object {"type": "server_vad", "threshold",
                           "prefix_padding_ms", "silence_duration_ms"}, or that object's
                           fields as `chunking_strategy[type]` ... (how the openai SDK sends it)
  stream                   true | false (json and text only)
  accepted, ignored        user
  anything else            -> 400 unknown_parameter (as OpenAI's additionalProperties: false)
"""
from __future__ import annotations

import json
import math

from shim.errors import APIError
from shim.protocol.common import check_text, expect_id, invalid_value, missing, too_long, unknown_parameter

MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # OpenAI's limit for audio files
MAX_PROMPT_CHARS = 4096
MAX_LANGUAGE_CHARS = 32
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
STREAM_FORMATS = ("json", "text")
GRANULARITIES = ("segment", "word")
INCLUDES = ("logprobs",)
VAD_FIELDS = {"type", "threshold", "prefix_padding_ms", "silence_duration_ms"}
COMMON_FIELDS = {"model", "prompt", "temperature", "response_format", "user", "file"}
TRANSCRIPTION_FIELDS = COMMON_FIELDS | {"language", "timestamp_granularities", "include", "chunking_strategy",
                                        "stream"}
# The fields that come with brackets: lists (`include[]`) and the chunking object's keys.
SUBSCRIPTED = frozenset({"timestamp_granularities", "include", "chunking_strategy"})
# Translations take the same extras (a superset of OpenAI's, which has none of them).
TRANSLATION_FIELDS = TRANSCRIPTION_FIELDS


def _base(key: str) -> str:
    """`include[]` -> include, `chunking_strategy[type]` -> chunking_strategy."""
    return key.split("[", 1)[0]


def _one(form, key: str) -> str | None:
    values = form.getlist(key)
    if len(values) > 1:
        raise invalid_value(key, f"Invalid '{key}': expected one value, got {len(values)}.")
    return values[0] if values else None


def _listed(form, name: str, allowed: tuple) -> list[str]:
    values = form.getlist(f"{name}[]") + form.getlist(name)
    for v in values:
        if v not in allowed:
            raise invalid_value(f"{name}[]", f"Invalid '{name}[]': expected one of {', '.join(allowed)}, "
                                             f"got '{v[:64]}'.")
    return list(dict.fromkeys(values))


def _number(text: str, param: str, lo: float, hi: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise APIError(400, f"Invalid type for '{param}': expected a number, but got '{text[:64]}' instead.",
                       "invalid_request_error", param, "invalid_type") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise invalid_value(param, f"Invalid '{param}': expected a number from {lo:g} to {hi:g}, got {text[:64]}.")
    return value


def _ms(value, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit() \
            or int(value) > 60_000:
        raise invalid_value(param, f"Invalid '{param}': expected an integer number of milliseconds "
                                   f"from 0 to 60000.")
    return int(value)


def _chunking(form) -> dict | None:
    """None (fixed 30 s windows) or the server-VAD settings {threshold, prefix_padding_ms,
    silence_duration_ms} (unset ones absent)."""
    raw = _one(form, "chunking_strategy")
    fields = {k[len("chunking_strategy["):-1]: form.get(k) for k in form.keys()
              if k.startswith("chunking_strategy[") and k.endswith("]")}
    if raw is None and not fields:
        return None
    if raw is not None and fields:
        raise invalid_value("chunking_strategy", "Invalid 'chunking_strategy': give it once.")
    if raw is not None:
        if raw.strip() == "auto":
            return {}
        try:
            fields = json.loads(raw)
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            raise invalid_value("chunking_strategy", "Invalid 'chunking_strategy': expected \"auto\" or an object "
                                                     "{\"type\": \"server_vad\", ...}.")
    for k in fields:
        if k not in VAD_FIELDS:
            raise unknown_parameter(f"chunking_strategy.{k}")
    if fields.get("type") != "server_vad":
        raise invalid_value("chunking_strategy.type", "Invalid 'chunking_strategy.type': expected 'server_vad'.")
    out: dict = {}
    if "threshold" in fields:
        out["threshold"] = _number(str(fields["threshold"]), "chunking_strategy.threshold", 0.0, 1.0)
    for k in ("prefix_padding_ms", "silence_duration_ms"):
        if k in fields:
            out[k] = _ms(fields[k], f"chunking_strategy.{k}")
    return out


def _bool(text: str | None, param: str) -> bool:
    if text is None:
        return False
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0", ""):
        return False
    raise APIError(400, f"Invalid type for '{param}': expected a boolean, but got '{text[:64]}' instead.",
                   "invalid_request_error", param, "invalid_type")


def validate_audio_form(form, task: str) -> dict:
    """Typed fields of a transcription ("transcribe") or translation ("translate") form."""
    known = TRANSCRIPTION_FIELDS if task == "transcribe" else TRANSLATION_FIELDS
    for key in form.keys():
        if _base(key) not in known:
            raise unknown_parameter(key)
        if key != _base(key) and _base(key) not in SUBSCRIPTED:  # `prompt[]`: a list where one value goes
            raise invalid_value(key, f"Invalid '{key}': '{_base(key)}' takes one value, not a list.")
    model = _one(form, "model")
    if not model:
        raise missing("model")
    body: dict = {"model": expect_id(model, "model", non_empty=True)}
    language = _one(form, "language") or ""
    if len(language) > MAX_LANGUAGE_CHARS:
        raise too_long("language", MAX_LANGUAGE_CHARS, len(language))
    body["language"] = check_text(language, "language")
    prompt = _one(form, "prompt") or ""
    if len(prompt) > MAX_PROMPT_CHARS:
        raise too_long("prompt", MAX_PROMPT_CHARS, len(prompt))
    body["prompt"] = check_text(prompt, "prompt")
    temperature = _one(form, "temperature")
    body["temperature"] = None if temperature in (None, "") else _number(temperature, "temperature", 0.0, 1.0)
    fmt = _one(form, "response_format") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise invalid_value("response_format", f"Invalid 'response_format': expected one of "
                                               f"{', '.join(RESPONSE_FORMATS)}, got '{fmt[:64]}'.")
    body["response_format"] = fmt
    body["timestamp_granularities"] = _listed(form, "timestamp_granularities", GRANULARITIES)
    include = _listed(form, "include", INCLUDES)
    body["logprobs"] = "logprobs" in include
    body["stream"] = _bool(_one(form, "stream"), "stream")
    if body["stream"] and fmt not in STREAM_FORMATS:
        raise invalid_value("response_format", f"Invalid 'response_format': streaming answers in "
                                               f"{' or '.join(STREAM_FORMATS)}, not '{fmt}'.")
    if body["logprobs"] and fmt not in ("json", "verbose_json") and not body["stream"]:
        raise invalid_value("include[]", "Invalid 'include[]': logprobs needs response_format json or "
                                         "verbose_json (or a stream).")
    body["vad"] = _chunking(form)
    body["task"] = task
    return body
