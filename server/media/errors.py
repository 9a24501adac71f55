"""MediaError: client media (an image or audio part, or its URL) that cannot be used."""
from __future__ import annotations


class MediaError(ValueError):
    """Bad client media; the core answers INVALID_ARGUMENT with it.

    `message` is safe to show the client: it never names an address the server resolved
    (a refused destination is only "not allowed"). `param` is the request path of the part
    (e.g. "messages[0].content[1]"); the code that raises does not know it, so the caller
    sets it (`e.param = ...`) or passes its own."""

    def __init__(self, message: str, param: str = ""):
        super().__init__(message)
        self.message = message
        self.param = param
