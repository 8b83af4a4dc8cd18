"""Installing at startup through RUSTMALLOC and rustmalloc.pth. Every test runs fresh interpreters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ALL = "('raw', 'mem', 'obj')"
SHOW = "import rustmalloc, sys; print(rustmalloc.installed(), 'rustmalloc._startup' in sys.modules)"


def _site_dir() -> str:
    """The site-packages directory that holds the installed package and rustmalloc.pth."""
    out = subprocess.run([sys.executable, "-c", "import rustmalloc; print(rustmalloc.__file__)"],
                         capture_output=True, text=True, check=True, env=_env())
    site_dir = os.path.dirname(os.path.dirname(out.stdout.strip()))
    if not os.path.isfile(os.path.join(site_dir, "rustmalloc.pth")):
        pytest.fail(f"rustmalloc.pth is not next to the installed package in {site_dir}: install the "
                    "wheel (pip install .), not an editable or source-tree build", pytrace=False)
    return site_dir


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RUSTMALLOC") and k not in ("PYTHONTRACEMALLOC", "PYTHONMALLOC", "PYTHONDEVMODE")}
    env.update(extra)
    return env


def py(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60,
                          env=_env() if env is None else env, **kw)


@pytest.fixture(scope="module", autouse=True)
def _pth_installed():
    _site_dir()


# ---- the variable: off, on, domain lists ---------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "0", " 0 "])
def test_off_imports_nothing(value):
    # Unset, empty or 0: the .pth line does not even import rustmalloc.
    env = _env() if value is None else _env(RUSTMALLOC=value)
    r = py("-c", "import sys; print('rustmalloc' in sys.modules)", env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, "False\n", "")


def test_settings_at_startup_import_no_more_than_rustmalloc():
    # The hook reads sizes by hand: `re` would add ~1,600 objects every full collection walks.
    # Under -S (no site, so no other package's .pth can import `re` first) the .pth line runs by
    # hand, as site runs it; what it adds with sizes set is compared with what it adds when off.
    site_dir = _site_dir()
    show = textwrap.dedent(f"""
        import sys
        sys.path.append({site_dir!r})
        before = set(sys.modules)
        exec(open({os.path.join(site_dir, "rustmalloc.pth")!r}).read())
        print((sorted(before), sorted(m for m in set(sys.modules) - before
                                      if not m.startswith('rustmalloc') and m not in sys.builtin_module_names)))
    """)
    plain = py("-S", "-c", show)
    tuned = py("-S", "-c", show, env=_env(RUSTMALLOC="1", RUSTMALLOC_PURGE_DELAY_MS="500",
                                          RUSTMALLOC_RETAIN_BYTES="1.5 MiB", RUSTMALLOC_PURGE="1"))
    assert plain.returncode == tuned.returncode == 0, tuned.stderr
    before, plain_added = eval(plain.stdout)
    _, tuned_added = eval(tuned.stdout)
    assert "re" not in before  # else this test could not see the difference
    assert "re" not in tuned_added
    assert set(tuned_added) - set(plain_added) <= {"__future__"}, tuned_added


@pytest.mark.parametrize("value", ["off", "false", "No"])
def test_off_words(value):
    r = py("-c", SHOW, env=_env(RUSTMALLOC=value))
    assert (r.returncode, r.stdout, r.stderr) == (0, "() True\n", "")


@pytest.mark.parametrize("value", ["1", "all", "ON", "true", "yes", "raw,mem,obj", " obj, RAW ,mem "])
def test_on_all_domains(value):
    r = py("-c", SHOW, env=_env(RUSTMALLOC=value))
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{ALL} True\n", "")


@pytest.mark.parametrize("value, expected", [("raw", "('raw',)"), ("mem,obj", "('mem', 'obj')"),
                                             ("obj, mem", "('mem', 'obj')")])
def test_domain_list(value, expected):
    r = py("-c", SHOW, env=_env(RUSTMALLOC=value))
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{expected} True\n", "")


@pytest.mark.parametrize("flags", [["-I"], ["-E", "-s"], ["-X", "dev"], ["-X", "utf8", "-B"]])
def test_on_under_interpreter_flags(flags):
    # .pth files run under -I, -E and -s: so does the hook (RUSTMALLOC is not a PYTHON* variable).
    r = py(*flags, "-c", SHOW, env=_env(RUSTMALLOC="1"))
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{ALL} True\n", "")


def test_installed_before_user_code():
    # The first line of the program already runs on rustmalloc: the blocks it allocates are ours.
    code = textwrap.dedent("""\
        import rustmalloc
        before = rustmalloc.stats().domains["obj"].blocks_in_use
        x = [object() for _ in range(10_000)]
        after = rustmalloc.stats().domains["obj"].blocks_in_use
        print(after - before >= 10_000)
        """)
    r = py("-c", code, env=_env(RUSTMALLOC="1"))
    assert (r.returncode, r.stdout, r.stderr) == (0, "True\n", "")


@pytest.mark.parametrize("check, rustmalloc, expected", [
    ("OFF", None, "() 0"), ("False", None, "() 0"), ("No", None, "() 0"),
    ("Warn", None, f"{ALL} 2"), ("YES", None, f"{ALL} 1"), ("abort", "raw", "('raw',) 1"),
    ("false", "1", f"{ALL} 0"), ("no", "mem,obj", "('mem', 'obj') 0"),
    ("warn", "0", "() 0"), ("1", "off", "() 0"),
])
def test_check_variable_words_any_case(check, rustmalloc, expected):
    # RUSTMALLOC_CHECK=OFF installed all domains; =FALSE printed an error blaming RUSTMALLOC;
    # RUSTMALLOC=0 with RUSTMALLOC_CHECK set installed anyway.
    env = _env(RUSTMALLOC_CHECK=check) if rustmalloc is None else _env(RUSTMALLOC_CHECK=check,
                                                                        RUSTMALLOC=rustmalloc)
    r = py("-c", "import rustmalloc; print(rustmalloc.installed(), "
                 "rustmalloc._rustmalloc._check_mode_in_force())", env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, expected + "\n", "")


def test_invalid_check_variable_warns_once_naming_it():
    r = py("-c", "import rustmalloc; print(rustmalloc.installed())", env=_env(RUSTMALLOC_CHECK="often"))
    assert (r.returncode, r.stdout) == (0, "()\n")
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rustmalloc: ignoring RUSTMALLOC_CHECK='often'"), r.stderr


# ---- invalid values and failures: one line on stderr, default allocators, no traceback ------


@pytest.mark.parametrize("value", ["bogus", "mem", "obj", "raw,mem", "raw,raw", "2", "raw;obj", "mem,obj,"])
def test_invalid_value_warns_once(value):
    r = py("-c", "import rustmalloc; print(rustmalloc.installed())", env=_env(RUSTMALLOC=value))
    assert r.returncode == 0
    assert r.stdout == "()\n"
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"rustmalloc: ignoring RUSTMALLOC={value!r}: expected 1")
    assert "default allocators" in lines[0]


def test_failed_install_warns_once(tmp_path):
    # Simulate install() failing (as it does when another allocator hook is in place): the hook
    # prints one line and the program runs on the default allocators.
    site_dir = _site_dir()
    code = textwrap.dedent(f"""\
        import sys, types
        sys.path.append({site_dir!r})
        import importlib.util
        real = importlib.util.find_spec("rustmalloc")
        fake = types.ModuleType("rustmalloc")
        fake.__path__ = list(real.submodule_search_locations)
        def install(domains):
            raise RuntimeError("another allocator hook is installed")
        fake.install = install
        sys.modules["rustmalloc"] = fake
        import rustmalloc._startup as s
        print(s.outcome)
        """)
    r = py("-S", "-c", code, env=_env(RUSTMALLOC="1"))
    assert (r.returncode, r.stdout) == (0, "failed\n")
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("rustmalloc: RUSTMALLOC='1': not installed (RuntimeError: another allocator hook")
    assert "Traceback" not in r.stderr


# ---- idempotence ------------------------------------------------------------------------------


def test_pth_processed_again_is_harmless():
    # A 3.11 venv processes its .pth files twice; process ours again explicitly.
    code = f"import site; site.addsitedir({_site_dir()!r}); site.addsitedir({_site_dir()!r}); " + SHOW
    r = py("-c", code, env=_env(RUSTMALLOC="1", RUSTMALLOC_STATS="1"))
    assert r.returncode == 0
    assert r.stdout == f"{ALL} True\n"
    # The report at exit is registered once.
    assert r.stderr.count("rustmalloc statistics at exit") == 1, r.stderr


# ---- tracemalloc already tracing at startup ---------------------------------------------------

TRACE = "import tracemalloc; print(tracemalloc.is_tracing(), tracemalloc.get_traceback_limit())"


@pytest.mark.parametrize("flags, extra, expected", [
    (["-X", "tracemalloc=7"], {}, "True 7"),
    ([], {"PYTHONTRACEMALLOC": "5"}, "True 5"),
    (["-I", "-X", "tracemalloc=3"], {}, "True 3"),
])
def test_tracemalloc_at_startup_output_unchanged(flags, extra, expected):
    code = TRACE + "\nx = [str(i) for i in range(1000)]; print(tracemalloc.get_traced_memory()[0] > 0)"
    without = py(*flags, "-c", code, env=_env(**extra))
    with_rm = py(*flags, "-c", code + "\nimport rustmalloc; print(rustmalloc.installed())",
                 env=_env(RUSTMALLOC="1", **extra))
    assert (without.returncode, without.stdout, without.stderr) == (0, f"{expected}\nTrue\n", "")
    assert (with_rm.returncode, with_rm.stdout, with_rm.stderr) == (0, f"{expected}\nTrue\n{ALL}\n", "")


# ---- statistics at exit (what `run --stats` / `--stats-json` use) ------------------------------


def test_stats_variables_report_at_exit_and_are_not_inherited(tmp_path):
    out = tmp_path / "snap.json"
    code = textwrap.dedent("""\
        import os, subprocess, sys
        print(sorted(k for k in os.environ if k.startswith("RUSTMALLOC")))
        subprocess.run([sys.executable, "-c", "print('child')"], check=True)
        """)
    r = py("-c", code, env=_env(RUSTMALLOC="1", RUSTMALLOC_STATS="1", RUSTMALLOC_STATS_JSON=str(out)))
    assert r.returncode == 0
    assert r.stdout == "['RUSTMALLOC']\nchild\n"
    assert r.stderr.count("rustmalloc statistics at exit") == 1, r.stderr
    snap = json.loads(out.read_text())
    assert snap["installed"] == ["raw", "mem", "obj"]
    assert snap["domains"]["obj"]["blocks_in_use"] > 0


def test_fork_child_does_not_report():
    code = textwrap.dedent("""\
        import os, sys
        pid = os.fork()
        if pid == 0:
            sys.exit(0)          # runs atexit handlers in the child
        os.waitpid(pid, 0)
        """)
    r = py("-c", code, env=_env(RUSTMALLOC="1", RUSTMALLOC_STATS="1"))
    assert r.returncode == 0
    assert r.stderr.count("rustmalloc statistics at exit") == 1, r.stderr


# ---- child processes inherit the variable -----------------------------------------------------

MP = textwrap.dedent("""\
    import multiprocessing as mp, os, sys

    def probe(_):
        import rustmalloc
        return rustmalloc.installed(), "rustmalloc._startup" in sys.modules, os.getpid()

    if __name__ == "__main__":
        ctx = mp.get_context(sys.argv[1])
        with ctx.Pool(2) as pool:
            results = pool.map(probe, range(2))
        print(all(r[:2] == (("raw", "mem", "obj"), True) for r in results),
              all(r[2] != os.getpid() for r in results))
    """)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_multiprocessing_child_has_rustmalloc(tmp_path, method):
    script = tmp_path / "mp_probe.py"
    script.write_text(MP)
    r = py(str(script), method, env=_env(RUSTMALLOC="1"))
    assert (r.returncode, r.stdout, r.stderr) == (0, "True True\n", "")


def test_subprocess_with_isolated_flag_inherits():
    code = (f"import subprocess, sys; "
            f"subprocess.run([sys.executable, '-I', '-c', {SHOW!r}], check=True)")
    r = py("-c", code, env=_env(RUSTMALLOC="raw"))
    assert (r.returncode, r.stdout, r.stderr) == (0, "('raw',) True\n", "")
