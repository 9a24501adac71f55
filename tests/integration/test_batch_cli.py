"""`genapi batch submit|list|get|cancel` against the shared service (HTTP, as operators run it)."""
from __future__ import annotations

import json
import subprocess
import sys

from ..conftest import ROOT
from .batch_support import CHAT, chat_line, jsonl


def genapi_batch(service, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "genapi", "batch", "--base-url", f"{service.base_url}/v1", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_submit_shows_progress_and_downloads_results(service, tmp_path):
    src = tmp_path / "jobs.jsonl"
    ids = ["a", "b", "c"]
    src.write_bytes(jsonl([chat_line(i) for i in ids] + [chat_line("d", model="no-such-model")]))
    out = genapi_batch(service, "submit", str(src), "--endpoint", CHAT, "--output", str(tmp_path / "res"),
                       "--interval", "0.2")
    assert out.returncode == 0, out.stderr
    assert "4/4" in out.stderr and "completed" in out.stderr  # the bar reached the total
    done = [json.loads(x) for x in (tmp_path / "res" / "jobs-output.jsonl").read_text().splitlines()]
    failed = [json.loads(x) for x in (tmp_path / "res" / "jobs-error.jsonl").read_text().splitlines()]
    assert sorted(r["custom_id"] for r in done) == ids and [r["custom_id"] for r in failed] == ["d"]
    batch_id = out.stderr.split("batch ", 1)[1].split()[0]
    got = genapi_batch(service, "get", batch_id)
    assert got.returncode == 0 and json.loads(got.stdout)["status"] == "completed"
    # The shared options go after the subcommand too.
    listed = subprocess.run([sys.executable, "-m", "genapi", "batch", "list", "--limit", "100", "--base-url",
                             f"{service.base_url}/v1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert batch_id in [b["id"] for b in json.loads(listed.stdout)["data"]], listed.stderr
    again = genapi_batch(service, "cancel", batch_id)  # a finished batch cannot be cancelled
    assert again.returncode == 1 and "Cannot cancel a batch with status 'completed'." in again.stderr


def test_errors_are_one_line_and_exit_1(service, tmp_path):
    missing = genapi_batch(service, "get", "batch_" + "0" * 32)
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr and "Traceback" not in missing.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"custom_id": "x"\n')
    failed = genapi_batch(service, "submit", str(bad), "--interval", "0.2")
    assert failed.returncode == 1 and "invalid_json_line" in failed.stderr and "failed" in failed.stderr
