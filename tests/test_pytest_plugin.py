"""pytest --rustmalloc (rustmalloc.pytest_plugin, registered through the pytest11 entry point).

Each run is a pytest subprocess (runpytest_subprocess): installing is process-wide and final.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

# Records, when pytest imports the initial conftest, whether rustmalloc is already installed.
CONFTEST = """
import rustmalloc
INSTALLED_AT_CONFTEST = rustmalloc.installed()
"""

TESTS = """
import rustmalloc
from conftest import INSTALLED_AT_CONFTEST

def test_installed(request):
    expected = ("raw", "mem", "obj") if request.config.getoption("rustmalloc") else ()
    assert rustmalloc.installed() == expected
    assert INSTALLED_AT_CONFTEST == expected

def test_allocates():
    data = [{"k": str(i)} for i in range(10_000)]
    assert len(data) == 10_000
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for var in ("RUSTMALLOC", "RUSTMALLOC_STATS", "RUSTMALLOC_STATS_JSON", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(var, raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_alloc=TESTS)
    return pytester


def test_option_installs_before_conftest_and_prints_summary(project):
    result = project.runpytest_subprocess("--rustmalloc", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.re_match_lines([r"=+ rustmalloc =+", r"rustmalloc statistics at the end of the session:"])
    result.stdout.fnmatch_lines(["*obj*"])


def test_inert_without_the_option(project):
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("*rustmalloc statistics*")


def test_option_in_help(pytester: pytest.Pytester):
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*rustmalloc memory allocator*", "*--rustmalloc*install rustmalloc*"])


def test_summary_after_failures(project):
    project.makepyfile(test_fail="def test_fail():\n    assert False\n")
    result = project.runpytest_subprocess("--rustmalloc", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*rustmalloc statistics at the end of the session:*"])
