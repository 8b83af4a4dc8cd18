#!/usr/bin/env python3
"""Which functions take the data-TLB misses of one pyperformance benchmark loop, per allocator.

    python benches/tlb_by_function.py [--benchmark xml_etree] [--task 1] [--other NAME=DIR ...]
        [--out DIR] [--top 25]

``pyperformance_callgrind.py --tlb-sim`` counts a loop's first-level data-TLB misses in
cachegrind's model (each 4 KiB page a "line" of a 64-entry, fully associative "cache"); this
script splits them by function, so that one can see whether an allocator's extra misses are in
its own code (the blocks its free lists hand out) or in the interpreter's (the objects the program
then reads: a working set spread over more pages). Runs the benchmark's pyperf worker (task
``--task`` of the script of pyperformance benchmark ``--benchmark``, e.g. 1 of xml_etree for
xml_etree_iterparse) under cachegrind with 1 and 3
loops, for pymalloc, rustmalloc (the wheel in pyperformance's venv) and each ``--other NAME=DIR``
(an unpacked rustmalloc build put first on ``PYTHONPATH``), and prints the misses per loop of
each function (the difference of the two runs over 2), the functions whose counts differ most
from pymalloc's first. The cachegrind outputs are kept in ``--out`` and reused when present.
Needs valgrind and the venv of ``benches/pyperformance.sh``. About a minute per run.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
from typing import Counter, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from configs import CALLGRIND_HASH_SEED  # noqa: E402
from pyperformance_callgrind import (  # noqa: E402
    CACHE_KEYS,
    CONFIGS,
    DEFAULT_TLB as TLB,
    pyperformance_setup,
    tlb_options,
    worker_cmd,
)


def parse(path: str) -> Counter:
    """(file, function) -> first-level data misses (`CACHE_KEYS["d1"]`: D1mr + D1mw) of a cachegrind
    output file."""
    per: Counter = collections.Counter()
    events: List[str] = []
    fl = fn = ""
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("fl="):
                fl = os.path.basename(line[3:].strip())
            elif line.startswith("fn="):
                fn = line[3:].strip()
            elif line[:1].isdigit() and events:
                d = dict(zip(events, map(int, line.split()[1:])))
                per[(fl, fn)] += sum(d.get(e, 0) for e in CACHE_KEYS["d1"])
    return per


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark", default="xml_etree", help="a pyperformance benchmark (a script's name)")
    ap.add_argument("--task", type=int, default=1, help="pyperf worker task (xml_etree: 1 is iterparse)")
    ap.add_argument("--other", action="append", default=[], help="NAME=DIR: an unpacked rustmalloc build")
    ap.add_argument("--venv", help="pyperformance's venv (default: the one benches/pyperformance.sh made)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "tmp", "tlb_by_function"))
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    python, scripts, base = pyperformance_setup(a.venv)
    if a.benchmark not in scripts:
        raise SystemExit(f"unknown benchmark {a.benchmark!r}")
    script, extra = scripts[a.benchmark]
    base.setdefault("PYTHONHASHSEED", CALLGRIND_HASH_SEED)
    base.pop("PYTHONPATH", None)  # rustmalloc is the venv's own wheel unless --other says
    configs: Dict[str, dict] = {"pymalloc": CONFIGS["pymalloc"], "rustmalloc": CONFIGS["rustmalloc"]}
    for item in a.other:
        name, sep, path = item.partition("=")
        if not sep or not os.path.isdir(path):
            raise SystemExit(f"--other {item!r}: give NAME=DIR, DIR an unpacked rustmalloc build")
        configs[name] = dict(CONFIGS["rustmalloc"], PYTHONPATH=os.path.abspath(path))
    os.makedirs(a.out, exist_ok=True)

    per_loop: Dict[str, Dict[Tuple[str, str], float]] = {}
    for config, env in configs.items():
        counts = []
        for loops in (1, 3):
            out = os.path.join(a.out, f"{a.benchmark}-{a.task}-{config}-{loops}.cg")
            if not os.path.exists(out):
                result = os.path.join(a.out, f"{config}-{loops}.json")
                if os.path.exists(result):
                    os.remove(result)  # pyperf will not overwrite its output
                cmd = ["valgrind", "--tool=cachegrind", *tlb_options(TLB), f"--cachegrind-out-file={out}",
                       *worker_cmd(python, script, extra, loops, a.task, result)]
                subprocess.run(cmd, env=dict(base, **env), check=True, capture_output=True)
            counts.append(parse(out))
        one, three = counts
        per_loop[config] = {k: (three[k] - one[k]) / 2 for k in set(one) | set(three)}

    names = list(configs)
    print(f"L1 DTLB misses per loop (model: 64 entries, 4 KiB pages), {a.benchmark} task {a.task}\n")
    print("| function | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    print("| **all** | " + " | ".join(f"{sum(per_loop[c].values()) / 1e6:.3f} M" for c in names) + " |")
    keys = set(k for c in names for k in per_loop[c])
    spread = lambda k: max(abs(per_loop[c].get(k, 0) - per_loop["pymalloc"].get(k, 0)) for c in names)  # noqa: E731
    for k in sorted(keys, key=spread, reverse=True)[: a.top]:
        print(f"| `{k[1]}` ({k[0]}) | " + " | ".join(f"{per_loop[c].get(k, 0) / 1e3:.1f} k" for c in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
