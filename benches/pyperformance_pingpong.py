#!/usr/bin/env python3
"""pyperformance benchmarks timed in ping-pong: one process per configuration, alive side by
side, taking turns on the same CPU, so that each of pymalloc's timings has one of rustmalloc's
from a few milliseconds before or after it. What the machine's neighbours do changes over
seconds (a pure-Python loop here ran from 72 to 195 ms within a minute); a pair made within a
few milliseconds sees nearly the same machine, and the ratio of the pair cancels it.

    python benches/pyperformance_pingpong.py [--benchmarks gc_traversal,go,...] [--processes 6]
        [--pairs 20] [--target-ms 30] [--configs pymalloc,rustmalloc] [--cpu 1] [--script F] [--out FILE]

Needs the venv that ``benches/pyperformance.sh`` made (``--venv`` to name another). For each
benchmark (a pyperf benchmark name: ``async_tree_none``, ``deepcopy_memo``, ``xml_etree_parse``
...), ``--processes`` times: start one worker per configuration (the benchmark's own script,
run with pyperf's ``Runner`` replaced by one that hands back the function it would time),
pinned to ``--cpu`` (which one starts and warms up first alternates from process to process);
warm each up; then ``--pairs`` times, ask each in turn for one timing of
L loops (L chosen so a timing takes about ``--target-ms``), the order alternating pair by pair.
Fresh processes each time, so the ratio is averaged over several memory layouts, as pyperf's
many workers do.

For each benchmark, the second configuration's timings over the first's: the median of the
pair ratios, their quartiles, how many of the processes had a median above 1, a paired
sign-flip test over the processes' medians (the process pair as the unit: its pairs share one
memory layout; with 6 processes p cannot go below 2/64), and the medians of the first and second
half of the processes (do they agree?). A configuration twice
(``--configs pymalloc,pymalloc``) measures the method: its ratio should be 1. The configurations
are ``pyperformance_ab.py``'s, the preloaded peers (jemalloc, tcmalloc, mimalloc) among them where
installed (``--configs pymalloc,mimalloc``).

Two builds (``--configs rustmalloc,rustmalloc-other``): unpack both wheels, run with
``PYTHONPATH=A RUSTMALLOC_OTHER_BUILD=B``, then again with A and B swapped, and read the two ratios
together (the geometric mean of one and the inverse of the other). One direction alone can
mislead: in session 33 a build without the allocation path's prefetch took 1.028x main's time
on xml_etree_iterparse one way round and 1.092x (main over it: 0.916) the other, runs ten minutes
apart (``benches/results/pyperformance/pingpong/``).

Writes a Markdown table to ``--out`` (default: print only). ``--script`` times the benchmarks of
another pyperf script (run the same way, in pyperformance's venv) instead of pyperformance's own.

A caveat: each worker idles while its partner takes its turn, which back-to-back loops never
do. Anything that acts on time passing rather than on work done sees that idle time: rustmalloc's
purge gives back pages left free for its delay (250 ms, longer once a heap has adapted it), so
a benchmark whose timings take longer than that may fault in again pages it would have kept when
run back-to-back. The page-fault column shows when this happens (async_tree_none with the fixed
delay before 2127d22: 10,526 faults per loop here, 8,481 back-to-back).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from configs import other_build_pythonpath  # noqa: E402
from pyperformance_rounds import sign_flip_p  # noqa: E402
from report import geomean  # noqa: E402
WORKER = "--pingpong-worker"


def worker(script: str, name: str, extra: List[str]) -> int:
    """Run in pyperformance's venv: capture the benchmark ``name`` of ``script``, then answer
    each line ``LOOPS`` on stdin with the seconds LOOPS loops took, until stdin closes."""
    import asyncio
    import resource
    import runpy
    import time

    import pyperf

    # The answers go to the parent through the original stdout; whatever the benchmark prints
    # goes to stderr, so it cannot be read as a timing.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    found: Dict[str, Tuple[str, object, tuple]] = {}

    class Capture(pyperf.Runner):  # the benchmark's own set-up, without pyperf running it
        def bench_time_func(self, bname, func, *args, **kw):
            found[bname] = ("time", func, args)

        def bench_func(self, bname, func, *args, **kw):
            found[bname] = ("func", func, args)

        def bench_async_func(self, bname, func, *args, **kw):
            found[bname] = ("async", func, args)

    pyperf.Runner = Capture
    sys.argv = [script, *extra]
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # as when the script runs itself
    runpy.run_path(script, run_name="__main__")
    if name not in found:
        print(f"error: {script} has no benchmark {name!r} (it has {', '.join(found) or 'none'})", file=answers, flush=True)
        return 1
    kind, func, args = found[name]

    def timed(loops: int) -> float:
        if kind == "time":  # the function times itself (gc_traversal times only the collections)
            return func(loops, *args)
        if kind == "func":
            t0 = time.perf_counter()
            for _ in range(loops):
                func(*args)
            return time.perf_counter() - t0

        async def main() -> float:
            t0 = time.perf_counter()
            for _ in range(loops):
                await func(*args)
            return time.perf_counter() - t0

        return asyncio.run(main())

    print("ready", file=answers, flush=True)
    for line in sys.stdin:
        before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        seconds = timed(int(line))
        wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        # What the kernel did during the call, which valgrind's counts never see: page faults
        # (a purged page touched again is one) and system time (madvise, munmap, faults). Of the
        # whole call: a function that times itself may time only part of it (gc_traversal).
        print(f"{seconds!r} {after.ru_minflt - before.ru_minflt} {after.ru_stime - before.ru_stime!r} {wall!r}",
              file=answers, flush=True)
    return 0


class Worker:
    """One configuration's worker process, answering timing requests."""

    def __init__(self, python: str, script: str, name: str, extra: List[str], env: dict, cpu: int | None):
        cmd = [python, os.path.abspath(__file__), WORKER, script, name, *extra]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline().strip()
        if first != "ready":
            self.close()
            raise SystemExit(f"{name}: the worker did not start ({first or 'no output'})")

    def time(self, loops: int) -> float:
        """Seconds ``loops`` loops took (``faults``, ``system`` and ``wall`` then hold the page
        faults, system seconds and wall seconds of the whole call)."""
        self.proc.stdin.write(f"{loops}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().split()
        if len(answer) != 4:
            raise SystemExit(f"a worker died (exit {self.proc.wait()})")
        self.faults, self.system, self.wall = int(answer[1]), float(answer[2]), float(answer[3])
        return float(answer[0])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()


def calibrate(w: Worker, target_s: float) -> int:
    """Loops for one timing of about ``target_s`` (powers of two, as pyperf does)."""
    loops = 1
    while loops < 1 << 20:
        if w.time(loops) >= target_s:
            return loops
        loops *= 2
    return loops


def measure(python: str, script: str, name: str, extra: List[str], envs: List[dict], processes: int,
            pairs: int, target_s: float, cpu: int | None, kernel: Dict[str, List[float]] | None = None
            ) -> List[List[float]]:
    """Per process pair, the ratios second / first of ``pairs`` timings taken in turn. With
    ``kernel``, also each configuration's page faults per loop and system share of the wall
    time, over all its timed calls: ``kernel["faults"]`` and ``kernel["system"]``, first then second."""
    out = []
    totals = [[0, 0.0, 0.0, 0] for _ in envs]  # faults, system seconds, wall seconds, loops
    loops = None
    for p in range(processes):
        # Which configuration's worker starts (and warms up) first alternates from process to
        # process, like the order of the timings: an A/A run once had the second-started worker
        # slower in 7 of 8 processes (1.061), so a fixed start order could pass for an allocator's cost.
        starting = list(range(len(envs)))[::1 if p % 2 == 0 else -1]
        workers: List[Worker] = [None] * len(envs)  # type: ignore[list-item]
        try:
            for k in starting:
                workers[k] = Worker(python, script, name, extra, envs[k], cpu)
            if loops is None:  # one loop count for every process of this benchmark
                loops = calibrate(workers[starting[0]], target_s)
            for k in starting:  # warm-up: imports done, caches and the allocator's pages in use
                for _ in range(2):
                    workers[k].time(loops)
            ratios = []
            for i in range(pairs):
                order = (0, 1) if (i + p) % 2 == 0 else (1, 0)
                t = [0.0, 0.0]
                for k in order:
                    t[k] = workers[k].time(loops)
                    totals[k][0] += workers[k].faults
                    totals[k][1] += workers[k].system
                    totals[k][2] += workers[k].wall
                    totals[k][3] += loops
                ratios.append(t[1] / t[0])
            out.append(ratios)
        finally:
            for w in workers:
                if w is not None:
                    w.close()
    if kernel is not None:
        kernel["faults"] = [f / n for f, _, _, n in totals]
        kernel["system"] = [sys_s / s if s > 0 else 0.0 for _, sys_s, s, _ in totals]
    return out


def summary(per_process: List[List[float]]) -> Dict[str, float]:
    """Median and quartiles of all pair ratios, processes whose median is above 1, and the
    medians of the first and second half of the processes."""
    flat = [r for proc in per_process for r in proc]
    q1, _, q3 = statistics.quantiles(flat, n=4, method="inclusive") if len(flat) > 1 else (flat[0],) * 3
    half = max(1, len(per_process) // 2)
    first = [r for proc in per_process[:half] for r in proc]
    second = [r for proc in per_process[half:] for r in proc] or first
    return {
        "median": statistics.median(flat), "q1": q1, "q3": q3, "pairs": len(flat),
        "processes": len(per_process),
        "processes_above_1": sum(1 for proc in per_process if statistics.median(proc) > 1),
        "p": sign_flip_p([statistics.median(proc) for proc in per_process]),
        "first_half": statistics.median(first), "second_half": statistics.median(second),
    }


def kernel_cells(k: Dict[str, List[float]]) -> str:
    """Page faults per loop and the system share of the calls' time, first / second configuration."""
    return (f"{k['faults'][0]:.0f} / {k['faults'][1]:.0f} | "
            f"{100 * k['system'][0]:.1f}% / {100 * k['system'][1]:.1f}%")


def table(results: Dict[str, Dict[str, float]], configs: List[str]) -> List[str]:
    a, b = configs
    lines = [
        f"`{b}` / `{a}`, timed in ping-pong (`benches/pyperformance_pingpong.py`): median of the pair ratios, "
        "their quartiles, processes whose median ratio is above 1, a paired sign-flip test over the processes' "
        "medians (two-sided p), the medians over the first and second half of the processes, and what the "
        f"kernel did in the timed loops: page faults per loop and system time as a share of the calls' wall time (`{a}` / `{b}`)",
        "",
        "| benchmark | median ratio | quartiles | pairs | processes above 1 | p (processes) | first half | second half "
        "| page faults per loop | system time |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in results.items():
        k = kernel_cells(s["kernel"]) if "kernel" in s else " | "
        lines.append(f"| {name} | {s['median']:.3f} | {s['q1']:.3f}-{s['q3']:.3f} | {s['pairs']} | "
                     f"{s['processes_above_1']} of {s['processes']} | {s['p']:.3f} | {s['first_half']:.3f} | "
                     f"{s['second_half']:.3f} | {k} |")
    if len(results) > 1:
        lines.append(f"| **geometric mean** | {geomean([s['median'] for s in results.values()]):.3f} | | | | | | | | |")
    return lines


def main() -> int:
    from pyperformance_callgrind import check_envs, pyperformance_setup  # the parent only: the worker needs pyperf alone
    from pyperformance_ab import CONFIGS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmarks", default="gc_traversal,async_tree_none,go,chaos,deepcopy_memo")
    ap.add_argument("--configs", default="pymalloc,rustmalloc")
    ap.add_argument("--processes", type=int, default=6)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--target-ms", type=float, default=30.0)
    ap.add_argument("--cpu", type=int, default=os.cpu_count() - 1 if os.cpu_count() else None,
                    help="the CPU both workers are pinned to (default: the last; -1: not pinned)")
    ap.add_argument("--venv", help="pyperformance's venv (default: the one benches/pyperformance.sh made)")
    ap.add_argument("--script", help="take the benchmarks from this pyperf script instead of pyperformance's "
                    "(e.g. benches/gc_layout.py)")
    ap.add_argument("--out", help="write the table (Markdown) and, beside it, the ratios as JSON")
    a = ap.parse_args()
    configs = a.configs.split(",")
    if len(configs) != 2 or any(c not in CONFIGS for c in configs):
        raise SystemExit(f"--configs: two of {', '.join(CONFIGS)}, comma-separated (the same one twice measures the method)")
    if "rustmalloc-other" in configs:
        other_build_pythonpath()  # exits now, before any run, if it is not there
    if a.processes < 1 or a.pairs < 1 or a.target_ms <= 0:
        raise SystemExit("--processes and --pairs must be at least 1, --target-ms above 0")
    cpu = None if a.cpu is not None and a.cpu < 0 else a.cpu
    python, scripts, base = pyperformance_setup(a.venv)
    envs = [dict(base, **CONFIGS[c]) for c in configs]
    check_envs(python, dict(zip(configs, envs)))
    results, raw = {}, {}
    for name in a.benchmarks.split(","):
        script, extra = (os.path.abspath(a.script), []) if a.script else find_script(scripts, name)
        kernel: Dict[str, List[float]] = {}
        per_process = measure(python, script, name, extra, envs, a.processes, a.pairs, a.target_ms / 1000, cpu, kernel)
        results[name], raw[name] = dict(summary(per_process), kernel=kernel), per_process
        s = results[name]
        print(f"{name:22} {configs[1]}/{configs[0]} median {s['median']:.3f} quartiles {s['q1']:.3f}-{s['q3']:.3f} "
              f"above 1 in {s['processes_above_1']}/{s['processes']} processes (p {s['p']:.3f}); halves {s['first_half']:.3f} "
              f"{s['second_half']:.3f}; faults/loop and system share {kernel_cells(kernel)}", file=sys.stderr, flush=True)
    lines = table(results, configs)
    print("\n".join(lines))
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
            json.dump({"configs": configs, "ratios": raw}, f)
    return 0


def find_script(scripts: Dict[str, Tuple[str, List[str]]], name: str) -> Tuple[str, List[str]]:
    """The script (and its options) that holds the pyperf benchmark ``name``: a pyperformance
    benchmark of that name, or the one whose name starts the given one (deepcopy_memo is in
    deepcopy's script; async_tree_none is async_tree's with the option ``none``)."""
    if name in scripts:
        return scripts[name]
    for base in sorted(scripts, key=len, reverse=True):
        if name.startswith(base + "_"):
            return scripts[base]
    raise SystemExit(f"unknown benchmark {name!r}")


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == WORKER:
        sys.exit(worker(sys.argv[2], sys.argv[3], sys.argv[4:]))
    sys.exit(main())
