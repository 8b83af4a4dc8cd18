"""Turn ``results.json`` into ``results.md`` (tables, issue 5's goals checked) and PNG charts."""

from __future__ import annotations

import math
import os
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

#: Benchmarks whose instructions per call issue 5 sets a goal for.
INSTR_GOAL_BENCHES = ("pairs_obj_mix", "batch_obj_mix", "batch_random_obj_mix", "churn_obj_mix", "realloc_mem_list")
SUBJECT = "rustmalloc"
FLOOR = "rustmalloc-fwd"
MEMORY_GOAL_MIN_MB = 100
#: Why a wall-clock goal (``ns/op``) is missed, where a cause was found and measured in an
#: earlier session, by benchmark name prefix: the mechanism and where the measurements are, no
#: figures (those belong to the run that measured them). Any other miss, an instruction goal's
#: included, gets the generic advice of `miss_causes`.
KNOWN_CAUSES = {
    "realloc_mem_list": (
        "copying, if the peer is tcmalloc or glibc: classes 16 per doubling (to keep list-heavy programs within 5% "
        "of pymalloc's RSS) make nearly every growth of a list move its array, where tcmalloc grows a block to at "
        "least 1.25x its old size and glibc grows the array at the top of its heap in place. Growing with room was "
        "faster here and took more RSS than the memory goal allows, so it was not adopted (README, \"The misses, "
        "and why\"; `docs/benchmark-log.md`, session 18; `micro_pingpong/list-growth-copies-s19-amd.md`)"
    ),
    "cross_raw_mix": (
        "where a block freed by another thread goes back: to the heap that owns its page, as in mimalloc, while "
        "tcmalloc keeps it in the freeing thread's cache. Measured in ping-pong in session 32 "
        "(`micro_pingpong/cross-peers-s32-amd.md`); re-time it the same way to tell a miss from this run's noise "
        "(`python benches/micro_pingpong.py cross_raw_mix_t2:PEER,cross_raw_mix_t4:PEER`)"
    ),
    "pairs_raw_mix": (
        "not placed: in ping-pong against tcmalloc (sessions 30 and 33, `micro_pingpong/goals-s30-amd.md`, "
        "`goals-s33-amd.md`) rustmalloc was slightly slower with fewer instructions per call; re-time it "
        "(`python benches/micro_pingpong.py pairs_raw_mix_t1:PEER`)"
    ),
}


class Stat:
    """Median and range of one figure over rounds."""

    def __init__(self, values: Sequence[float]):
        self.values = sorted(values)
        self.median = statistics.median(self.values)
        self.lo, self.hi = self.values[0], self.values[-1]

    @property
    def spread(self) -> float:
        """Half the range, as a fraction of the median."""
        return (self.hi - self.lo) / 2 / self.median if self.median else 0.0

    def fmt(self, digits: int = 1) -> str:
        s = _num(self.median, digits)
        return s + (f" ±{self.spread * 100:.0f}%" if len(self.values) > 1 else "")


def _num(x: float, digits: int = 1) -> str:
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}f}"


def geomean(xs: List[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


class Results:
    def __init__(self, data: dict):
        self.data = data
        self.configs = [c["name"] for c in data["configs"]]
        self.peers = [c["name"] for c in data["configs"] if c["peer"]]
        self.benches = list(data["micro_benches"])

    # -- figures ------------------------------------------------------------------------------

    def ns_per_op(self, config: str, bench: str) -> Optional[Stat]:
        runs = self.data["micro"].get(config, {}).get(bench)
        return Stat([r["ns"] / r["ops"] for r in runs]) if runs else None

    def ops_per_us(self, config: str, bench: str) -> Optional[Stat]:
        runs = self.data["micro"].get(config, {}).get(bench)
        return Stat([r["ops"] / r["ns"] * 1000 for r in runs]) if runs else None

    def instr_per_op(self, config: str, bench: str) -> Optional[float]:
        e = self.data["callgrind"].get(config, {}).get(bench)
        return e["ir"] / e["ops"] if e and e["ops"] else None

    def workload_instr(self, config: str, name: str) -> Optional[float]:
        """Millions of instructions of one workload run under callgrind."""
        e = self.data.get("callgrind_workloads", {}).get(config, {}).get(name)
        return e["ir"] / 1e6 if e else None

    def workload(self, config: str, name: str) -> Optional[Stat]:
        runs = self.data["workloads"].get(config, {}).get(name)
        return Stat([r["median"] * 1000 for r in runs]) if runs else None

    def memory(self, config: str, name: str, key: str) -> Optional[Stat]:
        runs = self.data["memory"].get(config, {}).get(name)
        return Stat([r[key] / 1024 for r in runs]) if runs else None

    def micro_errors(self) -> List[str]:
        out = []
        for c, benches in self.data["micro"].items():
            for b, runs in benches.items():
                n = sum(r["errors"] for r in runs)
                if n:
                    out.append(f"{c} {b}: {n} damaged blocks or NULL returns")
        for c, benches in self.data["callgrind"].items():
            for b, e in benches.items():
                if e["errors"]:
                    out.append(f"{c} {b} (callgrind): {e['errors']} damaged blocks or NULL returns")
        return out

    # -- tables -------------------------------------------------------------------------------

    def table(self, rows: List[str], cell, first: str, extra: Optional[Dict[str, str]] = None) -> List[str]:
        cols = self.configs
        head = f"| {first} | " + " | ".join(cols) + " |"
        out = [head, "|---|" + "---:|" * len(cols)]
        for r in rows:
            label = r + (f" <br><sub>{extra[r]}</sub>" if extra and extra.get(r) else "")
            out.append(f"| {label} | " + " | ".join(cell(c, r) for c in cols) + " |")
        return out

    def ratio_cell(self, get):
        """A cell "x pymalloc / x glibc" from a getter returning a number or Stat."""

        def val(c, r):
            v = get(c, r)
            return v.median if isinstance(v, Stat) else v

        def cell(c, r):
            v = val(c, r)
            if v is None:
                return "–"
            parts = []
            for base in ("pymalloc", "glibc"):
                b = val(base, r)
                parts.append(f"{v / b:.2f}" if b else "–")
            return " / ".join(parts)

        return cell


def _value_and_ratio_tables(R: Results, rows: List[str], get, first: str, with_geomean: bool = False) -> List[str]:
    """A table of `get(config, row)` (a number or Stat), then one of its ratios to pymalloc and
    to glibc, with a last row of each configuration's geometric mean of the ratios if asked."""
    out = R.table(rows, _cell(get), first)
    out += ["", "Ratios: × pymalloc / × glibc" + (", and the geometric mean." if with_geomean else "."), ""]
    out += R.table(rows, R.ratio_cell(get), first)
    if with_geomean:

        def val(c, r):
            v = get(c, r)
            return v.median if isinstance(v, Stat) else v

        gm = []
        for c in R.configs:
            parts = []
            for base in ("pymalloc", "glibc"):
                rs = [val(c, n) / val(base, n) for n in rows if val(c, n) and val(base, n)]
                parts.append(f"{geomean(rs):.3f}" if rs else "–")
            gm.append(" / ".join(parts))
        out.append("| **geometric mean** | " + " | ".join(gm) + " |")
    return out


def _cell(get, digits=1):
    def cell(c, r):
        v = get(c, r)
        if v is None:
            return "–"
        return v.fmt(digits) if isinstance(v, Stat) else _num(v, digits)

    return cell


# -- goals ------------------------------------------------------------------------------------


NOT_MEASURED = "NOT MEASURED"


def goals(R: Results) -> List[Tuple[str, str, str, str]]:
    """(goal, target, measured, verdict) rows for issue 5's speed and memory goals: one row per
    goal whatever was measured, a goal without its figures saying NOT MEASURED and why (so the
    count of goals met never shrinks silently with what a run left out)."""
    rows = []

    def unmeasured(goal: str, target: str, why: str) -> None:
        rows.append((goal, target, "–", f"{NOT_MEASURED}: {why}"))

    if SUBJECT not in R.configs:
        unmeasured("every goal", "–", f"{SUBJECT} was not among the configurations run")
        return rows
    levels = set(R.data.get("levels", ()))

    def level_missing(level: str) -> Optional[str]:
        return None if level in levels else f"the {level} level was not run"

    # Instructions per op.
    for b in INSTR_GOAL_BENCHES:
        me, py, mi = (R.instr_per_op(c, b) for c in (SUBJECT, "pymalloc", "mimalloc"))
        goal = f"instr/op {b}"
        if me is None or py is None:
            why = level_missing("callgrind") or "no callgrind count for " + " or ".join(
                c for c, v in ((SUBJECT, me), ("pymalloc", py)) if v is None
            )
            unmeasured(goal, "≤ 0.8× pymalloc and ≤ mimalloc", why)
            continue
        target = 0.8 * py if mi is None else min(0.8 * py, mi)
        rows.append(
            (
                goal,
                f"≤ 0.8× pymalloc ({0.8 * py:.1f})" + (f" and ≤ mimalloc ({mi:.1f})" if mi is not None else " (mimalloc not counted)"),
                f"{me:.1f} ({me / py:.2f}× pymalloc" + (f", {me / mi:.2f}× mimalloc)" if mi else ")"),
                _verdict(me, target),
            )
        )
    # Wall clock: at most the fastest peer, every pattern.
    for b in R.benches:
        me = R.ns_per_op(SUBJECT, b)
        peers = [(R.ns_per_op(c, b), c) for c in R.peers]
        peers = [(s.median, c) for s, c in peers if s]
        if me is None or not peers:
            unmeasured(f"ns/op {b}", "≤ fastest peer",
                       level_missing("micro") or (f"no time for {SUBJECT}" if me is None else "no peer timed"))
            continue
        best, who = min(peers)
        verdict = _verdict(me.median, best)
        other = R.ns_per_op(who, b)
        if len(me.values) > 1 and me.lo <= other.hi and other.lo <= me.hi:
            verdict += " (ranges overlap)"
        rows.append((f"ns/op {b}", f"≤ fastest peer ({who} {_num(best)})", f"{me.fmt()}", verdict))
    # RAW scaling.
    t1, t2 = R.ops_per_us(SUBJECT, "batch_raw_mix_t1"), R.ops_per_us(SUBJECT, "batch_raw_mix_t2")
    scaling, throughput = "RAW 2 threads vs 1 (batch_raw_mix)", "RAW 2-thread throughput (batch_raw_mix_t2)"
    if t1 and t2:
        rows.append(
            (
                scaling,
                "≥ 1.7× the 1-thread throughput",
                f"{t2.median / t1.median:.2f}× ({_num(t2.median)} vs {_num(t1.median)} ops/µs)",
                _verdict(t2.median / t1.median, 1.7, higher=True),
            )
        )
        peers = [(R.ops_per_us(c, "batch_raw_mix_t2"), c) for c in R.peers]
        peers = [(s.median, c) for s, c in peers if s]
        if peers:
            best, who = max(peers)
            rows.append(
                (
                    throughput,
                    f"> every peer's (best: {who} {_num(best)} ops/µs)",
                    f"{_num(t2.median)} ops/µs",
                    _verdict(t2.median, best, higher=True, strict=True),
                )
            )
        else:
            unmeasured(throughput, "> every peer's", "no peer timed")
    else:
        why = level_missing("micro") or "batch_raw_mix_t1/t2 not timed"
        unmeasured(scaling, "≥ 1.7× the 1-thread throughput", why)
        unmeasured(throughput, "> every peer's", why)
    # Workloads.
    names = [n for n in _workload_names(R) if R.workload(SUBJECT, n) and R.workload("pymalloc", n)]
    for base, target in (("pymalloc", 0.98), ("glibc", 0.92)):
        ratios = [R.workload(SUBJECT, n).median / R.workload(base, n).median for n in names if R.workload(base, n)]
        goal = f"workloads geomean vs {base}"
        if ratios:
            g = geomean(ratios)
            rows.append((goal, f"≤ {target}×", f"{g:.3f}×", _verdict(g, target)))
        else:
            unmeasured(goal, f"≤ {target}×", level_missing("workloads") or f"no workload timed under both {SUBJECT} and {base}")
    # The same goal judged on instructions (callgrind), where a difference of 2% is measurable.
    cg_names = list(R.data.get("callgrind_workloads", {}).get(SUBJECT, {}))
    ratios = [R.workload_instr(SUBJECT, n) / R.workload_instr("pymalloc", n) for n in cg_names if R.workload_instr("pymalloc", n)]
    goal = "workloads geomean vs pymalloc, instructions (callgrind)"
    if ratios:
        g = geomean(ratios)
        rows.append((goal, "≤ 0.98×", f"{g:.3f}×", _verdict(g, 0.98)))
    else:
        unmeasured(goal, "≤ 0.98×", level_missing("callgrind") or f"no workload counted under both {SUBJECT} and pymalloc")
    goal = "no workload significantly slower than pymalloc"
    target = "none (significant: every round slower than pymalloc's slowest)"
    if names:
        slower = [n for n in names if R.workload(SUBJECT, n).lo > R.workload("pymalloc", n).hi]
        rows.append((goal, target, ", ".join(slower) or "none", "met" if not slower else "MISSED"))
    else:
        unmeasured(goal, target, level_missing("workloads") or f"no workload timed under both {SUBJECT} and pymalloc")
    # Memory: the goal holds for workloads whose peak under pymalloc exceeds MEMORY_GOAL_MIN_MB.
    memory_names = _memory_names(R)
    for n in memory_names:
        py, me = R.memory("pymalloc", n, "peak_kib"), R.memory(SUBJECT, n, "peak_kib")
        if py and me and py.median > MEMORY_GOAL_MIN_MB:
            rows.append(
                (
                    f"peak RSS {n}",
                    f"≤ 1.05× pymalloc ({_num(py.median)} MB)",
                    f"{_num(me.median)} MB ({me.median / py.median:.2f}×)",
                    _verdict(me.median, 1.05 * py.median),
                )
            )
        elif not (py and me):
            unmeasured(f"peak RSS {n}", "≤ 1.05× pymalloc", "no peak for " + " or ".join(
                c for c, v in (("pymalloc", py), (SUBJECT, me)) if not v))
    if not memory_names:
        unmeasured("peak RSS (workloads over 100 MB)", "≤ 1.05× pymalloc", level_missing("memory") or "no workload measured")
    return rows


def miss_causes(rows: Sequence[Tuple[str, str, str, str]]) -> List[str]:
    """One line per missed goal: its known cause (`KNOWN_CAUSES`), or what to do to find one."""
    lines = []
    for goal, _target, _measured, verdict in rows:
        if not verdict.startswith("MISSED"):
            continue
        bench = goal.split()[-1]
        cause = None
        if goal.startswith("ns/op"):
            cause = next((c for key, c in KNOWN_CAUSES.items() if bench.startswith(key)), None)
        if cause:
            lines.append(f"`{goal}`: {cause}.")
        elif goal.startswith("RAW 2"):
            lines.append(
                f"`{goal}`: a wall-clock figure of threads, which moves by up to ±50% between runs on these "
                "machines; re-time its benchmarks in ping-pong to tell (`python benches/micro_pingpong.py "
                "batch_raw_mix_t1:mimalloc,batch_raw_mix_t2:mimalloc`)."
            )
        elif goal.endswith("instructions (callgrind)") and _missed_by(verdict) < 0.005:
            lines.append(
                f"`{goal}`: within what these counts resolve. The same workload under the same allocator moves "
                "by up to half a percent between runs with the environment (`docs/benchmark-log.md`), and the "
                "allocator's own instructions are a few percent of a workload's; compare the per-workload "
                "figures under \"Level 2 under callgrind\" with earlier runs'."
            )
        elif "ranges overlap" in verdict and goal.startswith("ns/op"):
            lines.append(
                f"`{goal}`: within this run's noise; time it against that peer in ping-pong to tell "
                f"(`python benches/micro_pingpong.py {bench}:PEER`)."
            )
        else:
            lines.append(
                f"`{goal}`: no cause recorded; profile it (callgrind and `benches/cgprofile.py` for time, "
                "`benches/memory.py` for memory)."
            )
    return lines


def _missed_by(verdict: str) -> float:
    """The fraction a "MISSED by N%" verdict names (0 for "MISSED (equal)")."""
    parts = verdict.split()
    return float(parts[2].rstrip("%")) / 100 if len(parts) > 2 and parts[1] == "by" else 0.0


def _verdict(value: float, target: float, higher: bool = False, strict: bool = False) -> str:
    """"met", or by how much the value misses its target (a bound from above, or from below
    when ``higher`` is better)."""
    if higher:
        ok = value > target if strict else value >= target
        short = 1 - value / target
    else:
        ok = value < target if strict else value <= target
        short = value / target - 1
    if ok:
        return "met"
    if short == 0:  # a tie on a strict goal
        return "MISSED (equal)"
    # Under 1%, one decimal: "MISSED by 0%" would say nothing.
    return f"MISSED by {short:.1%}" if short < 0.01 else f"MISSED by {short:.0%}"


def _names(R: Results, level: str) -> List[str]:
    """The workloads measured at ``level`` by any configuration, in order of appearance."""
    names: Dict[str, None] = {}
    for c in R.configs:
        names.update(dict.fromkeys(R.data[level].get(c, {})))
    return list(names)


def _workload_names(R: Results) -> List[str]:
    return _names(R, "workloads")


def _memory_names(R: Results) -> List[str]:
    return _names(R, "memory")


def _state_check(config: str, st: dict) -> str:
    """What served the worker. Workers that record their checking mode (``check_mode``) checked
    it against their configuration before measuring (``configs.state_problem``) and exited
    without results if it was wrong; for older results the check is made here from the name."""
    libs = [lib for lib in st["malloc_libraries"] if lib.startswith(("libjemalloc", "libtcmalloc", "libmimalloc"))]
    if "check_mode" in st:
        if st["rustmalloc_installed"]:
            mode = "forward only" if st["forward_only"] else f"checking mode {st['check_mode']}" if st["check_mode"] else "allocating"
            return f"ok: rustmalloc serves {'/'.join(st['rustmalloc_installed'])} ({mode}, build {st.get('rustmalloc_build', '?')})"
        return f"ok: {st['cpython_allocator']}" + (f", {', '.join(libs)} mapped" if libs else "")
    want = {"pymalloc": "pymalloc", "glibc": "malloc"}.get(config, "malloc")
    if config.startswith(SUBJECT):  # rustmalloc, rustmalloc-check, rustmalloc-fwd
        ok = st["rustmalloc_installed"] == ["raw", "mem", "obj"] and st["cpython_allocator"] is None
        return ("ok: " if ok else "WRONG: ") + f"rustmalloc serves {'/'.join(st['rustmalloc_installed'])}"
    ok = st["cpython_allocator"] == want and not st["rustmalloc_installed"]
    if config not in ("pymalloc", "glibc"):
        ok = ok and any(config in lib for lib in libs)
    return ("ok: " if ok else "WRONG: ") + f"{st['cpython_allocator']}" + (f", {', '.join(libs)} mapped" if libs else "")


# -- the Markdown -----------------------------------------------------------------------------


def markdown(data: dict, charts: List[str]) -> str:
    R = Results(data)
    L: List[str] = []
    w = L.append

    def bullets(title: str, items: Sequence[str]) -> None:
        if items:
            w(f"{title}:")
            w("")
            L.extend(f"- {item}" for item in items)
            w("")

    mode = "quick (tiny sizes: smoke test only, figures meaningless)" if data["quick"] else "full"
    w("# rustmalloc benchmark results")
    w("")
    w(
        f"Produced by `python benches/run.py` ({mode}); {data['rounds']} interleaved round(s) of every configuration, "
        f"each in fresh interpreters; run time {data.get('elapsed_s', '?')} s. Figures are medians over rounds; "
        "`±` is half the range over rounds, as a percentage of the median. `ops` are allocator calls: each malloc, "
        "realloc and free is one, and the loop's own work (tagging and checking each block, reading the size "
        "tables) is included, identically for every configuration."
    )
    w("")
    w("## Machine")
    w("")
    w("| | |")
    w("|---|---|")
    for k, v in data["machine"].items():
        w(f"| {k} | {v} |")
    w("")
    w("## Configurations")
    w("")
    w("| configuration | what | checked in the worker |")
    w("|---|---|---|")
    for c in data["configs"]:
        st = data["states"].get(c["name"])
        w(f"| {c['name']} | {c['description']} | {_state_check(c['name'], st) if st else '–'} |")
    w("")
    w(f"Peers (for the goals) are {', '.join(R.peers) or 'none'}; rustmalloc-fwd is the cost floor of being a hook at "
      "all (every call forwarded to the allocator before it: pymalloc for MEM and OBJ, libc malloc for RAW; pymalloc's "
      "requests over 512 bytes then pass through the RAW hook a second time).")
    w("")
    bullets("Notes", data["notes"])
    errors = R.micro_errors()
    if data["failures"] or errors:
        w("## Failures and wrong data")
        w("")
        for f in data["failures"]:
            w(f"- **{f['config']}** `{f['command']}` exited with {f['exit']}:")
            w("")
            w("  ```")
            for line in f["stderr"].strip().splitlines()[-15:]:
                w("  " + line)
            w("  ```")
        for e in errors:
            w(f"- **wrong data**: {e}")
        w("")

    rows = goals(R)
    if rows:
        met = sum(1 for r in rows if r[3].startswith("met"))
        unmeasured = sum(1 for r in rows if r[3].startswith(NOT_MEASURED))
        w("## Issue 5's goals")
        w("")
        w(f"{met} of {len(rows) - unmeasured} measured goals met" + (f"; {unmeasured} not measured in this run" if unmeasured else "")
          + ". The wall-clock goals are judged on medians of the interleaved rounds, the "
          "instruction goals on callgrind counts (stable to a few instructions). \"ranges overlap\": rustmalloc's range "
          "over the rounds overlaps the fastest peer's, so the verdict is within this machine's noise.")
        w("")
        w("| goal | target | rustmalloc | verdict |")
        w("|---|---|---|---|")
        for g in rows:
            w("| " + " | ".join(g) + " |")
        w("")
        bullets("Why the misses", miss_causes(rows))

    about = {b: v["about"] for b, v in data["micro_benches"].items()}
    if data["micro"]:
        w("## Level 1: allocator microbenchmarks, ns per call")
        w("")
        w("Native loops in `rustmalloc._rustmalloc._bench` calling `PyObject_*`, `PyMem_*` and `PyMem_Raw*`. "
          "RAW runs release the GIL; for several threads, ns/op is the wall time over all threads' calls.")
        w("")
        L += R.table(R.benches, _cell(R.ns_per_op), "benchmark", about)
        w("")
        w("Ratios of the medians: × pymalloc / × glibc (below 1 is faster).")
        w("")
        L += R.table(R.benches, R.ratio_cell(R.ns_per_op), "benchmark")
        w("")
        raw = [b for b in R.benches if data["micro_benches"][b]["threads"] > 1 or b.startswith("batch_raw")]
        if raw:
            w("RAW throughput, million calls per second (ops/µs), all threads together:")
            w("")
            L += R.table(raw, _cell(R.ops_per_us), "benchmark")
            w("")
    if data["callgrind"]:
        cg_benches = [b for b in R.benches if any(b in v for v in data["callgrind"].values())]
        w("## Level 1 under callgrind: instructions per call")
        w("")
        w("The same loops at small op counts under `valgrind --tool=callgrind`, counting only the measured region "
          "(`--toggle-collect=rmbench_measure`), allocator and CPython's public wrappers included. LD_PRELOADed "
          "allocators run fine under callgrind (it does not replace malloc, unlike memcheck).")
        w("")
        L += _value_and_ratio_tables(R, cg_benches, R.instr_per_op, "benchmark")
        w("")
        L += _entry_point_section(R, cg_benches)
        L += _profile_section(data)
    if data["workloads"]:
        names = _workload_names(R)
        w("## Level 2: Python workloads, ms per repetition")
        w("")
        w(f"pytest-benchmark (`benches/test_workloads.py`), {data['workload_rounds']} repetitions per process; the median of "
          "each process, then the median over the interleaved processes. A repetition builds the data and drops it.")
        w("")
        L += _value_and_ratio_tables(R, names, R.workload, "workload", with_geomean=True)
        w("")
    if data.get("callgrind_workloads"):
        cgw = data["callgrind_workloads"]
        names = [n for n in _workload_names(R) if any(n in v for v in cgw.values())] or list(next(iter(cgw.values())))
        scale = next(iter(next(iter(cgw.values())).values()))["scale"]
        w("## Level 2 under callgrind: instructions per workload run")
        w("")
        w(f"Each workload once at n = {scale} under `valgrind --tool=callgrind`, after one unmeasured run, counting "
          "only the run (`_bench.measure_call`, `--toggle-collect=rmbench_workload`): the whole interpreter's "
          "instructions, the allocator's among them, in millions. Stable to a fraction of a percent where the wall "
          "clock swings by several; blind to cache misses. The thread-pool workload is left out (its work runs on "
          "threads the toggle does not follow).")
        w("")
        L += _value_and_ratio_tables(R, names, R.workload_instr, "workload", with_geomean=True)
        w("")
    if data["memory"]:
        names = _memory_names(R)
        w("## Level 3: memory")
        w("")
        w("Each workload at a larger size in a fresh process: peak RSS (VmHWM) while its data is alive, then RSS "
          "(VmRSS) after the data is dropped and `gc.collect()` ran, in MB (the process before the workload: "
          "`base_kib` in results.json).")
        w("")
        w("Peak RSS, MB:")
        w("")
        L += R.table(names, _cell(lambda c, n: R.memory(c, n, "peak_kib"), 0), "workload")
        w("")
        w("RSS after dropping the data, MB:")
        w("")
        L += R.table(names, _cell(lambda c, n: R.memory(c, n, "after_kib"), 0), "workload")
        w("")
        w("Peak RSS ratios: × pymalloc / × glibc.")
        w("")
        L += R.table(names, R.ratio_cell(lambda c, n: R.memory(c, n, "peak_kib")), "workload")
        w("")
    if charts:
        w("## Charts")
        w("")
        for ch in charts:
            w(f"![{ch}]({ch})")
            w("")
    return "\n".join(L) + "\n"


ENTRY_POINTS = {
    "obj": ("PyObject_Malloc", "PyObject_Realloc", "PyObject_Free"),
    "mem": ("PyMem_Malloc", "PyMem_Realloc", "PyMem_Free"),
    "raw": ("PyMem_RawMalloc", "PyMem_RawRealloc", "PyMem_RawFree"),
}


def _entry_point_section(R: Results, benches: List[str]) -> List[str]:
    """Instructions per call of the public function each benchmark calls, allocator included
    (the loop's own work excluded): where the totals above differ."""
    rows, cells = [], {}
    for b in benches:
        domain = R.data["micro_benches"][b].get("domain")
        for fn in ENTRY_POINTS.get(domain, ()):
            found = False
            for c in R.configs:
                e = R.data["callgrind"].get(c, {}).get(b, {}).get("entry_points", {}).get(fn)
                if e:
                    cells[(c, f"{b}: {fn}")] = e["per_call"]
                    found = True
            if found:
                rows.append(f"{b}: {fn}")
    if not rows:
        return []
    L = ["Instructions per call of the public function, allocator included, loop excluded:", ""]
    L += R.table(rows, _cell(lambda c, r: cells.get((c, r))), "benchmark: function")
    L.append("")
    return L


def _profile_section(data: dict) -> List[str]:
    prof = data["callgrind"].get(SUBJECT, {})
    benches = [b for b, e in prof.items() if e.get("hot")]
    if not benches:
        return []
    L = ["### Where rustmalloc's instructions go", ""]
    L.append(
        "From the same callgrind runs (`--separate-callers=8`, so calls are counted in the measured region only). "
        "Per function: calls, inclusive and self instructions per call, and the self cost per call split by the source "
        "file it was inlined from (LTO inlines `heap.rs`, `segment_map.rs`, ... into the hooks of `python.rs`). "
        "Functions below 1% of the total are left out. The raw files (`--dump-instr=yes`) are in `tmp/` for "
        "`callgrind_annotate --auto=yes`."
    )
    L.append("")
    for b in benches:
        e = prof[b]
        L.append(f"**{b}**: {e['ir'] / e['ops']:.1f} instructions per allocator call in all.")
        L.append("")
        L.append("| function | calls | incl/call | self/call | self/op | self by source file (per call, or per op if called less than once per 4 ops) |")
        L.append("|---|---:|---:|---:|---:|---|")
        for r in e["hot"]:
            frequent = r["calls"] * 2 >= e["ops"] // 2
            scale = e["ops"] / r["calls"] if frequent else 1.0
            files = ", ".join(f"{k} {v * scale:.1f}" for k, v in list(r["by_file"].items())[:6])
            incl = f"{r['inclusive_per_call']:.1f}" if frequent else "–"
            self_ = f"{r['self_per_call']:.1f}" if frequent else "–"
            name = r["function"].replace("rustmalloc::", "")
            L.append(f"| `{name}` | {r['calls']:,} | {incl} | {self_} | {r['self_per_op']:.1f} | {files} |")
        L.append("")
    return L


# -- charts -----------------------------------------------------------------------------------


def _bar_chart(path: str, title: str, rows: List[str], configs: List[str], value, xlabel: str, log: bool = True) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if any(value(c, r) for c in configs)]
    if not rows:
        return False
    n = len(configs)
    height = 0.8 / n
    fig, ax = plt.subplots(figsize=(10, 0.13 * n * len(rows) + 1.5))
    colors = plt.get_cmap("tab10")
    for i, c in enumerate(configs):
        ys = [j + i * height for j in range(len(rows))]
        xs = [value(c, r) or 0 for r in rows]
        ax.barh(ys, xs, height=height, label=c, color=colors(i))
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(rows))])
    ax.set_yticklabels(rows)
    ax.invert_yaxis()
    if log:  # the ratio charts: log scale, and a line at 1 (pymalloc)
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def make_charts(data: dict, out: str) -> List[str]:
    R = Results(data)
    made = []

    def ratio(get):
        def f(c, r):
            v, b = get(c, r), get("pymalloc", r)
            v = v.median if isinstance(v, Stat) else v
            b = b.median if isinstance(b, Stat) else b
            return v / b if v and b else None

        return f

    specs = [
        ("micro_ns.png", "Level 1: ns per allocator call, ratio to pymalloc (median)", R.benches, ratio(R.ns_per_op), "ratio to pymalloc (lower is faster)"),
        ("micro_instr.png", "Level 1: instructions per call (callgrind), ratio to pymalloc", R.benches, ratio(R.instr_per_op), "ratio to pymalloc (lower is fewer)"),
        ("workloads.png", "Level 2: Python workloads, ratio to pymalloc (median)", _workload_names(R), ratio(R.workload), "ratio to pymalloc (lower is faster)"),
        ("memory.png", "Level 3: peak RSS, MB", _memory_names(R), lambda c, n: (R.memory(c, n, "peak_kib") or Stat([0])).median or None, "MB"),
    ]
    for name, title, rows, value, xlabel in specs:
        if _bar_chart(os.path.join(out, name), title, rows, R.configs, value, xlabel, log=name != "memory.png"):
            made.append(name)
    return made


def write(data: dict, out: str, charts: bool = True) -> None:
    """Write ``results.md`` and (unless ``charts`` is false) the PNG charts into ``out``."""
    made: List[str] = []
    if charts:
        try:
            made = make_charts(data, out)
        except ImportError:
            data.setdefault("notes", []).append("charts skipped: matplotlib is not installed (pip install '.[bench]')")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(data, made))
