"""Structured-output grammars: a `Constraint` compiled with xgrammar against one model's
tokenizer, off the decoding loop, bounded in time, cached.

`Grammars` lives in an engine process (one per model, so the cache is per model): it
builds xgrammar's TokenizerInfo from the Hugging Face tokenizer (vocabulary = the width
of the model's logits, stop tokens = the model's EOS ids), compiles on its own threads
(xgrammar releases the GIL while compiling, so decoding goes on meanwhile) and keeps the
last `cache_size` results, failures included, in an LRU keyed by (kind, spec). Callers
`submit()` a constraint and poll the returned future; a request whose grammar is not
ready within `timeout_s` is rejected by its caller (`GrammarError`), and a compilation
that finished past the limit is cached as a failure, so a slow schema is rejected the
same way every time at no further cost.

Grammar choices (xgrammar 0.2.9):
  json_object   a JSON Schema `{"type": "object"}`: any object, never a bare value
  json_schema   the schema, strict_mode (no properties or items beyond those declared)
  regex / ebnf / structural_tag   compile_regex / compile_grammar (GBNF) /
                compile_structural_tag
JSON is generated without free whitespace (`any_whitespace=False`: ", " and ": " as
separators), so a model cannot stall inside a document emitting blanks.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import re
import threading
import time
from ..engines.base import Constraint

log = logging.getLogger("genapi.grammar")

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_CACHE_SIZE = 64
DEFAULT_THREADS = 2
CLOSE_WAIT_S = 10.0  # at the engine's stop: how long the compile threads' work is waited for


class GrammarError(Exception):
    """The constraint cannot be used: it does not compile, or not within the limit."""


class Grammars:
    """Compiles constraints for one model. Thread-safe; `submit` never blocks.

    tokenizer: a Hugging Face tokenizer; vocab_size: the model's logits width;
    stop_token_ids: the ids that end a sequence (allowed once the grammar can end);
    timeout_s: the compile limit; threads: compile threads (each may also use xgrammar's
    own worker threads); test_delay_s: test-only, a sleep before each compilation (to
    exercise the limit with any schema; documented in engines/faults.py)."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: list[int], *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, cache_size: int = DEFAULT_CACHE_SIZE,
                 threads: int = DEFAULT_THREADS, test_delay_s: float = 0.0):
        self.timeout_s = float(timeout_s)
        self.cache_size = max(1, int(cache_size))
        self.test_delay_s = float(test_delay_s)
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[tuple[str, str], concurrent.futures.Future] = collections.OrderedDict()
        self._slots = threading.BoundedSemaphore(max(1, int(threads)))
        self._threads: set[threading.Thread] = set()  # alive, for close(); under _threads_lock
        self._threads_lock = threading.Lock()  # submit() starts threads under _lock
        # TokenizerInfo takes a while on large vocabularies: built once, in the background.
        self._compiler = self._in_thread(None, self._make_compiler, tokenizer, vocab_size, sorted(stop_token_ids))

    @staticmethod
    def _make_compiler(tokenizer, vocab_size: int, stop_token_ids: list[int]):
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids)
        # Our own cache (failures included) replaces xgrammar's.
        return xgr.GrammarCompiler(info, max_threads=DEFAULT_THREADS, cache_enabled=False)

    def close(self, timeout_s: float = CLOSE_WAIT_S) -> None:
        """Cancels the compilations still waiting for a thread slot and waits, at most
        `timeout_s` in all, for the threads still running (the compiler being built after
        load, compilations). They are daemon threads inside xgrammar's native code: the
        interpreter's teardown at the process's exit runs C++ destructors under them and
        aborts the process ("terminate called without an active exception", seen stopping
        a core just after it loaded)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            for fut in self._cache.values():
                fut.cancel()  # only those not yet running
        with self._threads_lock:
            threads = list(self._threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _in_thread(self, slots: threading.BoundedSemaphore | None, fn, *args) -> concurrent.futures.Future:
        """Runs fn(*args) on a daemon thread (at most `slots` at once): a compilation still
        running when the engine stops must not hold its process open, as an executor's
        worker threads would; close() bounds the wait for it instead."""
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def work():
            if slots is not None:
                slots.acquire()
            try:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn(*args))
                    except BaseException as e:
                        fut.set_exception(e)
            finally:
                if slots is not None:
                    slots.release()
                with self._threads_lock:
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=work, name="grammar-compile", daemon=True)
        with self._threads_lock:
            self._threads.add(thread)
        thread.start()
        return fut

    def submit(self, constraint: Constraint) -> concurrent.futures.Future:
        """The compiled grammar (xgrammar CompiledGrammar) of `constraint`, as a future that
        raises GrammarError; shared by every request with the same (kind, spec)."""
        key = (constraint.kind, constraint.spec)
        with self._lock:
            fut = self._cache.get(key)
            if fut is not None:
                self._cache.move_to_end(key)
                return fut
            fut = self._in_thread(self._slots, self._compile, constraint)
            self._cache[key] = fut
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return fut

    def _compile(self, c: Constraint):
        compiler = self._compiler.result()
        t0 = time.monotonic()
        if self.test_delay_s:
            time.sleep(self.test_delay_s)
        try:
            compiled = _compile_with(compiler, c)
        except Exception as e:  # xgrammar raises RuntimeError/ValueError subclasses with a reason
            raise GrammarError(f"the {_WHAT[c.kind]} could not be compiled: {_reason(e)}") from None
        took = time.monotonic() - t0
        if took > self.timeout_s:
            raise GrammarError(too_slow(self.timeout_s))
        log.debug("compiled a %s grammar (%d chars) in %.3fs", c.kind, len(c.spec), took)
        return compiled

    def matcher(self, compiled):
        """A fresh matcher (one per sequence) for a compiled grammar."""
        import xgrammar as xgr

        return xgr.GrammarMatcher(compiled)



def too_slow(limit_s: float) -> str:
    return (f"the response_format grammar did not compile within {limit_s:g} s "
            "(grammar_compile_timeout_s); simplify the schema")


_WHAT = {"json_object": "JSON object grammar", "json_schema": "JSON schema", "structural_tag": "structural tag",
         "ebnf": "EBNF grammar", "regex": "regular expression"}


def _compile_with(compiler, c: Constraint):
    if c.kind == "json_object":
        return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
    if c.kind == "json_schema":
        return compiler.compile_json_schema(c.spec, any_whitespace=False, strict_mode=True)
    if c.kind == "regex":
        return compiler.compile_regex(c.spec)
    if c.kind == "ebnf":
        return compiler.compile_grammar(c.spec)
    if c.kind == "structural_tag":
        return compiler.compile_structural_tag(c.spec)
    raise ValueError(f"unknown constraint kind {c.kind!r}")


# xgrammar prefixes its messages with "[time] source.cc:line: ".
_LOCATION = re.compile(r"^\[[0-9:.]+\] \S+:\d+: ")


def _reason(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return _LOCATION.sub("", text.splitlines()[0])[:500]

