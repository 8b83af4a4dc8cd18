"""Two fragmentation scenarios for the page-queue policy (README, "Giving memory back"): how many
OBJ pages rustmalloc holds for how many bytes in use, with automatic purging off so that only
the policy shows.

    RUSTMALLOC_PURGE=0 python benches/fragmentation.py

1. ``survivors``: build a million small tuples, keep a random 10%, then churn a 200k working
   set (random replacement, 3M steps), then drop the working set.
2. ``window``: a 100k working set with random replacement for 3M steps, 1% of new objects kept
   for good, then drop the working set.
"""

from __future__ import annotations

import gc
import random

import rustmalloc

PAGE = 64 * 1024


def report(scenario: str, when: str) -> None:
    s = rustmalloc.stats()
    pages = sum(c.pages for c in s.size_classes if c.domain == "obj")
    in_use = s.domains["obj"].bytes_in_use
    print(f"| {scenario} | {when} | {pages} | {pages * PAGE / 1e6:.1f} | {in_use / 1e6:.1f} |")


def main() -> None:
    rustmalloc.install()
    gc.disable()
    rng = random.Random(1)

    def make() -> tuple:
        return tuple([rng.random()] * rng.randint(1, 8))  # a tuple of 1..8 items and a float

    print("| scenario | when | OBJ pages | pages MB | in use MB |")
    print("|---|---|---:|---:|---:|")
    objs = [make() for _ in range(1_000_000)]
    keep = [o for o in objs if rng.random() < 0.1]
    del objs
    report("survivors", "built 1M, kept 10%")
    work = [make() for _ in range(200_000)]
    for _ in range(3_000_000):
        work[rng.randrange(200_000)] = make()
    report("survivors", "after the churn")
    del work
    report("survivors", "churn set dropped")
    del keep

    kept = []
    work = [make() for _ in range(100_000)]
    for _ in range(3_000_000):
        o = make()
        if rng.random() < 0.01:
            kept.append(o)
        work[rng.randrange(100_000)] = o
    report("window", "after the churn")
    del work
    report("window", "working set dropped")


if __name__ == "__main__":
    main()
