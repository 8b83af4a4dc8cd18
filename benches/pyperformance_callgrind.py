#!/usr/bin/env python3
"""pyperformance's benchmarks under callgrind: instructions per benchmark loop under pymalloc,
PYTHONMALLOC=malloc (glibc) and rustmalloc, where their wall clock on a noisy machine cannot
tell a few percent apart.

    python benches/pyperformance_callgrind.py [--benchmarks a,b,...] [--target-ms 50] [--out DIR]

Needs valgrind, and the venv that ``benches/pyperformance.sh`` made (it holds the benchmarks'
requirements and rustmalloc with its startup hook; ``--venv`` to name another). Each benchmark
(each pyperf task of a script: xml_etree has four) runs as a pyperf worker (``--worker --values 1
--warmups 0``) under ``valgrind --tool=callgrind``, once with ``--loops L`` and once with
``--loops 2L``, with L chosen from a native run so that L loops take about ``--target-ms``; the
difference over L is the instructions of one loop, without the interpreter's start-up and imports.
Counts are of the whole process, allocator included; callgrind is blind to cache misses.
rustmalloc's purge delay is scaled to callgrind's slowdown (``configs.CALLGRIND_PURGE_DELAY_MS``),
and every run gets the same hash seed (``configs.CALLGRIND_HASH_SEED``).

Writes ``<out>/callgrind.md`` and ``<out>/callgrind.json`` (default out:
benches/results/pyperformance); the JSON after every count, so ``--resume`` goes on where a run
stopped. About 1-2 minutes per benchmark and configuration on this machine. ``--configs``
counts only some configurations: two runs on copies of one callgrind.json that holds the loop
counts (``--resume``), then their counts merged, use both cores; with ``--configs ''`` and
``--resume`` the script counts nothing and writes the table from the JSON (it still runs each
benchmark once natively, to list its tasks).

``--cache-sim`` runs cachegrind's cache simulation instead of callgrind, in the same way (loops
L and 2L, the same hash seed and purge delay), with the last level set to one core's L2 (read
from sysfs, or ``--l2 SIZE,WAYS,LINE``; the shared L3, 32 MiB here, holds these loops almost
whole): per loop, the instructions, and the data reads and writes that miss the L1 data cache
and the L2, which is where a layout the allocator chose costs time that instructions do not show.
It writes ``cachesim.md`` and ``cachesim.json`` (``--resume`` and ``--configs`` work on those).
Still a model: no TLB, no prefetcher, no other tenant on the cache.

``--tlb-sim`` runs the same cachegrind simulation with its two levels shaped as the data TLBs
instead of caches: lines of one 4 KiB page, the first level as an L1 DTLB and the last as the
second-level TLB (``--tlb L1_ENTRIES,L1_WAYS,L2_ENTRIES,L2_WAYS``, default 64,64,2048,16: 64
entries fully associative and 2048 entries 16-way, the shape of AMD's Zen 2 and 3; Intel's recent
cores have 64-96 and 1536-2048). A miss in the first level is a look-up in the second; a miss in
the second is a page walk, which in a virtual machine walks the host's tables too. This is where
an allocator that spreads the same blocks over more pages costs time that neither instructions
nor cache misses show. The second level also sees the first-level instruction-cache misses (a
unified TLB sees instruction pages too). It writes ``tlbsim.md`` and ``tlbsim.json``. A model:
4 KiB pages only (our segments and pymalloc's arenas get no transparent huge pages here), no
page-walk caches.

``--branch-sim`` runs cachegrind's branch model instead (``--branch-sim=yes``): conditional and
indirect branches mispredicted per loop, to ``branchsim.md`` and ``branchsim.json``; a predictor
far simpler than the machine's, so only large differences mean something.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = (
    "json_dumps,json_loads,pickle_pure_python,unpickle_pure_python,deltablue,richards,go,hexiom,chaos,"
    "raytrace,nbody,xml_etree,gc_traversal,async_tree,deepcopy"
)
sys.path.insert(0, HERE)
from configs import CALLGRIND_HASH_SEED, CALLGRIND_PURGE_DELAY_MS, clean_env  # noqa: E402  (why: see there)
from report import geomean  # noqa: E402

CONFIGS = {
    "pymalloc": {},
    "malloc": {"PYTHONMALLOC": "malloc"},
    "rustmalloc": {"RUSTMALLOC": "1", "RUSTMALLOC_PURGE_DELAY_MS": str(CALLGRIND_PURGE_DELAY_MS)},
}
SUMMARY = re.compile(r"^summary:\s*(.*)$", re.M)
EVENTS = re.compile(r"^events:\s*(.*)$", re.M)
# cachesim.json / tlbsim.json keys: instructions, and data reads and writes that miss the first
# level and the last; branchsim.json: instructions, conditional and indirect mispredictions.
CACHE_KEYS = {"ir": ("Ir",), "d1": ("D1mr", "D1mw"), "l2": ("DLmr", "DLmw")}
BRANCH_KEYS = {"ir": ("Ir",), "d1": ("Bcm",), "l2": ("Bim",)}
BRANCH_OPTIONS = ["--cache-sim=no", "--branch-sim=yes"]
#: The data-TLB model of --tlb-sim unless --tlb says otherwise: L1_ENTRIES,L1_WAYS,L2_ENTRIES,L2_WAYS.
DEFAULT_TLB = "64,64,2048,16"


def benchmark_scripts(bench_root: str) -> Dict[str, Tuple[str, List[str]]]:
    """pyperformance name -> (script, extra options), from the benchmarks' TOML files."""
    out = {}
    for toml in glob.glob(os.path.join(bench_root, "bm_*", "*.toml")):
        with open(toml, "rb") as f:
            meta = tomllib.load(f).get("tool", {}).get("pyperformance", {})
        name = meta.get("name") or os.path.basename(os.path.dirname(toml))[3:]
        if name and (name not in out or os.path.basename(toml) != "pyproject.toml"):
            out[name] = (os.path.join(os.path.dirname(toml), "run_benchmark.py"), list(meta.get("extra_opts", [])))
    return out


def pyperformance_setup(venv: str | None) -> Tuple[str, Dict[str, Tuple[str, List[str]]], dict]:
    """The interpreter of pyperformance's venv (``venv``, or the one ``benches/pyperformance.sh``
    made), the benchmarks' scripts (``benchmark_scripts``), and the environment without any
    allocator setting, for the configurations to add theirs."""
    venvs = [venv] if venv else glob.glob(os.path.join(HERE, "results", "tmp", "pyperformance", "venv", "*"))
    if len(venvs) != 1:
        raise SystemExit("run benches/pyperformance.sh once first (it makes the venv), or pass --venv")
    import pyperformance  # the benchmarks' sources ship with it

    scripts = benchmark_scripts(os.path.join(os.path.dirname(pyperformance.__file__), "data-files", "benchmarks"))
    env = clean_env()
    env.pop("RUSTMALLOC_PURGE_DELAY_MS", None)  # the configurations set it where they want it
    return os.path.join(venvs[0], "bin", "python"), scripts, env


#: Run in the venv's interpreter under a configuration's environment: ``worker.checked_state``
#: exits with the reason if the allocator serving it is not the one the configuration names.
_STATE_PROBE = "import sys; sys.path.insert(0, {here!r}); import worker; worker.checked_state()"


def check_envs(python: str, envs: Dict[str, dict]) -> None:
    """Exit with the reason unless each configuration's environment (name -> env) gets the
    allocator it names in a fresh interpreter of ``python`` (pyperformance's benchmark processes
    cannot check it themselves)."""
    for name, env in envs.items():
        p = subprocess.run([python, "-c", _STATE_PROBE.format(here=HERE)], env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"{name}: wrong allocator state: {(p.stdout + p.stderr).strip()[-1500:]}")


def worker_cmd(python: str, script: str, extra: List[str], loops: int, task: int, out: str) -> List[str]:
    return [python, script, *extra, "--worker", "--loops", str(loops), "--values", "1", "--warmups", "0",
            "--worker-task", str(task), "-o", out]


def tasks_of(python: str, script: str, extra: List[str], env: dict) -> List[Tuple[int, str, float]]:
    """(task, pyperf benchmark name, seconds per loop) of each task of a script, natively."""
    found = []
    for task in range(16):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "r.json")
            p = subprocess.run(worker_cmd(python, script, extra, 1, task, out), env=env, capture_output=True, text=True)
            if p.returncode != 0 or not os.path.exists(out):
                break
            with open(out) as f:
                data = json.load(f)
        bench = data["benchmarks"][0] if "benchmarks" in data else data
        name = bench.get("metadata", {}).get("name") or data.get("metadata", {}).get("name", f"task{task}")
        values = [v for r in bench["runs"] for v in r.get("values", [])]
        found.append((task, name, values[0]))
    return found


def valgrind_summary(tool: str, options: List[str], cmd: List[str], env: dict) -> Dict[str, int]:
    """Run ``cmd`` under valgrind's ``tool`` (callgrind, cachegrind) with ``options``; the summary
    line of its output file, event name -> count."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "vg.out")
        p = subprocess.run(["valgrind", f"--tool={tool}", *options, f"--{tool}-out-file={out}", *cmd], env=env,
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr[-1500:]}")
        with open(out, errors="replace") as f:
            text = f.read()
    ev, summary = EVENTS.search(text), SUMMARY.search(text)
    if not ev or not summary:
        raise RuntimeError(f"no events or summary line in the {tool} output")
    return dict(zip(ev.group(1).split(), map(int, summary.group(1).split())))


def callgrind_total(cmd: List[str], env: dict) -> int:
    return valgrind_summary("callgrind", [], cmd, env)["Ir"]


def l2_geometry(given: str) -> str:
    """cachegrind's ``--LL`` value (size,ways,line in bytes) for one core's L2: ``given`` or sysfs."""
    if given:
        return given
    base = "/sys/devices/system/cpu/cpu0/cache"
    for index in sorted(glob.glob(os.path.join(base, "index*"))):
        def read(name: str) -> str:
            with open(os.path.join(index, name)) as f:
                return f.read().strip()
        try:
            if read("level") != "2" or read("type") not in ("Unified", "Data"):
                continue
            size = read("size")
            size_bytes = int(size[:-1]) * {"K": 1024, "M": 1024 * 1024}[size[-1]] if size[-1] in "KM" else int(size)
            return f"{size_bytes},{read('ways_of_associativity')},{read('coherency_line_size')}"
        except (OSError, ValueError, KeyError):
            break
    raise SystemExit("--cache-sim: this machine's L2 is not described in sysfs; pass --l2 SIZE,WAYS,LINE "
                     "(bytes, e.g. 524288,8,64)")


def cache_options(l2: str) -> List[str]:
    """cachegrind's options for the cache model: the machine's L1d, and ``l2`` as the last level."""
    return ["--cache-sim=yes", f"--LL={l2}"]


PAGE = 4096


def tlb_options(tlb: str) -> List[str]:
    """cachegrind's options for the TLB model: ``tlb`` is L1_ENTRIES,L1_WAYS,L2_ENTRIES,L2_WAYS;
    each level becomes a cache of that many 4 KiB lines (cachegrind wants a power-of-two number
    of sets, so entries / ways must be one)."""
    try:
        l1, l1_ways, l2, l2_ways = (int(x) for x in tlb.split(","))
    except ValueError:
        raise SystemExit(f"--tlb {tlb!r}: give four integers, L1_ENTRIES,L1_WAYS,L2_ENTRIES,L2_WAYS (e.g. 64,64,2048,16)")
    for entries, ways in ((l1, l1_ways), (l2, l2_ways)):
        sets = entries // ways if ways > 0 and entries % ways == 0 else 0
        if sets < 1 or sets & (sets - 1):
            raise SystemExit(f"--tlb {tlb!r}: {entries} entries in {ways} ways is not a power-of-two number of sets")
    return ["--cache-sim=yes", f"--D1={l1 * PAGE},{l1_ways},{PAGE}", f"--LL={l2 * PAGE},{l2_ways},{PAGE}"]


def cachegrind_misses(cmd: List[str], env: dict, options: List[str],
                      keys: Dict[str, Tuple[str, ...]] = CACHE_KEYS) -> Dict[str, int]:
    """Instructions and misses of a whole run under cachegrind with ``options``
    (``cache_options`` or ``tlb_options``, with ``CACHE_KEYS``: ``d1`` the data misses of the
    first level, ``l2`` of the last; or ``BRANCH_OPTIONS`` with ``BRANCH_KEYS``: conditional and
    indirect branches mispredicted)."""
    counts = valgrind_summary("cachegrind", options, cmd, env)
    return {key: sum(counts[e] for e in events) for key, events in keys.items()}


# What each simulation's table says: its file, title, the two levels and how the model was set.
SIMS = {
    "cache": ("cachesim", "data-cache misses per loop", "--cache-sim", ("L1d", "L2"),
              "L1d as the machine's and the last level as one core's L2 (`--LL={geometry}`): data reads and "
              "writes that miss each level", "A model: no TLB, no prefetcher, no neighbours on the cache."),
    "tlb": ("tlbsim", "data-TLB misses per loop", "--tlb-sim", ("L1 DTLB", "L2 TLB"),
            "the two levels as data TLBs of 4 KiB pages (`--tlb {geometry}`: entries and ways of each level): data "
            "reads and writes that miss the L1 DTLB (a look-up in the second level) and the second level (a page "
            "walk)", "A model: 4 KiB pages only, no page-walk caches."),
    "branch": ("branchsim", "branch mispredictions per loop", "--branch-sim", ("conditional", "indirect"),
               "cachegrind's branch predictor (`--branch-sim=yes`{geometry}): conditional and indirect branches "
               "mispredicted", "A model: a table of 2-bit counters and a simple indirect-target predictor, far "
               "simpler than the machine's."),
}


def cache_table(results: Dict[str, Dict], geometry: str, sim: str = "cache") -> List[str]:
    _, title, flag, (first, last), how, caveat = SIMS[sim]
    lines = [
        f"# pyperformance under cachegrind: {title}",
        "",
        f"`python benches/pyperformance_callgrind.py {flag}` (see its doc): cachegrind's simulation of one loop "
        f"(loops L and 2L), {how.format(geometry=geometry)} per 1,000 instructions (MPKI, each configuration over "
        f"its own instructions), and rustmalloc's instructions as a ratio to pymalloc's. {caveat}",
        "",
        f"| benchmark | instructions rustmalloc / pymalloc | {first} MPKI pymalloc | {first} malloc | {first} rustmalloc "
        f"| {last} MPKI pymalloc | {last} malloc | {last} rustmalloc |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios: List[float] = []
    for name, r in results.items():
        if not set(CONFIGS) <= set(r):
            continue
        ratios.append(r["rustmalloc"]["ir"] / r["pymalloc"]["ir"])
        cells = [f"{ratios[-1]:.3f}"]
        cells += [f"{max(0.0, r[c][k]) * 1000 / r[c]['ir']:.3f}" for k in ("d1", "l2") for c in CONFIGS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"| **geometric mean** | {geomean(ratios):.3f} | | | | | | |" if ratios else "")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmarks", default=DEFAULT)
    ap.add_argument("--venv", help="pyperformance's venv (default: the one benches/pyperformance.sh made)")
    ap.add_argument("--target-ms", type=float, default=50.0, help="native time of the L loops counted")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "pyperformance"))
    ap.add_argument("--resume", action="store_true", help="keep the counts already in <out>/callgrind.json (cachesim.json)")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help="count only these configurations (two runs with --resume on copies of one callgrind.json, "
                    "which fixes the loop counts, can count them on two cores; merge the JSON files after)")
    ap.add_argument("--cache-sim", action="store_true",
                    help="count data-cache misses with cachegrind (L1d, and one core's L2 as the last level) "
                    "instead of instructions; writes cachesim.md / cachesim.json")
    ap.add_argument("--l2", default="", help="with --cache-sim: the L2 as SIZE,WAYS,LINE in bytes (default: sysfs)")
    ap.add_argument("--tlb-sim", action="store_true",
                    help="count data-TLB misses with cachegrind (levels of 4 KiB lines shaped as the L1 DTLB and "
                    "the second-level TLB); writes tlbsim.md / tlbsim.json")
    ap.add_argument("--branch-sim", action="store_true",
                    help="count branch mispredictions with cachegrind's branch model; writes branchsim.md / branchsim.json")
    ap.add_argument("--tlb", default=DEFAULT_TLB,
                    help=f"with --tlb-sim: L1_ENTRIES,L1_WAYS,L2_ENTRIES,L2_WAYS (default {DEFAULT_TLB})")
    a = ap.parse_args()
    if a.cache_sim + a.tlb_sim + a.branch_sim > 1:
        raise SystemExit("--cache-sim, --tlb-sim and --branch-sim are separate runs: give one of them")
    sim = "cache" if a.cache_sim else "tlb" if a.tlb_sim else "branch" if a.branch_sim else ""
    configs = a.configs.split(",") if a.configs else []
    for c in configs:
        if c not in CONFIGS:
            raise SystemExit(f"--configs: unknown configuration {c!r}; choose from {', '.join(CONFIGS)}")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    python, scripts, base_env = pyperformance_setup(a.venv)
    check_envs(python, {c: dict(base_env, **CONFIGS[c]) for c in configs})
    base_env.setdefault("PYTHONHASHSEED", CALLGRIND_HASH_SEED)
    results: Dict[str, Dict[str, float]] = {}
    geometry, options, keys = "", [], CACHE_KEYS
    if sim == "cache":
        geometry = l2_geometry(a.l2)
        options = cache_options(geometry)
    elif sim == "tlb":
        geometry = a.tlb
        options = tlb_options(geometry)
    elif sim == "branch":
        options, keys = BRANCH_OPTIONS, BRANCH_KEYS
    saved = os.path.join(a.out, (SIMS[sim][0] if sim else "callgrind") + ".json")
    if a.resume and os.path.exists(saved):
        with open(saved) as f:
            results = json.load(f)
    os.makedirs(a.out, exist_ok=True)
    for bname in a.benchmarks.split(","):
        if bname not in scripts:
            raise SystemExit(f"unknown benchmark {bname!r}")
        script, extra = scripts[bname]
        for task, name, per_loop in tasks_of(python, script, extra, base_env):
            # One loop count per benchmark for every configuration (kept by --resume).
            loops = int(results.get(name, {}).get("loops") or max(1, round(a.target_ms / 1000 / per_loop)))
            results.setdefault(name, {})["loops"] = loops
            for config in configs:
                vars_ = CONFIGS[config]
                if config in results.get(name, {}):
                    continue
                env = dict(base_env, **vars_)
                with tempfile.TemporaryDirectory() as tmp:  # pyperf will not overwrite its output
                    cmds = [worker_cmd(python, script, extra, n, task, os.path.join(tmp, f"{n}.json"))
                            for n in (loops, 2 * loops)]
                    if sim:
                        one, two = (cachegrind_misses(cmd, env, options, keys) for cmd in cmds)
                        per_loop = {k: (two[k] - one[k]) / loops for k in keys}
                        shown = " ".join(f"{k} {v / 1e6:8.3f} M" for k, v in per_loop.items()) + " per loop"
                    else:
                        one, two = (callgrind_total(cmd, env) for cmd in cmds)
                        per_loop = (two - one) / loops
                        shown = f"{per_loop / 1e6:10.2f} M instructions per loop"
                results.setdefault(name, {})[config] = per_loop
                print(f"{name:24} {config:10} L={loops:<6} {shown}", file=sys.stderr, flush=True)
                with open(saved, "w") as f:  # after each count, for --resume
                    json.dump(results, f, indent=1)
    if sim:
        lines = cache_table(results, geometry, sim)
        with open(os.path.join(a.out, SIMS[sim][0] + ".md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0
    lines = [
        "# pyperformance under callgrind: instructions per loop",
        "",
        "`python benches/pyperformance_callgrind.py` (see its doc): millions of instructions of one benchmark loop, "
        "the whole interpreter counted (loops L and 2L, L per benchmark in callgrind.json), then the ratios to pymalloc.",
        "",
        "| benchmark | pymalloc | malloc | rustmalloc | malloc / pymalloc | rustmalloc / pymalloc |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    ratios: Dict[str, List[float]] = {"malloc": [], "rustmalloc": []}
    for name, r in results.items():
        if not set(CONFIGS) <= set(r):
            continue
        cells = [f"{r[c] / 1e6:.2f}" for c in CONFIGS]
        rs = []
        for c in ("malloc", "rustmalloc"):
            ratios[c].append(r[c] / r["pymalloc"])
            rs.append(f"{r[c] / r['pymalloc']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells + rs) + " |")
    gm = [f"{geomean(ratios[c]):.3f}" for c in ("malloc", "rustmalloc")]
    lines.append("| **geometric mean** | | | | " + " | ".join(gm) + " |")
    with open(os.path.join(a.out, "callgrind.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
