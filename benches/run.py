#!/usr/bin/env python3
"""rustmalloc's benchmark suite: one command, every allocator configuration side by side.

    python benches/run.py                 # the full run (about 15 minutes on 2 cores)
    python benches/run.py --quick         # tiny sizes, one round: checks the suite works
    python benches/run.py --report-only   # rebuild results.md and the charts from results.json

Each configuration (pymalloc, glibc, jemalloc, tcmalloc, mimalloc, rustmalloc, rustmalloc's
forward-only hooks) runs in fresh interpreters (``worker.py``). Rounds interleave the
configurations (rotating their order), so drift on a noisy machine hits all alike; every figure
is a median over rounds, with its spread. Levels:

  micro      native allocator loops (``rustmalloc._rustmalloc._bench``): ns per allocator call
  callgrind  the same loops under ``valgrind --tool=callgrind``: instructions per call, and a
             profile of where rustmalloc's instructions go; and the Python workloads once each
             under callgrind: the interpreter's instructions per workload run
  workloads  Python workloads under pytest-benchmark
  memory     peak RSS of each workload, and RSS after its data is dropped

Results: ``results.md`` (tables, goals of issue 5, machine), ``results.json`` (every measurement)
and PNG charts in ``--out`` (default ``benches/results``; ``benches/results/tmp/quick`` with
``--quick``). Raw callgrind files go to ``<out>/tmp/``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cgprofile  # noqa: E402
import configs as cfgmod  # noqa: E402
import machine  # noqa: E402
import micro  # noqa: E402
import report  # noqa: E402
import workloads  # noqa: E402

LEVELS = ("micro", "callgrind", "workloads", "memory")
WORKER = os.path.join(HERE, "worker.py")
TIMEOUT = 900


class Runner:
    def __init__(self, args, configs: List[cfgmod.Config]):
        self.args = args
        self.configs = configs
        self.tmp = os.path.join(args.out, "tmp")
        os.makedirs(self.tmp, exist_ok=True)
        self.failures: List[dict] = []

    def log(self, msg: str) -> None:
        if not self.args.quiet:
            print(msg, file=sys.stderr, flush=True)

    def worker(self, config: cfgmod.Config, command: str, extra: List[str], prefix: Optional[List[str]] = None) -> Optional[dict]:
        """Run one worker process; its JSON result, or None (recorded as a failure)."""
        fd, out = tempfile.mkstemp(prefix=f"{config.name}-{command}-", suffix=".json", dir=self.tmp)
        os.close(fd)
        cmd = (prefix or []) + [self.args.python, WORKER, command, out] + extra
        t0 = time.perf_counter()
        try:
            env = cfgmod.worker_env(config, callgrind=prefix is not None)
            proc = subprocess.run(cmd, env=env, cwd=HERE, capture_output=True, text=True, timeout=TIMEOUT)
            code, stderr = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired:
            code, stderr = f"timeout after {TIMEOUT} s", ""
        elapsed = time.perf_counter() - t0
        result = None
        if code == 0:
            with open(out) as f:
                result = json.load(f)
        else:
            self.failures.append(
                {"config": config.name, "command": " ".join([command] + extra), "exit": code, "stderr": stderr[-2000:]}
            )
            self.log(f"  FAILED {config.name} {command} {' '.join(extra)}: exit {code}\n{stderr[-1500:]}")
        os.unlink(out)
        self.log(f"  {config.name:15} {command:9} {' '.join(extra)[:50]:50} {elapsed:6.1f} s")
        return result

    def rotated(self, r: int) -> List[cfgmod.Config]:
        k = r % len(self.configs)
        return self.configs[k:] + self.configs[:k]

    # -- levels -----------------------------------------------------------------------------

    def run_micro_and_workloads(self, data: dict) -> None:
        a = self.args
        levels = set(a.levels)
        wl_scale = workloads.SCALE_QUICK if a.quick else workloads.SCALE_TIMED
        for r in range(a.rounds):
            self.log(f"round {r + 1}/{a.rounds}")
            if "micro" in levels:
                for c in self.rotated(r):
                    res = self.worker(c, "micro", ["--quick"] if a.quick else [])
                    if res:
                        data["states"].setdefault(c.name, res["state_after"])
                        for m in res["micro"]:
                            data["micro"].setdefault(c.name, {}).setdefault(m["name"], []).append(m)
            if "workloads" in levels:
                for c in self.rotated(r):
                    extra = ["--scale", str(wl_scale), "--rounds", str(1 if a.quick else a.workload_rounds)]
                    res = self.worker(c, "workloads", extra)
                    if res:
                        data["states"].setdefault(c.name, res["state_after"])
                        for name, st in res["workloads"].items():
                            data["workloads"].setdefault(c.name, {}).setdefault(name, []).append(st)

    def run_memory(self, data: dict) -> None:
        a = self.args
        scale = workloads.SCALE_QUICK if a.quick else workloads.SCALE_MEMORY
        for r in range(a.memory_rounds):
            self.log(f"memory round {r + 1}/{a.memory_rounds}")
            for name in workloads.WORKLOADS:
                for c in self.rotated(r):
                    res = self.worker(c, "memory", ["--workload", name, "--scale", str(scale)])
                    if res:
                        data["memory"].setdefault(c.name, {}).setdefault(name, []).append(res["memory"])

    def run_callgrind(self, data: dict) -> None:
        valgrind = shutil.which("valgrind")
        if valgrind is None:
            data["notes"].append("callgrind level skipped: valgrind is not installed (apt-get install valgrind)")
            return
        wanted = self.args.callgrind_configs
        for c in self.configs:
            if wanted and c.name not in wanted:
                continue
            # Call counts per call chain (see cgprofile's doc), and per-instruction costs for
            # callgrind_annotate.
            extra = ["--callgrind"] + (["--quick"] if self.args.quick else [])
            got = self.callgrind_worker(data, c, valgrind, "callgrind", "micro", extra, "rmbench_measure",
                                        ["--separate-callers=8", "--dump-instr=yes"], lambda res: res["micro"])
            if got is None:
                continue
            res, parts = got
            for m, part in zip(res["micro"], parts):
                prof = cgprofile.parse(part, within="rmbench_measure")
                entry = {"ir": prof.total, "ops": m["ops"], "errors": m["errors"], "file": os.path.relpath(part, self.args.out)}
                entry["entry_points"] = _entry_points(prof)
                if c.name in ("rustmalloc", "pymalloc"):
                    entry["hot"] = cgprofile.hot_table(prof, m["ops"])
                data["callgrind"].setdefault(c.name, {})[m["name"]] = entry
            self.run_callgrind_workloads(data, c, valgrind)

    def callgrind_worker(self, data: dict, c: cfgmod.Config, valgrind: str, stem: str, command: str,
                         extra: List[str], region: str, options: List[str], measured) -> Optional[tuple]:
        """Run a worker under callgrind, counting only inside `region` with one dump after each
        time it returns. (its result, its dump files in order), or None (noted) if the dumps do
        not match what `measured(result)` lists."""
        base = os.path.join(self.tmp, f"{stem}.{c.name}")
        for old in glob.glob(base + ".*"):
            os.unlink(old)
        prefix = [valgrind, "--tool=callgrind", "--collect-atstart=no", f"--toggle-collect={region}",
                  f"--dump-after={region}", *options, f"--callgrind-out-file={base}"]
        res = self.worker(c, command, extra, prefix)
        if not res:
            return None
        parts = sorted(glob.glob(base + ".*"), key=lambda p: int(p.rsplit(".", 1)[1]))
        if len(parts) != len(measured(res)):
            data["notes"].append(f"{stem} {c.name}: {len(parts)} dumps for {len(measured(res))} runs; not used")
            return None
        return res, parts

    def run_callgrind_workloads(self, data: dict, c: cfgmod.Config, valgrind: str) -> None:
        """The Python workloads under callgrind: instructions of the whole interpreter per
        workload run, stable where their wall clock swings by several percent."""
        extra = ["--callgrind"] + (["--scale", str(workloads.SCALE_QUICK)] if self.args.quick else [])
        got = self.callgrind_worker(data, c, valgrind, "callgrind-workloads", "workloads", extra, "rmbench_workload",
                                    [], lambda res: res["workloads_callgrind"]["names"])
        if got is None:
            return
        res, parts = got
        names = res["workloads_callgrind"]["names"]
        for name, part in zip(names, parts):
            prof = cgprofile.parse(part)
            data.setdefault("callgrind_workloads", {}).setdefault(c.name, {})[name] = {
                "ir": prof.total,
                "scale": res["workloads_callgrind"]["scale"],
            }


ENTRY_POINTS = (
    "PyObject_Malloc", "PyObject_Free", "PyObject_Realloc",
    "PyMem_Malloc", "PyMem_Free", "PyMem_Realloc",
    "PyMem_RawMalloc", "PyMem_RawFree", "PyMem_RawRealloc",
)


def _entry_points(prof: cgprofile.Profile) -> Dict[str, dict]:
    """Inclusive instructions per call of CPython's public allocator functions."""
    out = {}
    for name in ENTRY_POINTS:
        f = prof.functions.get(name)
        if f and f.calls:
            out[name] = {"calls": f.calls, "per_call": f.called_ir / f.calls}
    return out


def probe(args) -> None:
    """Refuse to measure a debug build of rustmalloc by accident."""
    code = "from rustmalloc._rustmalloc import _bench; print(int(_bench.DEBUG_BUILD))"
    try:
        out = subprocess.run([args.python, "-c", code], capture_output=True, text=True, check=True, cwd=HERE).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(
            f"{args.python} cannot import rustmalloc's benchmark loops:\n{e.stderr}\n"
            "Install the project first: pip install '.[bench]' (a release build)"
        )
    if out.strip() == "1" and not args.allow_debug_build:
        raise SystemExit(
            "the installed rustmalloc is a debug build: benchmarks would measure the wrong thing. "
            "Install it with `pip install .` (release profile), or pass --allow-debug-build."
        )


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes and one round (the smoke test)")
    p.add_argument("--out", help="results directory (default benches/results, or benches/results/tmp/quick with --quick)")
    p.add_argument("--levels", nargs="+", choices=LEVELS, default=list(LEVELS))
    p.add_argument("--configs", nargs="+", help="only these configurations (default: every one available)")
    p.add_argument("--callgrind-configs", nargs="+", help="run the callgrind level only for these configurations")
    p.add_argument("--rounds", type=int, help="interleaved rounds of micro and workloads (default 5; 1 with --quick)")
    p.add_argument("--workload-rounds", type=int, default=3, help="pytest-benchmark rounds per workload per process")
    p.add_argument("--memory-rounds", type=int, help="rounds of the memory level (default 1)")
    p.add_argument("--python", default=sys.executable, help="the interpreter to benchmark (with rustmalloc installed)")
    p.add_argument("--report-only", action="store_true", help="only rebuild results.md and charts from results.json")
    p.add_argument("--no-charts", action="store_true")
    p.add_argument("--allow-debug-build", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = os.path.join(HERE, "results", "tmp", "quick") if args.quick else os.path.join(HERE, "results")
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    results_json = os.path.join(args.out, "results.json")

    if args.report_only:
        with open(results_json) as f:
            data = json.load(f)
        report.write(data, args.out, charts=not args.no_charts)
        return 0

    args.rounds = args.rounds or (1 if args.quick else 5)
    args.memory_rounds = args.memory_rounds or 1
    configs, notes = cfgmod.all_configs()
    if args.configs:
        unknown = set(args.configs) - {c.name for c in configs}
        if unknown:
            raise SystemExit(f"unknown or unavailable configurations: {sorted(unknown)}; notes: {notes}")
        configs = [c for c in configs if c.name in args.configs]
    if "workloads" in args.levels:
        check = subprocess.run([args.python, "-c", "import pytest_benchmark"], capture_output=True)
        if check.returncode != 0:
            notes.append("workloads level skipped: pytest-benchmark is not installed (pip install '.[bench]')")
            args.levels = [lv for lv in args.levels if lv != "workloads"]
    probe(args)

    data = {
        "quick": args.quick,
        "rounds": args.rounds,
        "workload_rounds": args.workload_rounds,
        "memory_rounds": args.memory_rounds,
        "levels": args.levels,
        "machine": machine.describe(args.python),
        "configs": [{"name": c.name, "description": c.description, "peer": c.peer} for c in configs],
        "notes": notes,
        "micro_benches": {
            b.name: {"about": b.about, "threads": b.threads, "ops": b.ops, "domain": b.domain} for b in micro.benches(args.quick)
        },
        "states": {},
        "micro": {},
        "callgrind": {},
        "workloads": {},
        "memory": {},
        "failures": [],
    }
    tuning = cfgmod.tuning_env()
    if tuning:  # passed on to the rustmalloc configurations: say so beside the figures
        data["machine"]["rustmalloc settings"] = " ".join(f"{k}={v}" for k, v in tuning.items())
    runner = Runner(args, configs)
    t0 = time.perf_counter()
    if {"micro", "workloads"} & set(args.levels):
        runner.run_micro_and_workloads(data)
    if "callgrind" in args.levels:
        runner.run_callgrind(data)
    if "memory" in args.levels:
        runner.run_memory(data)
    data["failures"] = runner.failures
    data["elapsed_s"] = round(time.perf_counter() - t0, 1)
    data["machine"]["load average at end"] = machine.load_average()
    with open(results_json, "w") as f:
        json.dump(data, f, indent=1)  # insertion order is the tables' order
    report.write(data, args.out, charts=not args.no_charts)
    runner.log(f"done in {data['elapsed_s']} s: {os.path.join(args.out, 'results.md')}")
    # A worker that failed (a crash, or a wrong allocator state: see `worker.checked_state`) or
    # blocks that came back damaged make the run fail: its figures are not to be trusted.
    wrong = report.Results(data).micro_errors()
    for e in wrong:
        runner.log(f"  WRONG DATA: {e}")
    return 1 if runner.failures or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
