"""Command line of rustmalloc.

  python -m rustmalloc run [--stats] [--stats-json FILE] script.py args...
  python -m rustmalloc run [--stats] [--stats-json FILE] -m module args...
  python -m rustmalloc stats
  python -m rustmalloc demo
"""

from __future__ import annotations

import argparse
import os
import sys


def _format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,} B"


def _stats_table(title: str) -> str:
    """The short per-domain table (the fallback when rustmalloc.format_stats() is absent)."""
    import rustmalloc

    snap = rustmalloc.stats()
    lines = [
        title,
        f"  {'domain':<6} {'blocks in use':>14} {'bytes in use':>14} {'large blocks':>13} {'foreign frees':>14}",
    ]
    for name, d in snap.domains.items():
        lines.append(
            f"  {name:<6} {d.blocks_in_use:>14,} {_format_bytes(d.bytes_in_use):>14} "
            f"{d.large_blocks_in_use:>13,} {d.foreign_frees:>14,}"
        )
    lines.append(
        f"  RAW thread heaps: {snap.raw_heaps_created} created, {snap.raw_heaps_abandoned} waiting for adoption"
    )
    return "\n".join(lines)


def _print_stats(title: str) -> None:
    print(_stats_table(title))


def report_text(title: str) -> str:
    """The statistics report of this process (``rustmalloc.format_stats()``) under a title.
    Used by ``run --stats``, ``stats``, ``demo`` and the pytest plugin."""
    import rustmalloc

    return f"{title}\n{rustmalloc.format_stats()}"


def _workload(scale: float = 1.0) -> str:
    """A mixed workload: containers, strings, json, pickle, regexes, cyclic garbage, threads.
    ``scale`` shrinks it (the ``stats`` command runs a tenth of the demo's)."""
    import gc
    import hashlib
    import json
    import pickle
    import re
    import threading

    digest = hashlib.sha256()
    records = [
        {"id": i, "name": f"user-{i}", "tags": [f"t{i % 7}", f"g{i % 13}"], "score": i * 0.5}
        for i in range(int(200_000 * scale))
    ]
    text = json.dumps(records)
    digest.update(hashlib.sha256(text.encode()).digest())
    back = pickle.loads(pickle.dumps(json.loads(text)))
    digest.update(str(sum(r["id"] for r in back)).encode())
    words = re.findall(r"user-\d+7\b", text)
    digest.update(str(len(words)).encode())

    class Node:
        def __init__(self, parent=None):
            self.parent, self.children = parent, []

    for _ in range(20):
        root = Node()
        for _ in range(int(5_000 * scale)):
            root.children.append(Node(root))  # cycles for the collector
        del root
    digest.update(str(gc.collect()).encode())

    results = [0] * 4

    def worker(k: int) -> None:
        results[k] = sum(len(str(list(range(i % 100)))) for i in range(int(20_000 * scale)))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    digest.update(str(results).encode())
    del records, back, text
    return digest.hexdigest()[:16]


def demo(args: argparse.Namespace) -> int:
    import time

    import rustmalloc

    rustmalloc.install()
    print(f"rustmalloc installed for domains: {', '.join(rustmalloc.installed())}")
    _print_stats("after install (blocks from before install() stay with pymalloc/libc):")
    start = time.perf_counter()
    result = _workload()
    elapsed = time.perf_counter() - start
    print(f"workload (json, pickle, re, dicts, cyclic gc, 4 threads): result {result}, {elapsed:.2f} s")
    print(report_text("after the workload:"))
    returned = rustmalloc.trim()
    snap = rustmalloc.stats()
    print(
        f"trim() gave {returned / 2**20:,.1f} MiB back to the OS; "
        f"{snap.os.bytes_resident / 2**20:,.1f} MiB of rustmalloc's memory is resident now"
    )
    return 0


def stats(args: argparse.Namespace) -> int:
    import time

    import rustmalloc

    rustmalloc.install()
    start = time.perf_counter()
    result = _workload(scale=0.1)
    elapsed = time.perf_counter() - start
    print(f"short workload (json, pickle, re, dicts, cyclic gc, 4 threads): result {result}, {elapsed:.2f} s")
    print(report_text("rustmalloc statistics of this process:"))
    if args.plot:
        from rustmalloc._plot import plot

        try:
            print(f"chart written to {plot(args.plot)}")
        except RuntimeError as e:  # matplotlib missing: say how to get it
            print(f"python -m rustmalloc stats --plot: {e}", file=sys.stderr)
            return 2
    return 0


# ---- run ----------------------------------------------------------------------------------

# Options of `run` that take a value: the program's own arguments start after the script (or
# after `-m module`), and must reach it untouched even when they look like our options.
_RUN_VALUE_OPTIONS = ("--stats-json", "--domains")


def _split_run_argv(argv: list) -> tuple:
    """Split ``run``'s arguments into (ours, ending with the script or ``-m module``; the
    program's). Like ``python``, the first non-option or ``-m module`` ends our options."""
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            return argv[: i + 2], argv[i + 2 :]
        if tok == "-m":
            return argv[: i + 2], argv[i + 2 :]
        if tok.startswith("-m") and not tok.startswith("--"):  # -mpkg.mod, as python accepts
            return argv[: i + 1], argv[i + 1 :]
        if tok in _RUN_VALUE_OPTIONS:
            i += 2
            continue
        if tok.startswith("-") and tok != "-":
            i += 1
            continue
        return argv[: i + 1], argv[i + 1 :]
    return argv, []


def _pth_is_active() -> bool:
    """Whether a new interpreter started like this one runs rustmalloc.pth (it is in a
    site-packages directory that ``site`` processes)."""
    if sys.flags.no_site:
        return False
    import site

    dirs = list(getattr(site, "getsitepackages", lambda: [])())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return any(os.path.isfile(os.path.join(d, "rustmalloc.pth")) for d in dirs)


def run(args: argparse.Namespace) -> int:
    # Not `_startup` yet: importing it acts on the environment, which is not set up yet.
    from ._env import parse

    if args.domains is None:
        # Keep a valid RUSTMALLOC the caller set (e.g. raw); otherwise all domains.
        inherited = os.environ.get("RUSTMALLOC", "")
        args.domains = inherited if parse(inherited) else "1"
    elif not parse(args.domains):
        sys.stderr.write(
            f"python -m rustmalloc run: error: --domains {args.domains!r}: expected all, raw, mem,obj "
            "or raw,mem,obj\n"
        )
        return 2
    os.environ["RUSTMALLOC"] = args.domains
    if args.stats:
        os.environ["RUSTMALLOC_STATS"] = "1"
    if args.stats_json:
        os.environ["RUSTMALLOC_STATS_JSON"] = os.path.abspath(args.stats_json)
    target = ["-m", args.module] if args.module else [args.script]

    if _pth_is_active():
        # Start the program in a fresh interpreter in this process (same pid, so signals and the
        # exit status are the program's own); rustmalloc.pth installs before any of its code.
        import subprocess

        argv = [sys.executable, *subprocess._args_from_interpreter_flags(), *target, *args.args]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, argv)

    # No .pth in effect (python -S, or rustmalloc imported from a source tree): install here and
    # run the program in this interpreter, as `python script.py` / `python -m module` would.
    import runpy

    if "rustmalloc._startup" in sys.modules:
        sys.modules["rustmalloc._startup"].start()
    else:
        from . import _startup  # noqa: F401  (importing it installs, as rustmalloc.pth would)
    if args.module:
        sys.argv = [args.module, *args.args]
        runpy._run_module_as_main(args.module, alter_argv=True)  # type: ignore[attr-defined]
    else:
        sys.argv = [args.script, *args.args]
        if not (sys.flags.isolated or getattr(sys.flags, "safe_path", False)):
            sys.path[0] = os.path.dirname(os.path.abspath(args.script))
        runpy.run_path(args.script, run_name="__main__")
    return 0


def _build_parser() -> tuple:
    parser = argparse.ArgumentParser(
        prog="python -m rustmalloc",
        description="rustmalloc: a Rust size-class pool allocator for CPython's RAW, MEM and OBJ domains.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,stats,demo}")

    p = sub.add_parser(
        "run",
        help="run a script or module with rustmalloc installed at startup",
        description=(
            "Run a Python program with rustmalloc installed at startup, before any of its code, as "
            "RUSTMALLOC=1 python script.py would. Every interpreter the program starts inherits "
            "RUSTMALLOC and is served by rustmalloc too. The exit status and signals are the "
            "program's own: it replaces this process."
        ),
        usage="python -m rustmalloc run [-h] [--stats] [--stats-json FILE] [--domains D] "
        "(script.py | -m module) [args ...]",
        allow_abbrev=False,
    )
    p.add_argument("--stats", action="store_true", help="print the statistics report to stderr at exit")
    p.add_argument("--stats-json", metavar="FILE", help="write the statistics snapshot as JSON to FILE at exit")
    p.add_argument(
        "--domains",
        metavar="D",
        help="domains to serve: all (default), raw or mem,obj (default: $RUSTMALLOC if valid, else all)",
    )
    p.add_argument("-m", dest="module", metavar="module", help="run a library module as a script, like python -m")
    p.add_argument("script", nargs="?", help="the script to run")
    p.set_defaults(func=run, args=[])
    run_parser = p

    p = sub.add_parser(
        "stats",
        help="install, run a short workload and print the statistics report of this process",
        description="Install rustmalloc, run a short demo workload and print the statistics report of this process.",
    )
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="also draw blocks in use and free per size class, and bytes per domain, to FILE (a PNG); "
        "needs matplotlib: pip install 'rustmalloc[plot]'",
    )
    p.set_defaults(func=stats)

    p = sub.add_parser(
        "demo",
        help="install rustmalloc, run a workload and print what it served",
        description="Install rustmalloc, run a real workload (json, pickle, re, dicts, cyclic gc, threads) "
        "and print what rustmalloc served before and after.",
    )
    p.set_defaults(func=demo)
    return parser, run_parser


def main(argv: list | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, run_parser = _build_parser()
    if argv and argv[0] == "run":
        ours, program_args = _split_run_argv(argv[1:])
        args = run_parser.parse_args(ours)
        args.args = program_args
        if (args.module is None) == (args.script is None):
            run_parser.error("give a script to run, or -m module (not both)")
    else:
        args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
