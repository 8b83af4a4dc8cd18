#!/usr/bin/env python3
"""One pyperformance benchmark, configurations alternated process by process: a quicker check of
a single verdict of ``benches/pyperformance.sh`` than another whole run.

    python benches/pyperformance_ab.py BENCHMARK [--rounds 16] [--loops 1] [--configs pymalloc,rustmalloc]

Needs the venv that ``benches/pyperformance.sh`` made (``--venv`` to name another). Each round runs
one pyperf worker per configuration (``--loops L --values 3 --warmups 1``), in an order that
alternates from round to round (forwards, then backwards), and keeps the fastest of the worker's
three values (the others ran in the same process, so they share its layout); then prints each
configuration's median over the rounds, its quartiles, and its ratio to the first
configuration's median. Configurations: pymalloc, malloc (glibc), rustmalloc,
rustmalloc-nopurge (automatic purging held off by a purge delay of 1000 s), rustmalloc-delay1s
(a purge delay of 1 s instead of 250 ms), rustmalloc-retain256m (256 MiB of empty pages
kept per heap instead of 4 MiB), rustmalloc-noidle (no idle purger thread; the purge still runs on
the heaps' slow paths), and jemalloc, tcmalloc and mimalloc (``PYTHONMALLOC=malloc``
with the library preloaded) where installed. BENCHMARK is a pyperformance benchmark (``xml_etree``, whose
first pyperf task runs unless ``--task`` says another) or one pyperf benchmark of a script that
holds several (``xml_etree_parse``, ``deepcopy_memo``, ``async_tree_none``): its script and task
are found by running each task of the script once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from configs import all_configs  # noqa: E402
from pyperformance_callgrind import check_envs, pyperformance_setup, tasks_of  # noqa: E402
from pyperformance_pingpong import find_script  # noqa: E402

CONFIGS = {
    "pymalloc": {},
    "malloc": {"PYTHONMALLOC": "malloc"},
    "rustmalloc": {"RUSTMALLOC": "1"},
    "rustmalloc-nopurge": {"RUSTMALLOC": "1", "RUSTMALLOC_PURGE_DELAY_MS": "1000000"},
    # The purge policy's two knobs, each raised alone: which part of the purge costs a benchmark.
    "rustmalloc-delay1s": {"RUSTMALLOC": "1", "RUSTMALLOC_PURGE_DELAY_MS": "1000"},
    "rustmalloc-retain256m": {"RUSTMALLOC": "1", "RUSTMALLOC_RETAIN_BYTES": str(256 << 20)},
    # No idle purger thread (the purge still runs on the heaps' slow paths).
    "rustmalloc-noidle": {"RUSTMALLOC": "1", "RUSTMALLOC_IDLE_PURGE": "0"},
    # Another build of rustmalloc against this one (two commits side by side): a wheel built at
    # the other commit, unpacked into the directory $RUSTMALLOC_OTHER_BUILD, comes first on the
    # path (`maturin build --release -o W && python -m zipfile -e W/*.whl DIR`).
    "rustmalloc-other": {"RUSTMALLOC": "1", "PYTHONPATH": os.environ.get("RUSTMALLOC_OTHER_BUILD", "")},
}
# The preloaded peers that are installed (jemalloc, tcmalloc, mimalloc), as `run.py` runs them.
CONFIGS.update((c.name, c.env) for c in all_configs()[0] if c.preload)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("benchmark")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--loops", type=int, default=1, help="loops per value (pyperf's --loops)")
    ap.add_argument("--task", type=int, default=None,
                    help="pyperf task of a script with several (xml_etree has four); default: the task named BENCHMARK, or 0")
    ap.add_argument("--configs", default="pymalloc,rustmalloc")
    ap.add_argument("--venv", help="pyperformance's venv (default: the one benches/pyperformance.sh made)")
    a = ap.parse_args()
    configs = a.configs.split(",")
    for c in configs:
        if c not in CONFIGS:
            raise SystemExit(f"--configs: unknown configuration {c!r}; choose from {', '.join(CONFIGS)}")
    python, scripts, base = pyperformance_setup(a.venv)
    check_envs(python, {c: dict(base, **CONFIGS[c]) for c in configs})
    script, extra = find_script(scripts, a.benchmark)
    task = a.task
    if task is None:
        task = 0
        if a.benchmark not in scripts:
            named = [t for t, name, _ in tasks_of(python, script, extra, base) if name == a.benchmark]
            if not named:
                raise SystemExit(f"unknown benchmark {a.benchmark!r}: no pyperf task of {script} has that name")
            task = named[0]
    best = {c: [] for c in configs}
    for r in range(a.rounds):
        for c in configs if r % 2 == 0 else configs[::-1]:
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "r.json")
                cmd = [python, script, *extra, "--worker", "--worker-task", str(task), "--loops", str(a.loops),
                       "--values", "3", "--warmups", "1", "-o", out]
                p = subprocess.run(cmd, env=dict(base, **CONFIGS[c]), capture_output=True, text=True)
                if p.returncode != 0:
                    raise SystemExit(f"{c}: exit {p.returncode}\n{p.stderr[-2000:]}")
                with open(out) as f:
                    data = json.load(f)
            bench = data["benchmarks"][0] if "benchmarks" in data else data
            best[c].append(min(v for run in bench["runs"] for v in run.get("values", [])))
    ref = statistics.median(best[configs[0]])
    for c in configs:
        v = best[c]
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else (v[0],) * 3
        print(f"{a.benchmark:22} {c:19} median {statistics.median(v) * 1e3:9.3f} ms  "
              f"quartiles {q1 * 1e3:9.3f} {q3 * 1e3:9.3f}  ratio {statistics.median(v) / ref:.3f}  (n={len(v)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
