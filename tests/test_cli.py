"""python -m rustmalloc: run, stats, demo and their --help. Every test runs fresh interpreters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

ALL = ["raw", "mem", "obj"]

# The program `run` starts: reports what it sees as JSON on stdout, then does what argv asks.
PROG = textwrap.dedent("""\
    import json, os, subprocess, sys
    import rustmalloc
    child = subprocess.run([sys.executable, "-I", "-c", "import rustmalloc; print(list(rustmalloc.installed()))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    print(json.dumps({
        "name": __name__, "argv": sys.argv, "pid": os.getpid(), "path0": sys.path[0],
        "installed": list(rustmalloc.installed()),
        "at_startup": "rustmalloc._startup" in sys.modules,
        "env": {k: v for k, v in os.environ.items() if k.startswith("RUSTMALLOC")},
        "child": child,
    }), flush=True)
    if sys.argv[1:2] == ["exit"]:
        sys.exit(int(sys.argv[2]))
    if sys.argv[1:2] == ["raise"]:
        raise ValueError("boom")
    if sys.argv[1:2] == ["kill"]:
        import signal
        sig = getattr(signal, sys.argv[2])
        if sig != signal.SIGKILL:
            # A shell without job control starts background commands with SIGINT ignored,
            # and the child inherits that: die of the signal here whatever the caller's setting.
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    if sys.argv[1:2] == ["chdir"]:
        os.chdir(sys.argv[2])
    """)


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUSTMALLOC") and k != "PYTHONTRACEMALLOC"}
    env.update(extra)
    return env


def rm(*args: str, env: dict | None = None, cwd=None, flags=()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-m", "rustmalloc", *args], capture_output=True, text=True,
                          timeout=120, env=_env() if env is None else env, cwd=cwd)


def seen(r: subprocess.CompletedProcess) -> dict:
    return json.loads(r.stdout.splitlines()[0])


@pytest.fixture
def prog(tmp_path):
    path = tmp_path / "prog.py"
    path.write_text(PROG)
    return path


# ---- --help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["run"], ["stats"], ["demo"]])
def test_help(command):
    r = rm(*command, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: python -m rustmalloc {' '.join(command)}".rstrip())
    if command == ["run"]:
        for option in ("--stats", "--stats-json FILE", "-m module", "--domains"):
            assert option in r.stdout


def test_no_command_is_an_error():
    r = rm()
    assert r.returncode == 2
    assert "usage:" in r.stderr


# ---- run: installed at startup, arguments, exit status, signals ------------------------------


def test_run_script_installed_at_startup(prog):
    r = rm("run", str(prog), "a", "--stats", "-m", "x", "--", "b")
    assert r.returncode == 0, r.stderr
    s = seen(r)
    assert s["name"] == "__main__"
    assert s["argv"] == [str(prog), "a", "--stats", "-m", "x", "--", "b"]  # the program's, untouched
    assert s["installed"] == ALL and s["at_startup"]
    assert s["path0"] == str(prog.parent)  # as `python prog.py` sets it
    assert s["env"] == {"RUSTMALLOC": "1"}
    assert s["child"] == str(ALL)  # child processes inherit it
    assert r.stderr == ""  # no report without --stats


def test_run_replaces_the_process(prog):
    # Same pid: the exit status and signals are the program's own.
    proc = subprocess.Popen([sys.executable, "-m", "rustmalloc", "run", str(prog)], stdout=subprocess.PIPE,
                            text=True, env=_env())
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert json.loads(out.splitlines()[0])["pid"] == proc.pid


@pytest.mark.parametrize("status", [0, 3, 7])
def test_run_exit_status(prog, status):
    assert rm("run", str(prog), "exit", str(status)).returncode == status


def test_run_uncaught_exception(prog):
    r = rm("run", str(prog), "raise")
    assert r.returncode == 1
    assert r.stderr.rstrip().endswith("ValueError: boom")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL", "SIGINT"])
def test_run_killed_by_signal(prog, sig):
    r = rm("run", str(prog), "kill", sig)
    assert r.returncode == -getattr(signal, sig)


def test_run_module(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tool.py").write_text(PROG)
    r = rm("run", "--domains", "mem,obj", "-m", "pkg.tool", "exit", "5", "--stats", cwd=tmp_path)
    assert r.returncode == 5, r.stderr
    s = seen(r)
    assert s["name"] == "__main__"
    assert s["argv"] == [str(pkg / "tool.py"), "exit", "5", "--stats"]
    assert s["installed"] == ["mem", "obj"] and s["at_startup"]
    assert s["env"] == {"RUSTMALLOC": "mem,obj"}


def test_run_stdlib_module_reads_stdin():
    r = subprocess.run([sys.executable, "-m", "rustmalloc", "run", "-m", "json.tool", "--sort-keys"],
                       input='{"b": 1, "a": [2]}', capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"a": [2], "b": 1}
    assert r.stdout.index('"a"') < r.stdout.index('"b"')


def test_run_keeps_a_valid_inherited_domain_list(prog):
    r = rm("run", str(prog), env=_env(RUSTMALLOC="raw"))
    assert seen(r)["installed"] == ["raw"]
    r = rm("run", str(prog), env=_env(RUSTMALLOC="0"))  # `run` means rustmalloc: off becomes all
    assert seen(r)["installed"] == ALL


def test_run_passes_interpreter_flags(prog):
    # `python -X tracemalloc=4 -W ... -m rustmalloc run` starts the program with the same options.
    code = "import sys, tracemalloc; print(tracemalloc.get_traceback_limit(), sys.warnoptions)"
    script = prog.parent / "flags.py"
    script.write_text(code)
    r = rm("run", str(script), flags=["-X", "tracemalloc=4", "-W", "error::DeprecationWarning"])
    assert r.stdout == "4 ['error::DeprecationWarning']\n", r.stderr


# ---- run: statistics --------------------------------------------------------------------------


def test_run_stats_report_on_stderr(prog):
    r = rm("run", "--stats", str(prog))
    assert r.returncode == 0
    assert len(r.stdout.splitlines()) == 1  # the program's output only
    assert seen(r)["env"] == {"RUSTMALLOC": "1"}  # RUSTMALLOC_STATS is not passed on
    assert "rustmalloc statistics at exit" in r.stderr
    assert "obj" in r.stderr


def test_run_stats_json(prog, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    # A relative FILE is taken from where `run` was started, even if the program changes directory.
    r = rm("run", "--stats-json", "snap.json", str(prog), "chdir", str(other), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert seen(r)["env"] == {"RUSTMALLOC": "1"}
    snap = json.loads((tmp_path / "snap.json").read_text())
    assert set(snap) >= {"installed", "domains", "raw_heaps", "size_classes", "os", "fragmentation"}
    assert snap["installed"] == ALL
    assert set(snap["domains"]) == set(ALL)
    obj = snap["domains"]["obj"]
    assert set(obj) >= {"blocks_in_use", "bytes_in_use", "large_blocks_in_use", "large_bytes_in_use",
                        "foreign_frees", "foreign_reallocs"}
    assert obj["blocks_in_use"] > 0 and obj["bytes_in_use"] >= 16 * obj["blocks_in_use"]
    assert snap["raw_heaps"]["created"] >= 1


def test_run_stats_json_written_on_failure_too(prog, tmp_path):
    out = tmp_path / "snap.json"
    r = rm("run", "--stats-json", str(out), "--stats", str(prog), "exit", "9")
    assert r.returncode == 9
    assert json.loads(out.read_text())["installed"] == ALL
    assert "rustmalloc statistics at exit" in r.stderr


# ---- run: usage errors ------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    ([], "give a script to run, or -m module"),
    (["--stats"], "give a script to run, or -m module"),
    (["--bogus", "x.py"], "unrecognized arguments: --bogus"),
])
def test_run_usage_errors(args, message):
    r = rm("run", *args)
    assert r.returncode == 2
    assert message in r.stderr


def test_run_invalid_domains(prog):
    r = rm("run", "--domains", "mem", str(prog))
    assert r.returncode == 2
    assert "--domains 'mem'" in r.stderr


# ---- run without rustmalloc.pth in effect (python -S): installs in-process ---------------------


def test_run_without_pth(prog, tmp_path):
    site_dir = subprocess.run([sys.executable, "-c", "import os, rustmalloc; print(os.path.dirname("
                               "os.path.dirname(rustmalloc.__file__)))"], capture_output=True, text=True,
                              check=True).stdout.strip()
    out = tmp_path / "snap.json"
    r = rm("run", "--stats-json", str(out), str(prog), "exit", "4", flags=["-S"],
           env=_env(PYTHONPATH=site_dir))
    assert r.returncode == 4, r.stderr
    s = seen(r)
    assert s["installed"] == ALL and s["argv"] == [str(prog), "exit", "4"]
    assert s["path0"] == str(prog.parent)
    assert s["name"] == "__main__"
    assert json.loads(out.read_text())["installed"] == ALL


def test_run_without_pth_honours_domains_and_stats_over_the_environment(prog, tmp_path):
    # `run` imported the startup hook before setting RUSTMALLOC, which installed what the
    # inherited variable said (RAW here) and consumed an inherited RUSTMALLOC_STATS.
    site_dir = subprocess.run([sys.executable, "-c", "import os, rustmalloc; print(os.path.dirname("
                               "os.path.dirname(rustmalloc.__file__)))"], capture_output=True, text=True,
                              check=True).stdout.strip()
    r = rm("run", "--domains", "mem,obj", str(prog), flags=["-S"],
           env=_env(PYTHONPATH=site_dir, RUSTMALLOC="raw", RUSTMALLOC_STATS="1"))
    assert r.returncode == 0, r.stderr
    assert seen(r)["installed"] == ["mem", "obj"]
    assert "rustmalloc statistics at exit" in r.stderr


# ---- stats ------------------------------------------------------------------------------------


def test_stats():
    r = rm("stats")
    assert r.returncode == 0, r.stderr
    assert "short workload" in r.stdout
    assert "rustmalloc statistics of this process" in r.stdout
    for domain in ALL:
        assert domain in r.stdout
