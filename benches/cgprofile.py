"""Read callgrind output files: total instructions of a dump, and where they went per function.

``callgrind_annotate`` shows costs but not calls per function; the suite needs "instructions per
call" of the allocator's hot functions, so this reads the format itself (valgrind's
docs/cl-format: name compression ``(id) name``, ``calls=`` lines followed by the callee's
inclusive cost, ``fi=``/``fe=`` for code inlined from another file).

Callgrind counts calls even while collection is off (the warm-up before the measured region),
and ``--zero-before`` does not reset them. So profiles are taken with ``--separate-callers=N``:
a function's name is then its call chain (``callee'caller'caller...``), and only the contexts
whose chain passes through the measured function (``within``) are counted, merged by name.

    python benches/cgprofile.py callgrind.out.1234.1 [--calls N]
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

_NAME = re.compile(r"^\((\d+)\)(?: (.*))?$")
_SPEC = re.compile(r"^([a-z]+)=(.*)$")  # fn=(12) name, calls=3 0x1c600 86, ...
_HEADER = re.compile(r"^([a-z]+):(.*)$")  # positions: instr line, summary: 123, ...


@dataclass
class Function:
    name: str
    object: str = ""
    self_ir: int = 0
    #: Instructions of calls this function made (its callees' inclusive costs).
    callee_ir: int = 0
    #: Times it was called, and the inclusive cost of those calls, seen from the callers.
    calls: int = 0
    called_ir: int = 0
    #: Self cost by source file (code inlined from other files shows under their names).
    by_file: Dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def inclusive(self) -> int:
        return self.self_ir + self.callee_ir


@dataclass
class Profile:
    total: int
    functions: Dict[str, Function]

    def find(self, pattern: str) -> List[Function]:
        rx = re.compile(pattern)
        return [f for f in self.functions.values() if rx.search(f.name)]


def read_total(path: str) -> Optional[int]:
    """The instructions collected in one dump (its ``totals:``/``summary:`` line)."""
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    return None


def parse(path: str, within: Optional[str] = None) -> Profile:
    """Per-function costs of one dump. With ``within``, a name that is a call chain (see the
    module doc) counts only if the chain contains ``within``, under the chain's first name."""
    names: Dict[Tuple[str, str], str] = {}

    def name(kind: str, value: str) -> str:
        m = _NAME.match(value)
        if not m:
            return value
        if m.group(2) is not None:
            names[(kind, m.group(1))] = m.group(2)
        return names.get((kind, m.group(1)), value)

    funcs: Dict[str, Function] = {}
    ignored = Function("(outside the measured region)")

    def function(chain: str) -> Function:
        parts = chain.split("'")
        if within is not None and within not in parts:
            return ignored
        return funcs.setdefault(parts[0], Function(parts[0]))

    npos = 1
    total = 0
    ob = fl = fi = ""
    cur: Optional[Function] = None
    pending_call: Optional[Tuple[str, int]] = None  # (callee, count) awaiting its cost line
    cfn = ""
    with open(path, errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            if line[0].isdigit() or line[0] in "+-*":  # a cost line: positions, then events
                parts = line.split()
                costs = parts[npos:]
                ir = int(costs[0]) if costs else 0
                if pending_call is not None:
                    callee, count = pending_call
                    pending_call = None
                    if cur is not None:
                        cur.callee_ir += ir
                    g = function(callee)
                    g.calls += count
                    g.called_ir += ir
                elif cur is not None:
                    cur.self_ir += ir
                    cur.by_file[fi or fl] += ir
                continue
            spec = _SPEC.match(line)
            if spec is None:
                header = _HEADER.match(line)
                if header and header.group(1) == "positions":
                    npos = len(header.group(2).split())
                elif header and header.group(1) in ("totals", "summary"):
                    total = int(header.group(2).split()[0])
                continue
            key, value = spec.groups()
            if key == "ob":
                ob = name("ob", value)
            elif key == "fl":
                fl = name("fl", value)
                fi = ""
            elif key in ("fi", "fe"):
                fi = name("fl", value)
            elif key == "fn":
                cur = function(name("fn", value))
                cur.object = cur.object or ob
                fi = ""
            elif key == "cob":
                name("ob", value)
            elif key in ("cfi", "cfl"):
                name("fl", value)
            elif key == "cfn":
                cfn = name("fn", value)
            elif key == "calls":
                pending_call = (cfn, int(value.split()[0]))
    return Profile(total, funcs)


def short_file(path: str) -> str:
    for marker in ("/src/", "/Objects/", "/library/"):
        if marker in path:
            return path.rsplit(marker, 1)[1] if marker != "/library/" else "std:" + path.rsplit("/", 1)[-1]
    return path.rsplit("/", 1)[-1]


def hot_table(prof: Profile, ops: int, min_share: float = 0.01) -> List[dict]:
    """Functions with a noticeable self cost: calls, inclusive and self instructions per call,
    self instructions per benchmark op, and the self cost per op split by source file."""
    rows = []
    for fn in sorted(prof.functions.values(), key=lambda f: -f.self_ir):
        if prof.total == 0 or fn.self_ir < min_share * prof.total:
            continue
        calls = fn.calls or 0
        rows.append(
            {
                "function": fn.name,
                "calls": calls,
                "inclusive_per_call": (fn.inclusive / calls) if calls else None,
                "self_per_call": (fn.self_ir / calls) if calls else None,
                "self_per_op": fn.self_ir / ops,
                "by_file": {short_file(k): v / ops for k, v in sorted(fn.by_file.items(), key=lambda kv: -kv[1]) if v},
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file")
    p.add_argument("--ops", type=int, default=0, help="allocator calls in the dump (for per-op figures)")
    p.add_argument("--within", default="rmbench_measure", help="count only call chains through this function")
    args = p.parse_args()
    prof = parse(args.file, args.within or None)
    ops = args.ops or 1
    print(f"total Ir {prof.total:,}" + (f" = {prof.total / ops:.1f} per op" if args.ops else ""))
    for r in hot_table(prof, ops):
        per_call = f"{r['inclusive_per_call']:.1f} incl, {r['self_per_call']:.1f} self per call" if r["calls"] else "-"
        files = ", ".join(f"{k} {v:.1f}" for k, v in r["by_file"].items()) + " per op"
        print(f"{r['function'][:60]:60} calls {r['calls']:>9,}  {per_call:32}  [{files}]")


if __name__ == "__main__":
    main()
