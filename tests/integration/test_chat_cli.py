"""`genapi chat "question"` against the real shared service: it streams the same answer
the SDK gets, reads stdin, and says in one line why it could not answer."""
from __future__ import annotations

import os
import subprocess
import sys

from ..conftest import MODEL, ROOT, chat_create, free_port


def genapi_chat(*args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GENAPI_", "OPENAI_"))}
    return subprocess.run([sys.executable, "-m", "genapi", "chat", *args], cwd=ROOT, input=stdin,
                          env={**base, **(env or {})}, capture_output=True, text=True, timeout=120)


def test_chat_streams_the_answer_the_sdk_gets(service, client):
    expected = chat_create(client, "What is a harbour?", max_tokens=12).choices[0].message.content
    out = genapi_chat("What", "is", "a", "harbour?", "--url", f"{service.base_url}/v1", "--max-tokens", "12",
                      "--temperature", "0")
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected + "\n" and expected


def test_chat_reads_stdin_and_takes_a_system_message_and_the_url_from_env(service, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}]
    expected = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,
                                              temperature=0).choices[0].message.content
    out = genapi_chat("--system", "Be brief.", "--max-tokens", "8", "--temperature", "0", "--model", MODEL,
                      stdin="Name a fruit.\n", env={"GENAPI_URL": f"{service.base_url}/v1"})
    assert out.returncode == 0 and out.stdout == expected + "\n", out.stderr


def test_chat_says_why_in_one_line_when_it_cannot_answer(service):
    out = genapi_chat("hi", "--url", f"{service.base_url}/v1", "--model", "no-such-model")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith("genapi chat: 404: The model `no-such-model` does not exist")
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    out = genapi_chat("hi", "--url", f"http://127.0.0.1:{free_port()}/v1")
    assert out.returncode == 1 and "cannot reach" in out.stderr and "genapi serve" in out.stderr
    for url in ("notaurl", "ftp://example.com/v1"):
        out = genapi_chat("hi", "--url", url)
        assert out.returncode == 1 and out.stderr == f"genapi chat: --url {url!r} is not an http(s) URL " \
                                                     "(e.g. http://127.0.0.1:8000/v1)\n", out.stderr
    assert genapi_chat(stdin="  \n").returncode == 2
