#!/usr/bin/env python3
"""The allocator-only microbenchmarks (``micro.py``) timed in ping-pong, rustmalloc against one
peer. This is for the wall-clock goals that ``run.py``'s interleaved rounds call missed "within
noise". On this shared machine the same configuration varies by ±20-50% from round to round, so
a 10% difference between two medians of five rounds says little.

    python benches/micro_pingpong.py BENCH:PEER[,BENCH:PEER...] [--processes 8] [--pairs 20]
        [--cpu 1] [--out FILE]

``BENCH`` is a name from ``micro.py`` (``batch_obj_32``, ``churn_obj_mix``, ``cross_raw_mix_t2``,
...) and ``PEER`` a configuration from ``configs.py`` (``mimalloc``, ``tcmalloc``, ``pymalloc``,
...), or ``rustmalloc-other``: another build of rustmalloc, installed the same way. Its wheel is
unpacked into the directory ``$RUSTMALLOC_OTHER_BUILD``, which comes first on the path
(``maturin build --release -o W && python -m zipfile -e W/*.whl DIR``). To compare two builds,
unpack both, set ``PYTHONPATH`` to one and ``RUSTMALLOC_OTHER_BUILD`` to the other, and run
both directions: the installed build against the very same build unpacked timed 0.935-0.953 on
``churn_obj_mix`` (session 32, ``results/micro_pingpong/README.md``), and whichever build is
first on the path gains about 3% there. The method is the one of ``pyperformance_pingpong.py``. For each benchmark,
``--processes`` times: start one worker process for the peer and one for rustmalloc, both alive,
the same build and ``python`` as ``run.py`` uses. Then ``--pairs`` times, ask each in turn for one
run of the benchmark (``_bench.run`` at its full size, its own warm-up included), the order
alternating pair by pair. A pair's two timings are taken milliseconds apart, so they see nearly
the same machine, and their ratio cancels most of the drift.

The report, per benchmark: rustmalloc's ns per call over the peer's, as the median of the pair
ratios and their quartiles; how many processes had a median above 1; a paired sign-flip test
over the processes' medians (the process pair is the unit; with 8 processes p cannot go below
2/256); the two medians in ns per call; and each side's page faults per call. Single-threaded
benchmarks are pinned to ``--cpu``. Those with threads get both CPUs, which they take in turn.

Writes a Markdown table to ``--out`` and every ratio to the ``.json`` beside it (default: print
only). Not in CI: 2-3 minutes per benchmark at the defaults.
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
WORKER = "--micro-pingpong-worker"
#: The peer that is another build of rustmalloc (``$RUSTMALLOC_OTHER_BUILD``).
OTHER = "rustmalloc-other"


def worker(quick: bool) -> int:
    """Answer each line ``NAME`` on stdin with ``ns ops minor_faults`` of one ``_bench.run`` of
    the microbenchmark NAME (at tiny sizes if ``quick``), until stdin closes. rustmalloc is
    installed first (``worker.py`` does it on import, as ``RMBENCH_INSTALL`` asks)."""
    sys.path.insert(0, HERE)
    import worker as _installs_first  # noqa: F401  (the install happens on import)
    import resource

    import micro
    from rustmalloc._rustmalloc import _bench

    # Refuse to measure the wrong allocator (``configs.state_problem``).
    from configs import state_problem

    problem = state_problem(_installs_first.allocator_state(), dict(os.environ))
    if problem:
        print(f"error: wrong allocator state: {problem}", flush=True)
        return 1
    specs = {b.name: b for b in micro.benches(quick)}
    print("ready", flush=True)
    for line in sys.stdin:
        b = specs[line.strip()]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ns, ops, errors = _bench.run(b.pattern, b.domain, b.sizes, b.ops, **b.kwargs)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        if errors:
            print(f"error: {errors} failed allocations", flush=True)
            return 1
        print(f"{ns} {ops} {faults}", flush=True)
    return 0


class Worker:
    """One configuration's worker process."""

    def __init__(self, python: str, env: dict, cpu: str | None, quick: bool = False):
        cmd = [python, os.path.abspath(__file__), WORKER, *(["--quick"] if quick else [])]
        if cpu is not None:
            cmd = ["taskset", "-c", cpu, *cmd]
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline().strip()
        if first != "ready":
            self.close()
            raise SystemExit(f"a worker did not start ({first or 'no output'}; env {env.get('LD_PRELOAD', '')})")

    def run(self, name: str) -> Tuple[float, float]:
        """ns per call of one run of ``name``, and page faults per call."""
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().split()
        if len(answer) != 3:
            raise SystemExit(f"{name}: a worker failed ({' '.join(answer) or f'exit {self.proc.wait()}'})")
        ns, ops, faults = (int(x) for x in answer)
        return ns / ops, faults / ops

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()


def measure(python: str, name: str, envs: List[dict], processes: int, pairs: int, cpu: str | None,
            quick: bool = False, warmups: int = 1) -> Tuple[List[List[float]], List[List[float]], List[float]]:
    """Per process pair, the ratios second / first of ``pairs`` runs taken in turn; every run's ns
    per call, per configuration; and each configuration's page faults per call over its runs."""
    ratios: List[List[float]] = []
    ns: List[List[float]] = [[], []]
    faults = [0.0, 0.0]
    for p in range(processes):
        # Which configuration's worker starts and warms up first alternates by process, as in
        # ``pyperformance_pingpong.measure``: an effect of going first then spreads the pairs
        # instead of biasing them.
        first = (0, 1) if p % 2 == 0 else (1, 0)
        workers: Dict[int, Worker] = {}
        try:
            for k in first:
                workers[k] = Worker(python, envs[k], cpu, quick)
            for k in first:
                for _ in range(warmups):
                    workers[k].run(name)
            mine = []
            for i in range(pairs):
                t = [0.0, 0.0]
                for k in ((0, 1) if (i + p) % 2 == 0 else (1, 0)):
                    t[k], f = workers[k].run(name)
                    ns[k].append(t[k])
                    faults[k] += f
                mine.append(t[1] / t[0])
            ratios.append(mine)
        finally:
            for w in workers.values():
                w.close()
    runs = processes * pairs
    return ratios, ns, [f / runs for f in faults]


def table(results: Dict[str, dict]) -> List[str]:
    lines = [
        "rustmalloc's ns per call over the peer's, timed in ping-pong (`benches/micro_pingpong.py`): the median "
        "of the pair ratios and their quartiles, the processes whose median ratio is above 1, a paired sign-flip "
        "test over the processes' medians (two-sided p), each side's median ns per call over all its runs, and "
        "page faults per call (peer / rustmalloc)",
        "",
        "| benchmark | peer | median ratio | quartiles | pairs | processes above 1 | p (processes) "
        "| peer ns/call | rustmalloc ns/call | page faults per call |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results.values():
        s = r["summary"]
        lines.append(
            f"| {r['bench']} | {r['peer']} | {s['median']:.3f} | {s['q1']:.3f}-{s['q3']:.3f} | {s['pairs']} | "
            f"{s['processes_above_1']} of {s['processes']} | {s['p']:.3f} | {r['ns'][0]:.2f} | {r['ns'][1]:.2f} | "
            f"{r['faults'][0]:.4f} / {r['faults'][1]:.4f} |")
    return lines


def main() -> int:
    sys.path.insert(0, HERE)
    import configs as cfgmod
    import micro
    from pyperformance_pingpong import summary

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs_of", metavar="BENCH:PEER[,BENCH:PEER...]")
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=20, help="timings of each configuration per process")
    ap.add_argument("--cpu", default="1", help="the CPU single-threaded benchmarks are pinned to ('' for none)")
    ap.add_argument("--python", default=sys.executable, help="an interpreter with rustmalloc installed (release build)")
    ap.add_argument("--out", help="Markdown table here, every ratio in the .json beside it")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (run.py's --quick): checks the tool, measures nothing")
    a = ap.parse_args()
    if a.processes < 1 or a.pairs < 1:
        raise SystemExit("--processes and --pairs must be at least 1")
    configs = {c.name: c for c in cfgmod.all_configs()[0]}
    specs = micro.by_name()
    wanted = []
    for item in a.pairs_of.split(","):
        bench, _, peer = item.partition(":")
        if bench not in specs:
            raise SystemExit(f"unknown benchmark {bench!r}; choose from {', '.join(specs)}")
        if peer == OTHER:
            cfgmod.other_build_pythonpath()  # exits now, before any run, if it is not there
        elif peer not in configs or peer.startswith("rustmalloc"):
            peers = ", ".join([*(n for n in configs if not n.startswith("rustmalloc")), OTHER])
            raise SystemExit(f"{item!r}: write BENCH:PEER with PEER one of {peers}")
        wanted.append((bench, peer))
    probe = subprocess.run([a.python, "-c", "from rustmalloc._rustmalloc import _bench; print(int(_bench.DEBUG_BUILD))"],
                           capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != "0":
        raise SystemExit(f"{a.python}: needs a release build of rustmalloc ({probe.stderr.strip() or 'a debug build'})")
    results: Dict[str, dict] = {}
    mine = cfgmod.worker_env(configs["rustmalloc"])
    for bench, peer in wanted:
        if peer == OTHER:
            envs = [dict(mine, PYTHONPATH=cfgmod.other_build_pythonpath(mine.get("PYTHONPATH"))), mine]
        else:
            envs = [cfgmod.worker_env(configs[peer]), mine]
        cpu = (a.cpu or None) if specs[bench].threads == 1 else None
        ratios, ns, faults = measure(a.python, bench, envs, a.processes, a.pairs, cpu, a.quick)
        s = summary(ratios)
        r = results[f"{bench}:{peer}"] = {"bench": bench, "peer": peer, "summary": s, "ratios": ratios,
                                          "ns": [statistics.median(x) for x in ns], "faults": faults}
        print(f"{bench:20} rustmalloc/{peer} median {s['median']:.3f} quartiles {s['q1']:.3f}-{s['q3']:.3f} "
              f"above 1 in {s['processes_above_1']}/{s['processes']} processes (p {s['p']:.3f}); "
              f"ns/call {r['ns'][0]:.2f} / {r['ns'][1]:.2f}", file=sys.stderr, flush=True)
    lines = table(results)
    print("\n".join(lines))
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
            json.dump(results, f)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == WORKER:
        sys.exit(worker("--quick" in sys.argv[2:]))
    sys.exit(main())
