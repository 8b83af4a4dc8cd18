#!/usr/bin/env python3
"""Run the Python test suite under valgrind memcheck, with rustmalloc built with its `valgrind`
feature (memcheck client requests: our blocks are memcheck blocks, free memory unaddressable).

    python3 scripts/memcheck.py            # the whole suite (less DESELECTED): about an hour
    python3 scripts/memcheck.py --quick    # QUICK: a few minutes (what CI runs)
    python3 scripts/memcheck.py -- tests/test_threads.py -k cross   # pytest arguments instead

Steps:

1. A virtual environment of its own, ``target/memcheck/venv`` (created if missing, from this
   interpreter or ``--python``), into which this checkout is installed with the feature:
   ``pip install '.[test]'`` with ``MATURIN_PEP517_ARGS="--features python,valgrind"``
   (``--no-install`` keeps what is there). It checks that the installed build has the feature.
2. ``tests/test_valgrind.py``, natively: it runs memcheck itself on a script that plants memory
   bugs in rustmalloc blocks and checks that memcheck reports each of them (and nothing else).
3. pytest under ``valgrind --tool=memcheck --trace-children=yes --track-origins=yes``, so that
   the pytest process (with ``--rustmalloc``: rustmalloc installed in it) and every interpreter
   the tests start run under memcheck, with ``PYTHONMALLOC=malloc`` (memcheck then sees the
   blocks of CPython's own allocators too, before rustmalloc is installed, and pymalloc's
   deliberate reads of uninitialised memory do not occur), our suppression file
   ``scripts/memcheck.supp`` (noise that is not ours, each entry with its reason) and
   ``RUSTMALLOC_TEST_TIMEOUT_SCALE`` (the tests' own subprocess timeouts are multiplied: under
   memcheck everything is 20-50 times slower). ``DESELECTED`` lists the tests left out, each
   with its reason.
4. Every process's log (``target/memcheck/logs/<pid>.log``) is read: the run passes only if
   pytest passed and no process has a memcheck report, except the reports of one known CPython
   3.11 issue, recognised by their origin (see ``cpython_noise``) and counted. Reports are
   printed with their process's command.

Exit status: 0 clean, 1 an error or a failing test, 2 the run could not be set up.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import project_venv  # scripts/project_venv.py (this script's directory is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "memcheck"
SUPP = ROOT / "scripts" / "memcheck.supp"

#: Tests left out of the memcheck run, with the reason.
DESELECTED: dict[str, str] = {
    "tests/test_valgrind.py":
        "runs valgrind itself (step 2 runs it natively)",
    "tests/test_bench_smoke.py":
        "the benchmark suite runs callgrind itself (valgrind cannot run under valgrind) and "
        "takes minutes natively",
    "tests/test_check_mode.py::test_planted_bug_is_reported_and_aborts":
        "plants memory bugs on purpose (overflows, writes after free, double frees) for the "
        "checking mode to find: memcheck reports them as well, rightly",
    "tests/test_check_mode.py::test_warn_mode_reports_and_goes_on":
        "the same planted bugs, in warn mode",
    "tests/test_memory_limits.py":
        "RLIMIT_AS: valgrind reserves address space of its own and does not apply the limit "
        "to the client as the kernel does",
    "tests/test_check_mode.py::test_clean_run_stays_clean":
        "reads a fresh block on purpose to see the checking mode's 0xCB fill, which memcheck "
        "rightly reports as a read of uninitialised memory",
    "tests/test_stress.py":
        "a 30 s stress run of native threads and forks, timed: under memcheck it does a fiftieth "
        "of the work (scripts/stress.py can be run under memcheck by hand)",
}

#: The short run (CI, a few minutes): small blocks of every size in one domain, zero-byte
#: requests, and RAW heaps in threads freeing each other's blocks while purging.
QUICK = [
    "tests/test_domain_functions.py::test_all_sizes_aligned_owned_disjoint[malloc-obj]",
    "tests/test_domain_functions.py::test_zero_byte_requests[mem]",
    "tests/test_purge.py::test_raw_purge_with_remote_frees_across_threads",
]

TIMEOUT_SCALE = 20


def _say(msg: str) -> None:
    print(msg, flush=True)


_clean_env = project_venv.clean_env


def prepare_venv(base_python: str, venv: Path, install: bool) -> Path:
    python = project_venv.prepare(base_python, venv, install, spec=str(ROOT) + "[test]",
                                  build_env={"MATURIN_PEP517_ARGS": "--features python,valgrind"},
                                  what="--features python,valgrind: a release build")
    env = _clean_env()
    probe = subprocess.run([str(python), "-c", "import rustmalloc._rustmalloc as m; print(m.VALGRIND)"],
                           capture_output=True, text=True, env=env)
    if probe.stdout.strip() != "True":
        raise SystemExit(f"error: {python} has no rustmalloc built with the valgrind feature:\n"
                         f"{probe.stdout}{probe.stderr}")
    return python


# ---- reading memcheck's logs ----------------------------------------------------------------

#: The first lines of memcheck's error reports (its manual's list). A log's ERROR SUMMARY cannot
#: be checked against the reports read: a process forked under valgrind inherits its parent's
#: counts, whose reports are in the parent's log.
ERROR_KINDS = re.compile(r"(Invalid (read|write|free|alignment)|Conditional jump|Use of uninitialised|"
                         r"Syscall param|Mismatched free|Source and destination overlap|Argument '.*' of "
                         r"function|Jump to the invalid address|Illegal memory pool|Unaddressable byte|"
                         r"Uninitialised byte)")


def reports(log: str) -> list[list[str]]:
    """memcheck's reports in a log: each a list of lines (without the ==pid== prefix), the first
    naming the kind of error."""
    out: list[list[str]] = []
    cur: list[str] | None = None
    for line in log.splitlines():
        m = re.match(r"==\d+== ?(.*)", line)
        if not m:
            continue
        text = m.group(1)
        if not text.strip():
            if cur:
                out.append(cur)
            cur = None
        elif cur is not None:
            cur.append(text)
        elif ERROR_KINDS.match(text):
            cur = [text]
    if cur:
        out.append(cur)
    return out


def cpython_noise(report: list[str]) -> str | None:
    """Why `report` is known CPython noise, or None if it is not.

    The one case: CPython 3.11 leaves the digit slot of a 0-digit int uninitialised (an int made
    by _PyLong_New(0): int.from_bytes, int() of a string, a bitwise operation that gives 0), and
    maybe_small_long() then computes Py_SIZE(v) * ob_digit[0]: 0 times an uninitialised digit is
    0, but memcheck's rule for a multiplication makes the product undefined, and with it the
    pointer to the small int 0 that is picked from it. That pointer goes wherever the int 0 goes
    (dicts, lists, frames), so the reports cannot be suppressed by stack: they are recognised by
    their origin (--track-origins=yes), an allocation made by _PyLong_New. It happens with
    CPython's own allocators too (PYTHONMALLOC=malloc, no rustmalloc: `json.loads('[0]')` is
    enough); CPython 3.12 initialises the digit in _PyLong_New.
    """
    if not report[0].startswith(("Conditional jump", "Use of uninitialised", "Syscall param")):
        return None
    try:
        origin = next(i for i, line in enumerate(report) if "Uninitialised value was created" in line)
    except StopIteration:
        return None
    frames = [line.split(": ", 1)[-1].split(" (", 1)[0] for line in report[origin + 1:]
              if line.lstrip().startswith(("at ", "by "))]
    # The allocation: malloc or our hook, maybe tracemalloc's, then the function that asked.
    asker = next((f for f in frames if not f.startswith(ALLOCATOR_FRAMES)), None)
    if asker == "_PyLong_New":
        return "CPython 3.11: the uninitialised digit of an int 0 (an allocation by _PyLong_New)"
    return None


#: Frames of the allocators between a memcheck origin and the code that asked for the memory.
ALLOCATOR_FRAMES = ("malloc", "calloc", "realloc", "rustmalloc::", "tracemalloc_", "PyObject_Malloc",
                    "PyObject_Calloc", "PyMem_", "_PyMem_", "_PyObject_Malloc", "_PyObject_Calloc")


def read_logs(logs: Path) -> tuple[int, int, list[tuple[Path, str, list[list[str]]]]]:
    """(processes seen, CPython noise reports, [(log, command, reports)] for every process with
    reports that are not CPython noise)."""
    seen, noise, bad = 0, 0, []
    for log in sorted(logs.glob("*.log")):
        text = log.read_text(errors="replace")
        command = next((line.split("Command: ", 1)[1] for line in text.splitlines() if "Command: " in line), "?")
        seen += 1
        found = reports(text)
        real = []
        for r in found:
            if cpython_noise(r):
                noise += 1
            else:
                real.append(r)
        if real:
            bad.append((log, command, real))
    return seen, noise, bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short run (CI)")
    parser.add_argument("--python", default=sys.executable, help="base interpreter of the venv")
    parser.add_argument("--venv", type=Path, default=OUT / "venv")
    parser.add_argument("--no-install", action="store_true", help="use what the venv has")
    parser.add_argument("pytest_args", nargs="*", help="pytest arguments (after --) instead of the default")
    args = parser.parse_args()
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        _say("error: valgrind is not installed (apt-get install valgrind)")
        return 2
    started = time.monotonic()
    python = prepare_venv(args.python, args.venv.resolve(), install=not args.no_install)
    # The pytest run keeps this environment as an ordinary run would (some tests rely on, e.g.,
    # PYTHONUNBUFFERED for the order of their subprocesses' output), less rustmalloc's variables.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RUSTMALLOC") and k not in ("VIRTUAL_ENV", "__PYVENV_LAUNCHER__")}
    env["PYTHONMALLOC"] = "malloc"
    env["RUSTMALLOC_TEST_TIMEOUT_SCALE"] = str(TIMEOUT_SCALE)

    _say("== tests/test_valgrind.py (natively: it runs memcheck on planted bugs itself)")
    proof = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "tests/test_valgrind.py"], cwd=ROOT, env=_clean_env())
    if proof.returncode != 0:
        _say("FAILED: memcheck does not see the planted bugs (tests/test_valgrind.py)")
        return 1

    logs = OUT / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    if args.pytest_args:
        selection = args.pytest_args
    elif args.quick:
        selection = QUICK
    else:
        selection = ["tests"] + [f"--deselect={t}" for t in DESELECTED]
    command = [
        valgrind, "--tool=memcheck", "--trace-children=yes", "--leak-check=no", "--track-origins=yes",
        f"--suppressions={SUPP}", "--num-callers=40", f"--log-file={logs}/%p.log",
        str(python), "-m", "pytest", "--rustmalloc", "-p", "no:cacheprovider", "-q", "-rfEs", "--durations=15",
        *selection,
    ]
    _say("== pytest under memcheck: " + " ".join(command[command.index(str(python)):]))
    for test, reason in ({} if args.pytest_args or args.quick else DESELECTED).items():
        _say(f"   deselected {test}: {reason}")
    t0 = time.monotonic()
    run = subprocess.run(command, cwd=ROOT, env=env)
    minutes = (time.monotonic() - t0) / 60
    seen, noise, bad = read_logs(logs)
    _say(f"== {seen} processes ran under memcheck in {minutes:.1f} min (logs: {logs}); "
         f"{noise} reports of the known CPython 3.11 int-0 issue set aside (see cpython_noise)")
    for log, cmd, real in bad:
        _say(f"-- {len(real)} memcheck reports in {log.name}: {cmd[:300]}")
        for r in real[:10]:
            _say("\n".join("   " + line for line in r[:40]) + "\n")
    total = (time.monotonic() - started) / 60
    if run.returncode != 0 or bad:
        _say(f"FAILED: pytest exit status {run.returncode}, {len(bad)} processes with memcheck reports "
             f"({total:.1f} min in all)")
        return 1
    _say(f"memcheck: clean: no report in any of the {seen} processes, pytest passed ({total:.1f} min in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
