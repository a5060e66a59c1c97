#!/usr/bin/env python3
"""Worst-case stack of each public pbridge function, from GCC's -fcallgraph-info=su.

Sums the frames along the deepest call chain inside the library. Calls leaving it (libc,
the port layer's library, e.g. libsodium) are listed, not counted: their stack depends on
the platform and the port. The library has no recursion and no VLA, so the sum is a bound.
Usage: stack_depth.py build/pbridge.ci [build/pb_port_sodium.ci ...]
"""

from __future__ import annotations

import re
import sys
from functools import cache

NODE = re.compile(
    r'node: \{ title: "([^"]+)" label: "[^\\]+\\n[^\\]+\\n(\d+) bytes \((\w+(?:,\w+)*)\)"'
)
EXTERNAL = re.compile(r'node: \{ title: "([^"]+)" label: "[^"]*" shape : ellipse')
EDGE = re.compile(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"')

frames: dict[str, int] = {}
edges: dict[str, set[str]] = {}
external: set[str] = set()
for path in sys.argv[1:]:
    with open(path) as file:
        text = file.read()
    for name, size, _ in NODE.findall(text):
        frames[name.split(":")[-1]] = int(size)
    external.update(n.split(":")[-1] for n in EXTERNAL.findall(text))
    for src, dst in EDGE.findall(text):
        edges.setdefault(src.split(":")[-1], set()).add(dst.split(":")[-1])


@cache
def depth(fn: str) -> tuple[int, tuple[str, ...]]:
    if fn not in frames:
        return 0, (f"[{fn}]",)
    best: tuple[int, tuple[str, ...]] = (0, ())
    for callee in edges.get(fn, ()):
        best = max(best, depth(callee))
    return frames[fn] + best[0], (fn, *best[1])


for fn in sorted(f for f in frames if f.startswith("pb_")):
    total, chain = depth(fn)
    print(f"{fn:24} {total:6d} bytes  {' > '.join(chain)}")
