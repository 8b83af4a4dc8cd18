#!/usr/bin/env python3
"""What a statistics read costs as the MEM/OBJ heap grows. A read derives the GIL heap's per-class
frees from its page descriptors (``heap::local_frees``), so it walks every segment of that heap;
``stats()`` also asks the kernel which pages are resident (``mincore``).

    python benches/stats_read_cost.py [--sizes-mb 0,100,1000] [--calls 200]

Installs rustmalloc in this process, then for each size keeps about that many MB of small tuples
alive and times ``stats()``, ``allocated_blocks()`` and an empty ``with track():`` block: the
median of 5 repeats of ``--calls`` calls, in microseconds per call. To compare two builds, run it
with each build's Python. Not in CI.
"""

from __future__ import annotations

import argparse
import statistics
import time

import rustmalloc


def per_call_us(fn, calls: int) -> float:
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(runs)


def empty_track() -> None:
    with rustmalloc.track():
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-mb", default="0,100,1000", help="MB of small tuples to keep alive, in turn")
    ap.add_argument("--calls", type=int, default=200)
    a = ap.parse_args()
    rustmalloc.install()
    keep = []
    print("| MEM+OBJ live (MB) | segments | stats() µs | allocated_blocks() µs | empty track() µs |")
    print("|---:|---:|---:|---:|---:|")
    for mb in (int(x) for x in a.sizes_mb.split(",")):
        # A list of 100k 2-tuples of small ints: about 11 MB of MEM/OBJ blocks (tuples of 56 B, the list).
        while len(keep) * 11 < mb:
            keep.append([(i, i) for i in range(100_000)])
        snap = rustmalloc.stats()
        live = sum(snap.domains[d].bytes_in_use for d in ("mem", "obj"))
        print(f"| {live / 1e6:.0f} | {snap.os.segments} | {per_call_us(rustmalloc.stats, a.calls):.1f} "
              f"| {per_call_us(rustmalloc.allocated_blocks, a.calls):.1f} | {per_call_us(empty_track, a.calls):.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
