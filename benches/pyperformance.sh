#!/usr/bin/env bash
# Run a set of pyperformance benchmarks under pymalloc, PYTHONMALLOC=malloc (glibc) and rustmalloc,
# then compare them with `pyperf compare_to`. Slow (roughly 15-20 minutes per configuration and
# round on 2 cores); not run in CI.
#
#   benches/pyperformance.sh [--rounds N] [--fast] [--benchmarks LIST] [--python PY] [--out DIR]
#
# Needs pyperformance in the Python that runs this script (pip install '.[bench]'), and
# rustmalloc's startup hook (issue 4): `RUSTMALLOC=1` plus the .pth file the wheel ships, which
# installs rustmalloc in every interpreter that inherits the variable. pyperformance runs the
# benchmarks in a venv of its own, without system site-packages, whose workers see only PATH,
# HOME, PYTHONPATH and the variables named by --inherit-environ; so this script installs the
# project into that venv and passes RUSTMALLOC (or PYTHONMALLOC) through --inherit-environ.
#
# Rounds interleave the configurations, round r in the r-th of the six orders of the three
# (pymalloc, malloc, rustmalloc; malloc, rustmalloc, pymalloc; rustmalloc, pymalloc, malloc; and
# the three reversed: use a multiple of 6 rounds); each
# configuration's runs are appended to one pyperf file, so compare_to's significance test sees
# every round. Output: <out>/{pymalloc,malloc,rustmalloc}.json, <out>/compare.md (the three side
# by side with their geometric mean, then rustmalloc against pymalloc grouped by significance) and
# <out>/rounds.md (the same split into rounds, with each configuration's place in each round's
# order, and how busy the machine was in each turn: benches/pyperformance_rounds.py).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
tool_python=${TOOL_PYTHON:-python3}
benchmarks=json_dumps,json_loads,pickle_pure_python,unpickle_pure_python,deltablue,richards,go,hexiom,chaos,raytrace,nbody,xml_etree,gc_traversal,async_tree,deepcopy
rounds=1
fast=()
python=""
out="$here/results/pyperformance"

while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --fast) fast=(--fast); shift ;;
        --benchmarks) benchmarks=$2; shift 2 ;;
        --python) python=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

if ! "$tool_python" -c "import pyperformance, pyperf" 2>/dev/null; then
    echo "$tool_python has no pyperformance: pip install '.[bench]' (or set TOOL_PYTHON)" >&2
    exit 2
fi
# The interpreter to benchmark: by default the base CPython of the tool's venv (pyperformance
# builds its own venv from it).
python=${python:-$("$tool_python" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')}
out=$(mkdir -p "$out" && cd "$out" && pwd)
work="$here/results/tmp/pyperformance"   # pyperformance's venv lives here (git-ignored)
mkdir -p "$work"
cd "$work"

pyperformance() {
    # No allocator choice of the caller's leaks into a configuration (as `configs.ALLOCATOR_VARS`).
    env -u RUSTMALLOC -u RUSTMALLOC_CHECK -u RUSTMALLOC_STATS -u PYTHONMALLOC -u LD_PRELOAD -u PYTHONDEVMODE \
        -u PYTHONMALLOCSTATS -u PYTHONTRACEMALLOC "$@"
}

echo "== pyperformance's venv for $python"
pyperformance "$tool_python" -m pyperformance venv create -p "$python" -b "$benchmarks" >/dev/null || true
venv=$(pyperformance "$tool_python" -m pyperformance venv show -p "$python" | sed -n 's/^Virtual environment path: \([^ ]*\).*/\1/p')
if [ ! -x "$venv/bin/python" ]; then
    echo "pyperformance's venv was not created ($venv)" >&2
    exit 1
fi

echo "== installing rustmalloc (release build) into $venv"
pyperformance "$venv/bin/python" -m pip install -q "$root"
if ! RUSTMALLOC=1 "$venv/bin/python" -c 'import sys, rustmalloc; sys.exit(rustmalloc.installed() != ("raw", "mem", "obj"))'; then
    echo "RUSTMALLOC=1 did not install rustmalloc at startup in $venv: this build lacks the startup hook (.pth) of issue 4" >&2
    exit 1
fi

rm -f "$out"/pymalloc.json "$out"/malloc.json "$out"/rustmalloc.json "$out"/cpu.log "$out"/rounds.md
# The machine's CPU counters (/proc/stat) before and after each configuration's turn: what else
# ran (busy beyond our one worker) and what the hypervisor took (steal), per turn, in rounds.md.
cpu_mark() {
    if [ -r /proc/stat ]; then
        echo "$round $config $1 $(date +%s) $(head -1 /proc/stat)" >> "$out/cpu.log"
    fi
}
# A Williams design for three: over six rounds each configuration takes each place twice and
# follows each other configuration twice.
orders=("pymalloc malloc rustmalloc" "malloc rustmalloc pymalloc" "rustmalloc pymalloc malloc"
        "rustmalloc malloc pymalloc" "malloc pymalloc rustmalloc" "pymalloc rustmalloc malloc")
for round in $(seq 1 "$rounds"); do
    # In a fixed order rustmalloc always ran right after glibc and pymalloc always first, and
    # anything tied to the place (what the machine is left doing by the run before) fell on one
    # configuration in every round. Rotating alone balances the places, not who runs after whom.
    read -r -a order <<< "${orders[$(( (round - 1) % 6 ))]}"
    for config in "${order[@]}"; do
        echo "== round $round/$rounds: $config"
        case $config in
            pymalloc) vars=() ; inherit=() ;;
            malloc) vars=(PYTHONMALLOC=malloc) ; inherit=(--inherit-environ PYTHONMALLOC) ;;
            rustmalloc) vars=(RUSTMALLOC=1) ; inherit=(--inherit-environ RUSTMALLOC) ;;
        esac
        cpu_mark start
        pyperformance env "${vars[@]}" "$tool_python" -m pyperformance run -p "$python" -b "$benchmarks" \
            "${inherit[@]}" "${fast[@]}" --append "$out/$config.json"
        cpu_mark end
    done
done

echo "== pyperf compare_to"
{
    echo "# pyperformance: pymalloc vs PYTHONMALLOC=malloc vs rustmalloc"
    echo
    "$tool_python" -m pyperf compare_to "$out/pymalloc.json" "$out/malloc.json" "$out/rustmalloc.json" --table --table-format md
    echo
    echo '```'
    "$tool_python" -m pyperf compare_to "$out/pymalloc.json" "$out/rustmalloc.json" -G
    echo '```'
} | tee "$out/compare.md"

echo "== round by round"
"$tool_python" "$here/pyperformance_rounds.py" "$out" || echo "pyperformance_rounds.py failed (the pyperf files are written)" >&2
