"""Level 1: the allocator-only microbenchmarks (native loops in ``rustmalloc._rustmalloc._bench``).

Each entry is one call of ``_bench.run``; ``ops`` counts allocator calls (each malloc, realloc or
free is one), per thread for the RAW thread runs. ``callgrind`` marks the ones whose
instructions per op are counted under valgrind (single-threaded, small op counts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List


@dataclass(frozen=True)
class Micro:
    name: str
    pattern: str
    domain: str
    sizes: str
    ops: int
    kwargs: Dict[str, Any] = field(default_factory=dict)
    callgrind: bool = False
    #: Short text for the tables.
    about: str = ""

    @property
    def threads(self) -> int:
        return int(self.kwargs.get("threads", 1))


def _full() -> List[Micro]:
    M = Micro
    benches = [
        M("pairs_obj_mix", "pairs", "obj", "mix", 2_000_000, callgrind=True,
          about="OBJ malloc+free at once, CPython-like sizes"),
    ]
    for n in (32, 128, 512):
        benches.append(M(f"pairs_obj_{n}", "pairs", "obj", f"fixed{n}", 2_000_000, about=f"OBJ malloc+free at once, {n} B"))
    benches.append(M("batch_obj_mix", "batch", "obj", "mix", 2_000_000, {"batch": 100_000}, callgrind=True,
                     about="100k OBJ blocks, freed in allocation order"))
    for n in (32, 128, 512):
        benches.append(M(f"batch_obj_{n}", "batch", "obj", f"fixed{n}", 2_000_000, {"batch": 100_000},
                         about=f"100k OBJ blocks of {n} B, freed in order"))
    benches += [
        M("batch_random_obj_mix", "batch_random", "obj", "mix", 2_000_000, {"batch": 100_000}, callgrind=True,
          about="100k OBJ blocks, freed in random order"),
        M("churn_obj_mix", "churn", "obj", "mix", 2_000_000, {"window": 200_000}, callgrind=True,
          about="random replacement in a window of 200k live OBJ blocks"),
        M("realloc_mem_list", "realloc", "mem", "mix", 1_000_000, callgrind=True,
          about="MEM realloc growth like list.append (then free)"),
        M("batch_mem_to2k", "batch", "mem", "to2k", 2_000_000, {"batch": 100_000}, callgrind=True,
          about="100k MEM blocks of 16..2048 B, freed in order"),
        M("pairs_raw_mix_t1", "pairs", "raw", "mix", 2_000_000, {"threads": 1}, callgrind=True,
          about="RAW malloc+free at once, 1 thread, GIL released"),
        M("batch_raw_mix_t1", "batch", "raw", "mix", 1_000_000, {"batch": 100_000, "threads": 1}, callgrind=True,
          about="RAW batches of 100k, 1 thread"),
        M("batch_raw_mix_t2", "batch", "raw", "mix", 1_000_000, {"batch": 100_000, "threads": 2},
          about="RAW batches of 100k, 2 threads (ops per thread)"),
        M("batch_raw_mix_t4", "batch", "raw", "mix", 1_000_000, {"batch": 100_000, "threads": 4},
          about="RAW batches of 100k, 4 threads"),
        M("cross_raw_mix_t2", "batch", "raw", "mix", 1_000_000, {"batch": 10_000, "threads": 2, "cross": True},
          about="RAW batches of 10k freed by the other thread, 2 threads"),
        M("cross_raw_mix_t4", "batch", "raw", "mix", 1_000_000, {"batch": 10_000, "threads": 4, "cross": True},
          about="RAW batches of 10k freed by the next thread, 4 threads"),
    ]
    return benches


FULL = _full()

#: Ops under callgrind (about 50x slower than native): enough to reach a steady state.
CALLGRIND_OPS = 200_000


def benches(quick: bool, callgrind: bool = False) -> List[Micro]:
    """The benchmark list at full size, at tiny sizes (``quick``), or sized for callgrind."""
    out = []
    for b in FULL:
        if callgrind and not b.callgrind:
            continue
        kwargs = dict(b.kwargs)
        ops = b.ops
        if quick:
            ops = max(2_000, ops // 500)
            if "batch" in kwargs:
                kwargs["batch"] = min(kwargs["batch"], 1_000)
            if "window" in kwargs:
                kwargs["window"] = min(kwargs["window"], 2_000)
        elif callgrind:
            ops = min(ops, CALLGRIND_OPS)
        out.append(Micro(b.name, b.pattern, b.domain, b.sizes, ops, kwargs, b.callgrind, b.about))
    return out


def by_name() -> Dict[str, Micro]:
    return {b.name: b for b in FULL}
