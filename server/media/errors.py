"""MediaError: client media (an image or audio part, or its URL) that cannot be used."""
from __future__ import annotations


class MediaError(ValueError):
    """Bad client media; the core answers INVALID_ARGUMENT with it.

    `message` is safe to show the client: it never names an address the server resolved
    (a refused destination is only "not allowed"). `param` is the request path of the part
    (e.g. "messages[0].content[1]"); the code that raises does not know it, so the caller
    sets it (`e.param = ...`) or passes its own. `code`: the error code when it is more
    precise than the caller's invalid_image / invalid_audio (e.g. "audio_too_short")."""

    def __init__(self, message: str, param: str = "", code: str = ""):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def detached(error: BaseException) -> BaseException:
    """`error` without its traceback and chained exceptions: they hold the frames that
    held the media bytes, in reference cycles that only a full garbage collection frees,
    so a stream of refused 15 MB images would pile up in the core's memory."""
    error.__traceback__ = error.__context__ = error.__cause__ = None
    return error
