"""Command line: ``python -m rustmalloc demo``."""

from __future__ import annotations

import argparse
import sys


def _format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,} B"


def _print_stats(title: str) -> None:
    import rustmalloc

    snap = rustmalloc.stats()
    print(title)
    print(f"  {'domain':<6} {'blocks in use':>14} {'bytes in use':>14} {'large blocks':>13} {'foreign frees':>14}")
    for name, d in snap.domains.items():
        print(
            f"  {name:<6} {d.blocks_in_use:>14,} {_format_bytes(d.bytes_in_use):>14} "
            f"{d.large_blocks_in_use:>13,} {d.foreign_frees:>14,}"
        )
    print(f"  RAW thread heaps: {snap.raw_heaps_created} created, {snap.raw_heaps_abandoned} waiting for adoption")


def _workload() -> str:
    """A mixed workload: containers, strings, json, pickle, regexes, cyclic garbage, threads."""
    import gc
    import hashlib
    import json
    import pickle
    import re
    import threading

    digest = hashlib.sha256()
    records = [
        {"id": i, "name": f"user-{i}", "tags": [f"t{i % 7}", f"g{i % 13}"], "score": i * 0.5}
        for i in range(200_000)
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
        for _ in range(5_000):
            root.children.append(Node(root))  # cycles for the collector
        del root
    digest.update(str(gc.collect()).encode())

    results = [0] * 4

    def worker(k: int) -> None:
        results[k] = sum(len(str(list(range(i % 100)))) for i in range(20_000))

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
    _print_stats("after the workload:")
    return 0


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rustmalloc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="install rustmalloc, run a workload and print what it served")
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
