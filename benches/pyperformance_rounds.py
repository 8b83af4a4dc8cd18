#!/usr/bin/env python3
"""Round by round: what ``benches/pyperformance.sh`` measured, split into its rounds.

    python benches/pyperformance_rounds.py DIR [--config rustmalloc] [--base pymalloc]

``pyperf compare_to`` pools every round of a configuration into one sample. This splits the
sample again: each round of ``pyperformance run --append`` starts with a calibration run (a run
with no values), so a benchmark's runs split into rounds there. For each round it takes the
median of each configuration's values and gives ``--config``'s median over ``--base``'s, with
``--config``'s place in that round's order (from the runs' start times: 1st, 2nd or 3rd), and
a paired test over the rounds (``sign_flip_p``), which takes the round, not the value, as
the unit that noise hits.

Why: on this shared machine, what the run before leaves behind (a warm or cold page cache,
a neighbour's burst) may fall on whichever configuration follows it. ``pyperformance.sh`` runs
the six orders of the three configurations over six rounds (a multiple of 6 rounds balances
both the places and which configuration follows which); the table's last columns give the
geometric mean of the ratio by place, so an effect of the order shows as a spread between them
(noise does too: with 6 rounds each place rests on two), and the last row gives it over all
benchmarks.

The test's power: with n rounds the smallest p is 2/2^n, so 5 rounds can never reach 0.05 and
6 reach it only when all six rounds go the same way; and with 20 benchmarks about one in 20
comes out "significant" at 0.05 by chance. 10 or more rounds (12, for whole blocks of the six
orders) are needed for a verdict that survives the number of benchmarks.

If ``DIR/cpu.log`` is there (``pyperformance.sh`` writes it), a last table gives how busy the
machine was in each configuration's turn. Writes ``DIR/rounds.md`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from report import geomean  # noqa: E402

PLACES = ("1st", "2nd", "3rd", "4th", "5th")
# pyperformance.sh's configurations, each in <DIR>/<name>.json, in the tables' order.
CONFIGS = ("pymalloc", "malloc", "rustmalloc")


def rounds_of(path: str) -> Dict[str, List[Tuple[str, List[float]]]]:
    """Each benchmark's rounds in the pyperf file at ``path``: (start time, values) per round.
    A round is a calibration run (no values) and the runs up to the next one."""
    with open(path) as f:
        data = json.load(f)
    out: Dict[str, List[Tuple[str, List[float]]]] = {}
    for bench in data["benchmarks"]:
        name = bench["metadata"].get("name") or data["metadata"]["name"]
        rounds: List[Tuple[str, List[float]]] = []
        for run in bench["runs"]:
            values = run.get("values", [])
            if not values or not rounds:
                # pyperf moves metadata all runs share (a single run's) up to the benchmark.
                date = run.get("metadata", {}).get("date") or bench["metadata"].get("date", "")
                rounds.append((date, []))
            rounds[-1][1].extend(values)
        out[name] = [r for r in rounds if r[1]]
    return out


def ratios(runs: Dict[str, Dict[str, List[Tuple[str, List[float]]]]], config: str, base: str):
    """Per benchmark: [(ratio of medians, config's place)] per round, the rounds matched in
    order. Benchmarks whose round counts differ between ``config`` and ``base`` are skipped
    (and named); the place is among the configurations with as many rounds (a third file
    missing the benchmark or with another count does not drop it)."""
    table: Dict[str, List[Tuple[float, int]]] = {}
    skipped = []
    for name in sorted(runs[base]):
        n = len(runs[base][name])
        if n == 0 or len(runs[config].get(name, [])) != n:
            skipped.append(name)
            continue
        per = {c: runs[c][name] for c in runs if len(runs[c].get(name, [])) == n}
        rows = []
        for r in range(n):
            order = sorted(per, key=lambda c: per[c][r][0])
            ratio = statistics.median(per[config][r][1]) / statistics.median(per[base][r][1])
            rows.append((ratio, order.index(config)))
        table[name] = rows
    return table, skipped


def sign_flip_p(round_ratios: List[float]) -> float:
    """Two-sided p-value of a paired sign-flip (permutation) test that the ratios' geometric
    mean is 1, the round being the unit: under "no difference" each round's log ratio is as
    likely negative as positive, so the observed |sum| is ranked among the 2^n sums with every
    choice of signs (exact up to 14 rounds, else 20,000 random choices). With 3 rounds it can
    never go below 0.25, with 6 below 2/64."""
    logs = [math.log(x) for x in round_ratios]
    observed = abs(sum(logs)) - 1e-12
    n = len(logs)

    def extreme(m: int) -> bool:
        return abs(sum(-x if m >> i & 1 else x for i, x in enumerate(logs))) >= observed

    if n <= 14:
        return sum(1 for m in range(1 << n) if extreme(m)) / (1 << n)
    # Sampled: the observed signs count as one sample, so p is never 0 (Phipson & Smyth).
    rng = random.Random(12345)
    hits = sum(1 for _ in range(20000) if extreme(rng.getrandbits(n)))
    return (hits + 1) / (20000 + 1)


def markdown(table: Dict[str, List[Tuple[float, int]]], config: str, base: str, nconfigs: int) -> List[str]:
    nrounds = max(len(v) for v in table.values())
    places = PLACES[:nconfigs]
    head = ["benchmark"] + [f"round {r + 1}" for r in range(nrounds)]
    head += ["geomean", "slower in", "p (paired by round)"] + [f"when {p}" for p in places]
    lines = [f"`{config}` median / `{base}` median, round by round (in brackets: `{config}`'s place in the round's order)", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_place_all: Dict[int, List[float]] = {k: [] for k in range(nconfigs)}
    means = []
    for name, rows in table.items():
        cells = [f"{x:.3f} ({PLACES[k]})" for x, k in rows] + [""] * (nrounds - len(rows))
        mean = geomean([x for x, _ in rows])
        means.append(mean)
        slower = sum(1 for x, _ in rows if x > 1)
        by_place = []
        for k in range(nconfigs):
            xs = [x for x, p in rows if p == k]
            by_place_all[k].extend(xs)
            by_place.append(f"{geomean(xs):.3f}" if xs else "–")
        p = sign_flip_p([x for x, _ in rows])
        verdict = " slower" if p < 0.05 and mean > 1 else " faster" if p < 0.05 else ""
        lines.append("| " + " | ".join([name] + cells + [f"{mean:.3f}", f"{slower}/{len(rows)}", f"{p:.3f}{verdict}"] + by_place) + " |")
    # Per round, the geometric mean over the benchmarks that have that round.
    per_round = [geomean([rows[r][0] for rows in table.values() if r < len(rows)]) for r in range(nrounds)]
    p_all = sign_flip_p(per_round)
    tail = ["**geometric mean**"] + [f"{x:.3f}" for x in per_round] + [f"{geomean(means):.3f}", "", f"{p_all:.3f}"]
    tail += [f"{geomean(by_place_all[k]):.3f}" if by_place_all[k] else "–" for k in range(nconfigs)]
    lines.append("| " + " | ".join(tail) + " |")
    lines += ["", f"p: a sign-flip test of the round ratios (each round one pair of turns); `slower` or "
              f"`faster` where p < 0.05. pyperf's significance test pools every value of every round as if "
              f"independent; values from one turn share its machine state, so it calls more differences "
              f"significant than the rounds support."]
    return lines


def cpu_table(path: str) -> List[str]:
    """How busy the machine was in each configuration's turn, from the /proc/stat lines that
    ``pyperformance.sh`` writes to ``cpu.log`` before and after each turn ("ROUND CONFIG
    start|end EPOCH cpu USER NICE SYSTEM IDLE IOWAIT IRQ SOFTIRQ STEAL ..."). Busy: the share of
    all CPUs' time spent running anything (one worker on 2 CPUs is 50%); steal: the share the
    hypervisor gave to other guests."""
    marks: Dict[Tuple[int, str], Dict[str, Tuple[int, List[int]]]] = {}
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) < 13 or fields[4] != "cpu":
                continue
            counters = [int(x) for x in fields[5:13]]
            marks.setdefault((int(fields[0]), fields[1]), {})[fields[2]] = (int(fields[3]), counters)
    configs = sorted({c for _, c in marks}, key=lambda c: (CONFIGS.index(c) if c in CONFIGS else len(CONFIGS), c))
    rounds = sorted({r for r, _ in marks})
    lines = ["How busy the machine was in each turn (busy: share of all CPUs' time running anything, one",
             "worker on 2 CPUs being 50%; steal: share taken by the hypervisor; minutes)", ""]
    lines += ["| round | " + " | ".join(configs) + " |", "|" + "---|" * (len(configs) + 1)]
    for r in rounds:
        cells = []
        for c in configs:
            m = marks.get((r, c), {})
            if "start" not in m or "end" not in m:
                cells.append("–")
                continue
            (t0, a), (t1, b) = m["start"], m["end"]
            d = [y - x for x, y in zip(a, b)]
            total = sum(d) or 1
            busy = total - d[3] - d[4] - d[7]
            cells.append(f"busy {100 * busy / total:.0f}%, steal {100 * d[7] / total:.1f}%, {(t1 - t0) / 60:.1f} min")
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="the --out folder of benches/pyperformance.sh")
    ap.add_argument("--config", default="rustmalloc")
    ap.add_argument("--base", default="pymalloc")
    a = ap.parse_args()
    runs = {}
    for c in CONFIGS:
        path = os.path.join(a.dir, f"{c}.json")
        if os.path.exists(path):
            runs[c] = rounds_of(path)
    for c in (a.config, a.base):
        if c not in runs:
            raise SystemExit(f"{os.path.join(a.dir, c + '.json')} is missing: give the --out folder of benches/pyperformance.sh")
    table, skipped = ratios(runs, a.config, a.base)
    if not table:
        raise SystemExit(f"no benchmark has the same number of rounds in {a.config}.json and {a.base}.json")
    lines = [f"# pyperformance round by round ({', '.join(runs)})", ""]
    lines += markdown(table, a.config, a.base, len(runs))
    if "malloc" in runs and "malloc" not in (a.config, a.base):
        glibc = ratios(runs, "malloc", a.base)[0]
        if glibc:
            lines += [""] + markdown(glibc, "malloc", a.base, len(runs))
    cpu_log = os.path.join(a.dir, "cpu.log")
    if os.path.exists(cpu_log):
        lines += [""] + cpu_table(cpu_log)
    if skipped:
        lines += ["", f"Not matched (missing from {a.config}.json or {a.base}.json, or another number of rounds "
                  f"there): " + ", ".join(skipped)]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(a.dir, "rounds.md"), "w") as f:
        f.write(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
