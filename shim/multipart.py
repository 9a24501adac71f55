"""multipart/form-data uploads, parsed by werkzeug's own form parser with limits: the
body cap (413 before reading when Content-Length says more; werkzeug's LimitedStream
raises 413 for a chunked body that runs over), a bounded number of parts and bounded
memory for the text fields. File parts spool to a temporary file past 500 KB
(werkzeug's default stream factory), so memory stays bounded for any upload size."""
from __future__ import annotations

from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.formparser import parse_form_data

from shim.body import discard_oversized
from shim.errors import APIError

MAX_FORM_PARTS = 32
MAX_FIELD_BYTES = 1024 * 1024  # per text field; werkzeug also bounds its parse buffer by it


def too_large(cap: int) -> APIError:
    return APIError(413, f"The file is too large (limit {cap} bytes).", "invalid_request_error", "file",
                    "file_too_large")


def parse_upload(environ: dict, cap: int, framing: int = 0) -> tuple[MultiDict, MultiDict]:
    """(form fields, files) of a multipart body of at most `cap` + `framing` bytes (room
    for the boundaries and the other fields: the file itself is checked against `cap` by
    the caller). Raises APIError 415 (not multipart), 413 (over; the message names `cap`);
    werkzeug raises 413/400 for bodies that run over while streaming or are malformed
    (mapped by shim.errors)."""
    ctype = environ.get("CONTENT_TYPE", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise APIError(415, "Unsupported Content-Type: uploads must be sent as 'multipart/form-data'.",
                       "invalid_request_error", None, "unsupported_media_type")
    length = environ.get("CONTENT_LENGTH")
    if length and length.isdigit() and int(length) > cap + framing:
        discard_oversized(environ, int(length))
        raise too_large(cap)
    _, form, files = parse_form_data(environ, max_content_length=cap + framing, max_form_memory_size=MAX_FIELD_BYTES,
                                     max_form_parts=MAX_FORM_PARTS, silent=False)
    return form, files


def single_file(files: MultiDict, name: str = "file") -> FileStorage:
    """The one file part `name`; APIError 400 when it is missing or repeated."""
    parts = files.getlist(name)
    if len(parts) != 1:
        raise APIError(400, f"Expected exactly one '{name}' part in the form.", "invalid_request_error", name,
                       "missing_required_parameter" if not parts else "invalid_value")
    return parts[0]
