#!/usr/bin/env python3
"""Run CPython's own regression tests with and without rustmalloc, and compare.

    python3 scripts/cpython_regrtest.py            # from the repository root, any clean clone

Runs a list of test modules from the interpreter's ``test`` package (``python -m test``) twice,
from a virtual environment that has this project installed and nothing else:

- without rustmalloc (``RUSTMALLOC`` unset: rustmalloc.pth runs, and does nothing);
- with ``RUSTMALLOC=1``: rustmalloc.pth installs rustmalloc at startup in every interpreter, so in
  regrtest's main process, in each of its ``-j`` workers, and in every subprocess a test starts
  (``-I``, ``-E`` and ``-X tracemalloc`` ones included: the .pth runs under all of them).

A virtual environment, because the base interpreter's site-packages may hold ``.pth`` files of
its own that import modules at startup and make tests such as test_threading fail (see the notes
in the README). A probe test, run by regrtest in a worker under each configuration, checks that
rustmalloc is (or is not) installed in the worker and in a ``-I -X tracemalloc`` subprocess.

The outcome of each module and each test case is compared (cases from ``--junit-xml``). Every
case that passes without rustmalloc must pass with it, and every module that passes without it
must pass with it, except for the cases in ``PYMALLOC_DEPENDENT`` below: tests of pymalloc
itself, listed one by one with the reason. Exit status 0 when that holds, 1 when it does not,
2 when the comparison could not be run.

Options: ``--python`` picks the base interpreter (default: this one), ``--venv`` the environment
(default ``target/regrtest/venv``, created if missing; the project is (re)installed into it unless
``--no-install``), ``-j`` the number of regrtest workers (default 2), and test names replace the
default list. Logs and JUnit files go to ``target/regrtest/``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import project_venv  # scripts/project_venv.py (this script's directory is on sys.path)

ROOT = Path(__file__).resolve().parent.parent

#: The modules compared (the issue's list).
TESTS = [
    "test_gc", "test_tracemalloc", "test_sys", "test_dict", "test_list", "test_unicode",
    "test_bytes", "test_weakref", "test_threading", "test_json", "test_pickle", "test_re",
    "test_set", "test_tuple", "test_descr", "test_class", "test_itertools", "test_collections",
    "test_deque", "test_array", "test_memoryview", "test_struct", "test_io", "test_functools",
    "test_generators", "test_exceptions", "test_decimal", "test_string", "test_float",
]

#: Test cases that legitimately depend on pymalloc being CPython's allocator, by test id, with
#: the reason. They run in both configurations; with rustmalloc they may fail or be skipped
#: without counting as a regression. Everything else that passes without rustmalloc must pass
#: with it.
PYMALLOC_DEPENDENT: dict[str, str] = {
    "test.test_sys.SysModuleTest.test_debugmallocstats": (
        "runs sys._debugmallocstats() in a -I subprocess and, since CPython was built with "
        "pymalloc, expects pymalloc's own statistics ('Small block threshold'), which CPython "
        "prints only while pymalloc serves the OBJ domain. The subprocess inherits RUSTMALLOC and "
        "rustmalloc.pth runs under -I, so rustmalloc serves OBJ there. (PYTHONMALLOC=malloc does "
        "not fail it only because -I ignores PYTHON* variables.)"
    ),
}

PROBE = '''\
"""Written by scripts/cpython_regrtest.py: is rustmalloc installed as this run expects?"""
import os
import subprocess
import sys
import unittest

EXPECTED = ("raw", "mem", "obj") if os.environ.get("RUSTMALLOC") else ()
CHECK = "import rustmalloc, tracemalloc; print(rustmalloc.installed(), tracemalloc.is_tracing())"


class RustmallocProbe(unittest.TestCase):
    def test_worker(self):
        import rustmalloc

        self.assertEqual(rustmalloc.installed(), EXPECTED)
        # Only when regrtest runs this module in a -j worker process (it sets the worker's
        # arguments), not in its main process.
        self.assertTrue(any(a in ("test.libregrtest.worker", "--worker-args") for a in sys.orig_argv),
                        sys.orig_argv)

    def test_isolated_tracemalloc_subprocess(self):
        out = subprocess.run([sys.executable, "-I", "-X", "tracemalloc", "-c", CHECK],
                             capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), f"{EXPECTED!r} True")
        self.assertEqual(out.stderr, "")
'''

# regrtest prints "[ 3/29] test_sys passed" ("[ 3/29/1]" once something failed), with an
# optional "(duration)" or "(details)" after the outcome.
PROGRESS = re.compile(r"\[\s*\d+/\d+(?:/\d+)?\] (test_\w+) (.*)$")


@dataclass
class Case:
    outcome: str  # passed, failed, error, skipped, expected failure, unexpected success
    detail: str = ""
    module: str = ""  # the test module whose run reported it (doctests are named after their object)


@dataclass
class Run:
    name: str
    returncode: int = 0
    seconds: float = 0.0
    modules: dict[str, str] = field(default_factory=dict)  # module -> outcome text
    cases: dict[str, Case] = field(default_factory=dict)
    unnamed: dict[str, int] = field(default_factory=dict)  # module -> cases left unnamed
    log: Path | None = None

    def module_status(self, module: str) -> str:
        text = self.modules.get(module, "missing")
        for status in ("passed", "skipped", "crashed", "timed out", "env changed", "failed",
                       "resource denied", "run no tests", "interrupted"):
            if status in text:
                return "env changed" if status == "env changed" else status
        return text

    def counts(self, module: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for case in self.cases.values():
            if case.module == module:
                out[case.outcome] = out.get(case.outcome, 0) + 1
        return out


def _say(*lines: str) -> None:
    for line in lines:
        print(line, flush=True)


# ---- the environment ---------------------------------------------------------------------


_clean_env = project_venv.clean_env


def _prepare_venv(base_python: str, venv: Path, install: bool) -> Path:
    python = project_venv.prepare(base_python, venv, install)
    env = _clean_env()
    check = subprocess.run(
        [str(python), "-c", "import sys, test.libregrtest, rustmalloc; print(sys.version.split()[0])"],
        capture_output=True, text=True, env=env,
    )
    if check.returncode != 0:
        raise SystemExit(f"error: {python} cannot import rustmalloc and test.libregrtest:\n{check.stderr}")
    _say(f"   Python {check.stdout.strip()} at {python}")
    return python


# ---- running regrtest --------------------------------------------------------------------


def _regrtest(python: Path, name: str, rustmalloc: bool, tests: list[str], jobs: int, out: Path,
              extra: list[str], quiet: bool = False) -> Run:
    env = _clean_env()
    if rustmalloc:
        env["RUSTMALLOC"] = "1"
    junit = out / f"{name}.xml"
    log = out / f"{name}.log"
    junit.unlink(missing_ok=True)
    cmd = [str(python), "-m", "test", f"-j{jobs}", "--junit-xml", str(junit), "--timeout", "900",
           *extra, *tests]
    run = Run(name, log=log)
    if not quiet:
        _say(f"== {name}: {'RUSTMALLOC=1 ' if rustmalloc else ''}{' '.join(cmd[1:4])} ... ({len(tests)} modules)")
    start = time.monotonic()
    with open(log, "w", encoding="utf-8") as logf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                errors="replace", cwd=out)
        assert proc.stdout is not None
        for line in proc.stdout:
            logf.write(line)
            m = PROGRESS.search(line.rstrip("\n"))
            if m:
                run.modules[m.group(1)] = m.group(2)
                if not quiet:
                    _say(f"   {name}: {m.group(1)} {m.group(2)}")
        run.returncode = proc.wait()
    run.seconds = time.monotonic() - start
    if junit.exists():
        _read_junit(junit, run)
    return run


def _read_junit(path: Path, run: Run) -> None:
    # One <testsuite> per test module run; its module is the one most of its case ids name
    # ("test.test_json.test_dump.TestDump.test_dump"); doctests are named after their object.
    for suite in ET.parse(path).getroot().iter("testsuite"):
        named = [n.split(".")[1] for tc in suite.iter("testcase")
                 if (n := tc.get("name") or "").startswith("test.") and n.count(".") >= 1]
        module = max(set(named), key=named.count) if named else "?"
        for tc in suite.iter("testcase"):
            name = tc.get("name")
            if not name:
                # regrtest's result object creates the element at startTest and names it when
                # the test ends; a test whose subtests failed is never named.
                run.unnamed[module] = run.unnamed.get(module, 0) + 1
                continue
            if tc.find("error") is not None:
                case = Case("error", (tc.find("error").get("message") or "").strip())
            elif tc.find("failure") is not None:
                case = Case("failed", (tc.find("failure").get("message") or "").strip())
            elif tc.find("skipped") is not None:
                case = Case("skipped", (tc.find("skipped").text or "").strip())
            elif tc.find("output") is not None:
                case = Case("expected failure")
            elif tc.find("outcome") is not None:
                case = Case("unexpected success")
            else:
                case = Case("passed")
            case.module = module
            key, n = name, 1
            while key in run.cases:  # the same doctest run twice (C and Python versions)
                n += 1
                key = f"{name} [{n}]"
            run.cases[key] = case


# ---- comparing ---------------------------------------------------------------------------


def _summary(run: Run, module: str) -> str:
    c = run.counts(module)
    ran = sum(v for k, v in c.items() if k != "skipped")
    bits = [run.module_status(module), f"{ran} run"]
    for key in ("failed", "error", "skipped"):
        if c.get(key):
            bits.append(f"{c[key]} {key}")
    if run.unnamed.get(module):
        bits.append(f"{run.unnamed[module]} with failed subtests")
    return ", ".join(bits[:1]) + ": " + ", ".join(bits[1:])


def compare(base: Run, rm: Run, tests: list[str]) -> tuple[list[str], list[str]]:
    """(regressions, notes)."""
    regressions: list[str] = []
    notes: list[str] = []
    for case_id, case in sorted(base.cases.items()):
        if case.outcome != "passed":
            continue
        other = rm.cases.get(case_id)
        if other is None:
            if rm.module_status(case.module) in ("passed", "failed", "env changed"):
                regressions.append(f"{case_id}: passed without rustmalloc, did not run with it")
            continue  # a crashed or timed-out module is reported below
        if other.outcome in ("passed", "expected failure"):
            continue
        if case_id in PYMALLOC_DEPENDENT:
            continue  # shown with the list
        detail = other.detail.splitlines()[-1] if other.detail else ""
        regressions.append(f"{case_id}: passed without rustmalloc, {other.outcome} with it: {detail}")
    for case_id in PYMALLOC_DEPENDENT:
        if rm.cases.get(case_id, Case("")).outcome == "passed":
            notes.append(f"{case_id}: listed as depending on pymalloc, but passed with rustmalloc")
    for module in tests:
        b, r = base.module_status(module), rm.module_status(module)
        if b != "passed" or r == "passed":
            continue
        unlisted = [cid for cid, c in rm.cases.items()
                    if c.module == module and c.outcome in ("failed", "error") and cid not in PYMALLOC_DEPENDENT]
        if r == "failed" and not unlisted and not rm.unnamed.get(module):
            continue  # failed only through listed cases
        regressions.append(f"{module}: {b} without rustmalloc, {rm.modules.get(module, 'missing')} with it")
    for module in tests:
        if base.module_status(module) != "passed":
            notes.append(f"{module}: {base.modules.get(module, 'missing')} without rustmalloc "
                         "(so it is not held against rustmalloc)")
    return regressions, notes


def _table(base: Run, rm: Run, tests: list[str]) -> str:
    w = max(len(t) for t in tests)
    rows = [(t, _summary(base, t), _summary(rm, t)) for t in tests]
    wb = max(len(r[1]) for r in rows + [("", "without rustmalloc", "")])
    wr = max(len(r[2]) for r in rows + [("", "", "with rustmalloc (RUSTMALLOC=1)")])
    lines = [f"| {'module':<{w}} | {'without rustmalloc':<{wb}} | {'with rustmalloc (RUSTMALLOC=1)':<{wr}} |",
             f"|{'-' * (w + 2)}|{'-' * (wb + 2)}|{'-' * (wr + 2)}|"]
    lines += [f"| {t:<{w}} | {b:<{wb}} | {r:<{wr}} |" for t, b, r in rows]
    total_b = sum(1 for c in base.cases.values() if c.outcome != "skipped")
    total_r = sum(1 for c in rm.cases.values() if c.outcome != "skipped")
    lines.append(f"| {'total':<{w}} | {f'{total_b} cases run, {base.seconds:.0f} s':<{wb}} | "
                 f"{f'{total_r} cases run, {rm.seconds:.0f} s':<{wr}} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tests", nargs="*", help="test modules (default: the list in this script)")
    parser.add_argument("--python", default=sys.executable, help="base interpreter (default: this one)")
    parser.add_argument("--venv", type=Path, default=ROOT / "target" / "regrtest" / "venv",
                        help="virtual environment to use or create (default: target/regrtest/venv)")
    parser.add_argument("--no-install", action="store_true",
                        help="use the rustmalloc already installed in --venv instead of installing this checkout")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="regrtest worker processes (default 2)")
    parser.add_argument("-u", "--use", help="regrtest resources to enable (python -m test -u ...)")
    args = parser.parse_args(argv)

    tests = args.tests or TESTS
    out = ROOT / "target" / "regrtest"
    out.mkdir(parents=True, exist_ok=True)
    python = _prepare_venv(args.python, args.venv.resolve(), install=not args.no_install)
    extra = ["-u", args.use] if args.use else []

    # The probe: rustmalloc installed (or not) in a regrtest worker and in its subprocesses.
    probe_dir = out / "probe"
    probe_dir.mkdir(exist_ok=True)
    (probe_dir / "test_rustmalloc_probe.py").write_text(PROBE)
    for name, on in (("probe-without", False), ("probe-with", True)):
        probe = _regrtest(python, name, on, ["test_rustmalloc_probe"], 1,
                          out, ["--testdir", str(probe_dir)], quiet=True)
        if probe.returncode != 0 or probe.module_status("test_rustmalloc_probe") != "passed":
            _say(f"error: the probe failed ({name}); see {probe.log}:",
                 textwrap.indent(probe.log.read_text()[-3000:], "   "))
            return 2
    _say("== probe: rustmalloc is installed in regrtest workers and their -I -X tracemalloc "
         "subprocesses with RUSTMALLOC=1, and not without it")

    base = _regrtest(python, "without-rustmalloc", False, tests, args.jobs, out, extra)
    rm = _regrtest(python, "with-rustmalloc", True, tests, args.jobs, out, extra)
    for run in (base, rm):
        if not run.modules:
            _say(f"error: regrtest ({run.name}) reported no test; see {run.log}:",
                 textwrap.indent(run.log.read_text()[-3000:], "   "))
            return 2

    regressions, notes = compare(base, rm, tests)
    _say("", "CPython regression tests, without and with rustmalloc "
         f"(Python {sys.version.split()[0] if args.python == sys.executable else args.python}, -j{args.jobs}):", "")
    _say(_table(base, rm, tests), "")
    if PYMALLOC_DEPENDENT:
        _say("Cases listed as depending on pymalloc (allowed to fail with rustmalloc):")
        for case_id, reason in PYMALLOC_DEPENDENT.items():
            b = base.cases.get(case_id, Case("not run")).outcome
            r = rm.cases.get(case_id, Case("not run")).outcome
            _say(f"  {case_id}: {b} without, {r} with rustmalloc. {reason}")
        _say("")
    for note in notes:
        _say(f"note: {note}")
    if regressions:
        _say("", f"FAILURE: {len(regressions)} regression(s) with rustmalloc "
             f"(logs: {base.log}, {rm.log}):")
        for r in regressions:
            _say(f"  {r}")
        return 1
    _say("", "OK: every test case and module that passes without rustmalloc passes with it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
