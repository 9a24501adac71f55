"""shim/multipart.py: werkzeug's form parser with limits, on bodies as clients send them."""
from __future__ import annotations

import io
import json

import httpx
import pytest

from shim.errors import APIError
from shim.multipart import parse_upload, single_file


def environ(files=None, data=None, content_type=None) -> dict:
    req = httpx.Request("POST", "http://x/v1/files", data=data, files=files)
    body = req.read()
    return {"REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type or req.headers["content-type"],
            "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}


def test_a_jsonl_file_of_many_read_chunks_parses_whole():
    content = "".join(json.dumps({"custom_id": f"r{i}", "body": {"text": "w " * 20}}) + "\n"
                      for i in range(20_000)).encode()  # many 64 KiB reads, newlines everywhere
    form, files = parse_upload(environ({"file": ("in.jsonl", content)}, {"purpose": "batch"}), 10 ** 9)
    assert form["purpose"] == "batch" and single_file(files).read() == content


def test_limits():
    with pytest.raises(APIError) as e:
        parse_upload(environ({"file": ("in.jsonl", b"x" * 2000)}, {"purpose": "batch"}), 1000)
    assert e.value.status == 413 and e.value.code == "file_too_large"
    with pytest.raises(APIError) as e:
        parse_upload(environ(data={"purpose": "batch"}, content_type="application/x-www-form-urlencoded"), 10 ** 6)
    assert e.value.status == 415
    form, files = parse_upload(environ({"other": ("a", b"1")}, {"purpose": "batch"}), 10 ** 6)
    with pytest.raises(APIError) as e:
        single_file(files)
    assert e.value.status == 400 and e.value.param == "file"
