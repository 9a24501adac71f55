"""Top frames of a py-spy raw (folded) profile: self and inclusive shares.

    .venv/bin/python bench/profile_top.py /tmp/prof/core.txt [--top 25]
"""
from __future__ import annotations

import argparse
import collections
import re

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(.*?) \((.*?):\d+\)$")


def frame_name(frame: str) -> str:
    """`func (file.py:12)` -> `func (file.py)`: lines of one function add up."""
    m = _FRAME.match(frame)
    return f"{m.group(1)} ({m.group(2)})" if m else frame


def top(path: str, n: int) -> str:
    self_t, incl, total = collections.Counter(), collections.Counter(), 0
    for line in open(path):
        m = _LINE.match(line.rstrip("\n"))
        if not m:
            continue
        frames, count = [frame_name(f) for f in m.group(1).split(";")], int(m.group(2))
        total += count
        self_t[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    out = [f"{path}: {total} samples", "  self:"]
    out += [f"    {c / total:6.1%}  {f}" for f, c in self_t.most_common(n)]
    out += ["  inclusive:"] + [f"    {c / total:6.1%}  {f}" for f, c in incl.most_common(n)]
    return "\n".join(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    for p in a.paths:
        print(top(p, a.top))
