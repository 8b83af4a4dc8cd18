"""One benchmark process under one allocator configuration (started by ``run.py``).

Installs rustmalloc as its very first statement when ``RMBENCH_INSTALL`` asks for it, so the
rest of the process runs on it; ``PYTHONMALLOC`` and ``LD_PRELOAD`` come from the environment.

    worker.py probe OUT.json
    worker.py micro OUT.json [--quick | --callgrind] [--only NAME ...]
    worker.py workloads OUT.json [--scale N] [--rounds N]
    worker.py memory OUT.json --workload NAME [--scale N]
"""

import os

_INSTALL = os.environ.get("RMBENCH_INSTALL")
if _INSTALL:
    import rustmalloc

    if _INSTALL == "install":
        rustmalloc.install()
    elif _INSTALL == "check":
        rustmalloc.install(check=True)
    elif _INSTALL == "forward":
        rustmalloc._install_forward_only()
    else:
        raise SystemExit(f"RMBENCH_INSTALL={_INSTALL!r}: expected 'install', 'check' or 'forward'")

import argparse  # noqa: E402  (after the install, on purpose)
import ctypes  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def allocator_state() -> dict:
    """What is really serving this process: CPython's name for its allocator (None when a hook
    such as rustmalloc is in), rustmalloc's domains, and which malloc libraries are mapped."""
    import rustmalloc

    name = None
    try:
        f = ctypes.pythonapi._PyMem_GetCurrentAllocatorName
        f.restype = ctypes.c_char_p
        raw = f()
        name = raw.decode() if raw else None
    except AttributeError:
        name = "unknown"
    with open("/proc/self/maps") as maps:
        libs = sorted({line.split()[-1].rsplit("/", 1)[-1] for line in maps if "malloc" in line and "/" in line})
    from rustmalloc import _rustmalloc as ext

    def native(name: str):
        """A getter of the extension, or None from a build older than it (the ping-pongs run
        older builds unpacked: `rustmalloc-other`)."""
        f = getattr(ext, name, None)
        return f() if f else None

    return {
        "cpython_allocator": name,
        "rustmalloc_installed": list(rustmalloc.installed()),
        "check_mode": native("_check_mode_in_force"),
        "forward_only": native("_forward_only_in_force"),
        "malloc_libraries": libs,
        "bench_debug_build": bool(ext._bench.DEBUG_BUILD),
        "rustmalloc_build": getattr(ext, "BUILD", "older than its BUILD record"),
    }


def checked_state() -> dict:
    """``allocator_state()``, after checking it is the configuration the environment asks for
    (``configs.state_problem``); exits with status 3 and the reason if it is not, so that no
    figure of the wrong allocator is ever kept."""
    sys.path.insert(0, HERE)
    from configs import state_problem

    state = allocator_state()
    problem = state_problem(state, dict(os.environ))
    if problem:
        print(f"wrong allocator state: {problem}", file=sys.stderr, flush=True)
        sys.exit(3)
    return state


def proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def cmd_micro(args) -> dict:
    sys.path.insert(0, HERE)
    import micro
    from rustmalloc._rustmalloc import _bench

    results = []
    for b in micro.benches(args.quick, args.callgrind):
        if args.only and b.name not in args.only:
            continue
        ns, ops, errors = _bench.run(b.pattern, b.domain, b.sizes, b.ops, **b.kwargs)
        results.append({"name": b.name, "ns": ns, "ops": ops, "errors": errors})
    return {"micro": results}


def cmd_workloads(args) -> dict:
    sys.path.insert(0, HERE)
    import workloads

    if args.callgrind:
        return cmd_workloads_callgrind(args, workloads)
    import pytest

    os.environ["RMBENCH_SCALE"] = str(args.scale or workloads.SCALE_TIMED)
    os.environ["RMBENCH_ROUNDS"] = str(args.rounds)
    bench_json = args.out + ".pytest-benchmark.json"
    code = pytest.main(
        [
            os.path.join(HERE, "test_workloads.py"),
            "-q",
            "-p",
            "no:cacheprovider",
            "--benchmark-json",
            bench_json,
            "--benchmark-columns=median,iqr,rounds",
        ]
    )
    if code != 0:
        raise SystemExit(f"pytest failed with exit code {int(code)}")
    with open(bench_json) as f:
        data = json.load(f)
    os.unlink(bench_json)
    out = {}
    for b in data["benchmarks"]:
        out[b["params"]["name"]] = {"median": b["stats"]["median"], "iqr": b["stats"]["iqr"], "rounds": b["stats"]["rounds"]}
    return {"workloads": out}


def cmd_workloads_callgrind(args, workloads) -> dict:
    """Each workload once unmeasured (imports, caches, memory mapped), then once inside
    ``rmbench_workload``, which callgrind counts (one dump per workload, in this order)."""
    from rustmalloc._rustmalloc import _bench

    n = args.scale or workloads.SCALE_CALLGRIND
    # The thread pool's work runs on other threads, which `--toggle-collect` does not follow.
    names = [w for w in workloads.WORKLOADS if w != "threads" and (not args.only or w in args.only)]
    for name in names:
        workloads.run_and_drop(name, n)
        _bench.measure_call(lambda: workloads.run_and_drop(name, n))
    return {"workloads_callgrind": {"names": names, "scale": n}}


def cmd_memory(args) -> dict:
    sys.path.insert(0, HERE)
    import workloads

    gc.collect()
    base = proc_status_kib("VmRSS")
    data = workloads.WORKLOADS[args.workload](args.scale or workloads.SCALE_MEMORY)
    peak = proc_status_kib("VmHWM")
    live = proc_status_kib("VmRSS")
    del data
    gc.collect()
    after = proc_status_kib("VmRSS")
    return {"memory": {"workload": args.workload, "base_kib": base, "peak_kib": peak, "live_kib": live, "after_kib": after}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["probe", "micro", "workloads", "memory"])
    p.add_argument("out")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--callgrind", action="store_true")
    p.add_argument("--only", nargs="*")
    p.add_argument("--scale", type=int)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workload")
    args = p.parse_args()
    result = {"state": checked_state()}
    if args.command == "micro":
        result.update(cmd_micro(args))
    elif args.command == "workloads":
        result.update(cmd_workloads(args))
    elif args.command == "memory":
        result.update(cmd_memory(args))
    result["state_after"] = checked_state()
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
