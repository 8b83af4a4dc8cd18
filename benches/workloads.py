"""Level 2 and 3: Python workloads, shared by the timed benches (``test_workloads.py``) and the
memory measurements (``worker.py memory``).

Each workload is ``build(n) -> data``: it creates the data (and checks it is right: a wrong
answer is an allocator bug, not noise), and the caller drops it. Timed, a workload is its build
plus the drop; for ``gc_trees`` also the ``gc.collect()`` that reclaims the cycles.
"""

from __future__ import annotations

import gc
import json
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict


class Point:
    def __init__(self, x, y, z):
        self.x = x
        self.y = y
        self.z = z


class SlotPoint:
    __slots__ = ("x", "y", "z")

    def __init__(self, x, y, z):
        self.x = x
        self.y = y
        self.z = z


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(f"wrong data: {what}")


def tuples(n: int) -> Any:
    data = [(i, -i, (i, float(i))) for i in range(n)]
    _check(data[-1][2][0] == n - 1 and len(data) == n, "tuples")
    return data


def dicts(n: int) -> Any:
    data = [{"id": i, "name": "user", "tags": [i, i + 1], "score": i * 0.5} for i in range(n)]
    _check(sum(d["tags"][1] for d in data[-100:]) == sum(range(n - 99, n + 1)), "dicts")
    return data


def lists(n: int) -> Any:
    data = []
    for i in range(n):
        items = []
        for j in range(i % 24):
            items.append(j)
        data.append(items)
    _check(sum(map(len, data[:48])) == 2 * sum(range(24)), "lists")
    return data


def strings(n: int) -> Any:
    parts = [f"{i}:{i * i:x}" for i in range(n)]
    joined = ",".join(parts)
    back = joined.split(",")
    upper = [s.upper() for s in back]
    _check(back == parts and len(upper) == n, "str")
    return parts, joined, back, upper


def instances(n: int) -> Any:
    data = [Point(i, i * 0.5, None) for i in range(n)]
    _check(data[-1].x == n - 1, "instances")
    return data


def instances_slots(n: int) -> Any:
    data = [SlotPoint(i, i * 0.5, None) for i in range(n)]
    _check(data[-1].x == n - 1, "instances_slots")
    return data


def _document(n: int) -> Any:
    return [
        {"id": i, "name": f"user{i}", "tags": ["a", "b", str(i)], "score": i / 7, "active": i % 2 == 0, "parent": None}
        for i in range(n)
    ]


def json_roundtrip(n: int) -> Any:
    doc = _document(n // 4)
    text = json.dumps(doc)
    back = json.loads(text)
    _check(back == doc, "json round trip")
    return back, text


def pickle_roundtrip(n: int) -> Any:
    doc = _document(n // 4)
    blob = pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL)
    back = pickle.loads(blob)
    _check(back == doc, "pickle round trip")
    return back, blob


class Node:
    def __init__(self, parent):
        self.parent = parent  # a cycle with the parent's children list
        self.children = []
        self.payload = {"depth": 0 if parent is None else parent.payload["depth"] + 1}
        if parent is not None:
            parent.children.append(self)


def gc_trees(n: int) -> Any:
    roots = []
    made = 0
    while made < n:
        root = Node(None)
        level = [root]
        made += 1
        while level and made < n:
            nxt = []
            for node in level:
                for _ in range(3):
                    nxt.append(Node(node))
                    made += 1
            level = nxt if len(nxt) < 200 else []
        roots.append(root)
    _check(all(r.parent is None and len(r.children) == 3 for r in roots[:-1]), "gc trees")
    return roots


def _thread_task(k: int, n: int) -> Any:
    rows = [{"k": k, "i": i, "v": [i, str(i)]} for i in range(n)]
    text = json.dumps(rows)
    return len(json.loads(text)), rows


def threads(n: int) -> Any:
    per_task = max(1, n // 64)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_thread_task, range(64), [per_task] * 64))
    # Short-lived threads too (thread states and locks come from RAW).
    out = []
    ts = [threading.Thread(target=lambda k=k: out.append(_thread_task(k, per_task // 4 + 1))) for k in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    _check(all(count == per_task for count, _ in results) and len(out) == 16, "threads")
    return results, out


WORKLOADS: Dict[str, Callable[[int], Any]] = {
    "tuples": tuples,
    "dicts": dicts,
    "lists": lists,
    "str": strings,
    "instances": instances,
    "instances_slots": instances_slots,
    "json": json_roundtrip,
    "pickle": pickle_roundtrip,
    "gc_trees": gc_trees,
    "threads": threads,
}

#: ``n`` for the timed benches, for the memory measurements, and for --quick.
SCALE_TIMED = 50_000
SCALE_MEMORY = 500_000
SCALE_QUICK = 1_000
#: ``n`` for the workloads counted under callgrind (instructions; about 50x slower than native).
SCALE_CALLGRIND = 20_000


def run_and_drop(name: str, n: int) -> None:
    """One timed repetition: build, drop, and (for the cyclic trees) collect."""
    data = WORKLOADS[name](n)
    del data
    if name == "gc_trees":
        gc.collect()
