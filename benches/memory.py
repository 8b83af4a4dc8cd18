"""Memory given back: rustmalloc vs pymalloc vs glibc (and jemalloc, mimalloc where installed).

    python benches/memory.py [--quick] [--out benches/results]

Each configuration runs each scenario in a fresh interpreter; RSS is the process's own VmRSS.
1. "drop": build ~800 MB of small objects (1.5 million dicts, each holding a str, a tuple and a
   short list), keep one item in 100 (then one in 1000) scattered through the heap, drop the
   rest, gc.collect(), read RSS; then (rustmalloc+trim) trim(), or (every other configuration)
   two seconds of waiting without allocating (RSS read again: what the program keeps while it
   waits) and one more second of allocation (the automatic policy), and read RSS again.
2. "server": a loop of requests that each allocate and drop mixed-size objects while a slowly
   changing set of 20,000 entries survives; RSS sampled over time (plotted).
3. "lists": build many lists of random lengths by ``list.append`` (of ``None``, so the lists'
   item arrays, grown by realloc, are most of the memory) and read how much RSS grew: the cost
   of an allocator's size classes above 512 bytes, where pymalloc hands requests to glibc's
   exact fit.
Configurations: pymalloc, glibc, jemalloc and mimalloc where installed, rustmalloc,
rustmalloc-noidle (RUSTMALLOC_IDLE_PURGE=0: without the idle purger thread; drop scenario only)
and rustmalloc+trim (drop scenario only); with ``RUSTMALLOC_OTHER_BUILD`` set to the directory of
another build's unpacked wheel, also rustmalloc-other (that build, first on the path).
Results: <out>/memory.md (table, ratios to pymalloc) and <out>/memory_server.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from configs import clean_env, other_build_pythonpath  # noqa: E402

PRELOADS = {
    "jemalloc": ["/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2"],
    "mimalloc": ["/usr/lib/x86_64-linux-gnu/libmimalloc.so.2", "/usr/lib/aarch64-linux-gnu/libmimalloc.so.2"],
}

WORKER = r'''
import gc, json, random, sys, time
config, scenario, arg = sys.argv[1], sys.argv[2], int(sys.argv[3])
if config.startswith("rustmalloc"):
    import rustmalloc
    rustmalloc.install()

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

def peak_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

out = {}
if scenario == "drop":
    n = arg
    every = int(sys.argv[4])
    items = [{"s": str(i), "t": (i, i + 1), "l": [i, i, i]} for i in range(n)]
    out["built"] = rss_mb()
    keep = items[::every]
    del items
    gc.collect()
    out["dropped"] = rss_mb()
    if config == "rustmalloc+trim":
        rustmalloc.trim()
    else:
        # First wait without allocating, as a service between requests does (only a thread of
        # the allocator's own, such as rustmalloc's idle purger, can give memory back then).
        time.sleep(2.0)
        out["idle"] = rss_mb()
        # Go on allocating for a second, as a program does (it drives automatic policies).
        t = time.time()
        junk = []
        while time.time() - t < 1.0:
            junk.append([str(i) for i in range(100)])
            if len(junk) > 100:
                junk.clear()
        del junk
    out["after"] = rss_mb()
    out["kept"] = len(keep)
elif scenario == "server":
    rng = random.Random(1)
    survivors = {}
    samples = []
    start = time.time()
    for request in range(arg):
        body = {"id": request, "items": [str(rng.random()) * rng.randrange(1, 8) for _ in range(rng.randrange(5, 60))],
                "blob": bytes(rng.randrange(100, 20000)), "pairs": [(i, str(i)) for i in range(rng.randrange(10, 200))]}
        key = rng.randrange(20000)
        survivors[key] = (body["id"], body["items"][:2])     # a slowly changing surviving set
        del body
        if request % 2000 == 0:
            samples.append((time.time() - start, rss_mb()))
    out["samples"] = samples
    out["final"] = rss_mb()
elif scenario == "lists":
    lo, hi = int(sys.argv[4]), int(sys.argv[5])
    rng = random.Random(7)
    before = rss_mb()
    data = []
    for _ in range(arg):
        items = []
        for _ in range(rng.randint(lo, hi)):
            items.append(None)
        data.append(items)
    out["grown"] = rss_mb() - before
    out["lists"] = len(data)
out["peak"] = peak_mb()
# Last, so that its imports are in no figure: the allocator is the one the configuration names.
sys.path.insert(0, sys.argv[-1])
from worker import checked_state
checked_state()  # exits with the reason if it is not
print(json.dumps(out))
'''


def configurations():
    configs = [("pymalloc", {}), ("glibc", {"PYTHONMALLOC": "malloc"})]
    notes = []
    for name, paths in PRELOADS.items():
        path = next((p for p in paths if os.path.exists(p)), None)
        if path:
            configs.append((name, {"PYTHONMALLOC": "malloc", "LD_PRELOAD": path}))
        else:
            notes.append(f"{name}: not installed (apt-get install lib{name}...), skipped")
    configs += [("rustmalloc", {}), ("rustmalloc-noidle", {"RUSTMALLOC_IDLE_PURGE": "0"}),
                ("rustmalloc+trim", {})]
    if os.environ.get("RUSTMALLOC_OTHER_BUILD"):
        configs.append(("rustmalloc-other", {"PYTHONPATH": other_build_pythonpath(os.environ.get("PYTHONPATH"))}))
    return configs, notes


#: Scenario 3's shapes: (fewest items, most items, lists).
LIST_SHAPES = [(1, 300, 400_000), (50, 150, 1_000_000), (100, 1000, 100_000)]
#: Configurations that differ from another only in when memory is given back.
SAME_AS_RUSTMALLOC = ("rustmalloc+trim", "rustmalloc-noidle")


def run(config, env_extra, *args):
    env = clean_env()
    env.update(env_extra)
    if config.startswith("rustmalloc"):
        env["RMBENCH_INSTALL"] = "install"  # what the worker does, for state_problem to check
    proc = subprocess.run([sys.executable, "-c", WORKER, config, *map(str, args), HERE], capture_output=True,
                          text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{config} {args} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    n_items = 50_000 if args.quick else 1_500_000
    n_requests = 4_000 if args.quick else 200_000
    configs, notes = configurations()
    os.makedirs(args.out, exist_ok=True)

    drop = {}
    for every in (100, 1000):
        for name, env in configs:
            drop[(name, every)] = run(name, env, "drop", n_items, every)
            print(f"drop 1/{every} {name}: {drop[(name, every)]}", flush=True)
    # The scenarios after the first measure what is built, not when it is given back.
    measured = [(name, env) for name, env in configs if name not in SAME_AS_RUSTMALLOC]
    server = {}
    for name, env in measured:
        server[name] = run(name, env, "server", n_requests)
        print(f"server {name}: final {server[name]['final']:.0f} MB, peak {server[name]['peak']:.0f} MB", flush=True)
    shapes = [(lo, hi, n // 100 if args.quick else n) for lo, hi, n in LIST_SHAPES]
    lists = {}
    for lo, hi, n in shapes:
        for name, env in measured:
            lists[(name, lo)] = run(name, env, "lists", n, lo, hi)["grown"]
            print(f"lists {lo}..{hi} x{n} {name}: {lists[(name, lo)]:.0f} MB", flush=True)

    lines = [
        "# Memory given back",
        "",
        f"`python benches/memory.py{' --quick' if args.quick else ''}` on {machine()}, "
        f"{time.strftime('%Y-%m-%d')}. RSS in MB (VmRSS); ratios to pymalloc.",
        "",
        f"## 1. Build {n_items:,} dicts (str, tuple, list each), keep 1 in N, drop the rest, gc.collect()",
        "",
        "`idle`: after two seconds of waiting without allocating (a service between requests; "
        "rustmalloc's idle purger acts then). `after`: rustmalloc+trim after `rustmalloc.trim()`; "
        "every other configuration after one more second of allocation (what drives automatic "
        "policies, rustmalloc's included).",
        "",
        "| configuration | N | built | after drop + gc | idle 2 s | after | after / pymalloc's after |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for every in (100, 1000):
        base = drop[("pymalloc", every)]["after"]
        for name, _ in configs:
            r = drop[(name, every)]
            idle = f"{r['idle']:.0f}" if "idle" in r else "–"
            lines.append(f"| {name} | {every} | {r['built']:.0f} | {r['dropped']:.0f} | {idle} | "
                         f"{r['after']:.0f} | {r['after'] / base:.2f} |")
    lines += [
        "",
        f"## 2. Server-like loop: {n_requests:,} requests, a slowly changing set of 20,000 survivors",
        "",
        "| configuration | peak RSS | final RSS | RSS growth over the second half | final / pymalloc's |",
        "|---|---:|---:|---:|---:|",
    ]
    base = server["pymalloc"]["final"]
    for name, r in server.items():
        s = r["samples"]
        half = s[len(s) // 2][1] if s else r["final"]
        lines.append(f"| {name} | {r['peak']:.0f} | {r['final']:.0f} | {r['final'] - half:+.0f} | "
                     f"{r['final'] / base:.2f} |")
    lines += [
        "",
        "## 3. Lists grown by `append`: how much RSS grew",
        "",
        "Lists of `None`, each of a random length in the range given, built one `append` at a time "
        "and kept: their item arrays (grown by realloc, over-allocated by CPython by an eighth) are "
        "most of the memory. MB, and the ratio to pymalloc's.",
        "",
        "| configuration | " + " | ".join(f"{lo}..{hi} items x{n:,}" for lo, hi, n in shapes) + " |",
        "|---|" + "---:|" * len(shapes),
    ]
    for name, _ in measured:
        cells = []
        for lo, _, _ in shapes:
            mb, base = lists[(name, lo)], lists[("pymalloc", lo)]
            cells.append(f"{mb:.0f} ({mb / base:.2f})" if base > 0 else f"{mb:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "Notes: " + "; ".join(notes)]
    chart = os.path.join(args.out, "memory_server.png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.5))
        for name, r in server.items():
            xs, ys = zip(*r["samples"]) if r["samples"] else ((), ())
            ax.plot(xs, ys, label=name)
        ax.set_xlabel("seconds")
        ax.set_ylabel("RSS (MB)")
        ax.set_title("Server-like loop: RSS over time")
        ax.legend()
        fig.tight_layout()
        fig.savefig(chart, dpi=100)
        lines += ["", "![RSS over time](memory_server.png)"]
    except ImportError:
        lines += ["", "(matplotlib not installed: no chart; `pip install matplotlib`)"]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "memory.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
