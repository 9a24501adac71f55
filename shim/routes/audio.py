"""POST /v1/audio/transcriptions and /v1/audio/translations: multipart form -> validate
-> TranscriptionService.Transcribe -> the response format, or SSE.

The core decodes the audio before its first event (`started`), so an empty, corrupt or
zero-length file is an ordinary 400, streaming or not. Files over 25 MB are refused with
413 before anything reaches the core. After the first SSE byte a failure is one
`data: {"error": ...}` frame then `data: [DONE]` (shim.streaming.CoreStream).
"""
from __future__ import annotations

import os
from functools import partial

from flask import Blueprint, Response, request

from shim import sse
from shim.errors import APIError, from_grpc_error, json_response
from shim.observe import note_model
from shim.multipart import parse_upload, single_file, too_large
from shim.protocol.audio import MAX_UPLOAD_BYTES, validate_audio_form
from shim.request_id import current_request_id
from shim.routes.common import config, core, metadata
from shim.streaming import CoreStream
from shim.translate.audio import TranscriptAccumulator, TranscriptStreamBuilder, audio_request_to_proto

bp = Blueprint("audio", __name__)

map_error = partial(from_grpc_error, not_found_param="model", not_found_code="model_not_found")


def _read_file() -> tuple[dict, bytes, str]:
    try:
        form, files = parse_upload(request.environ, MAX_UPLOAD_BYTES + 64 * 1024)  # room for the framing
    except APIError as e:
        raise too_large(MAX_UPLOAD_BYTES) if e.status == 413 else e
    upload = single_file(files)
    upload.stream.seek(0, os.SEEK_END)
    if upload.stream.tell() > MAX_UPLOAD_BYTES:
        raise too_large(MAX_UPLOAD_BYTES)
    upload.stream.seek(0)
    return form, upload.stream.read(), os.path.basename(upload.filename or "")[:256]


def _audio(task: str):
    form, audio, filename = _read_file()
    body = validate_audio_form(form, task)
    note_model(body["model"])
    cfg = config()
    request_id = current_request_id()
    proto = audio_request_to_proto(body, audio, filename, request_id)
    call = core().transcription.Transcribe(proto, metadata=metadata(), timeout=cfg.request_timeout_s)
    stream = CoreStream(call, environ=request.environ, request_id=request_id, map_error=map_error)
    first = stream.first()  # `started`: the audio decoded (or the 4xx that replaces it)
    if body["stream"]:
        builder = TranscriptStreamBuilder(body)
        return stream.sse_response(first, on_event=lambda ev: sse.frames(builder.on_event(ev)),
                                   finish=lambda: sse.DONE, keepalive_s=cfg.keepalive_s)
    acc = TranscriptAccumulator(body)
    stream.drain(first, acc.add)
    content, mimetype = acc.result()
    if isinstance(content, dict):
        return json_response(content)
    return Response(content, mimetype=mimetype.split(";")[0], content_type=mimetype)


@bp.post("/v1/audio/transcriptions")
def create_transcription():
    return _audio("transcribe")


@bp.post("/v1/audio/translations")
def create_translation():
    return _audio("translate")
