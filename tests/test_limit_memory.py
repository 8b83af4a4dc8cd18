"""The pytest plugin's memory tools: @pytest.mark.limit_memory and the rustmalloc_stats fixture.

They install rustmalloc, so each pytester run is a subprocess (runpytest_subprocess)."""

import pytest

pytest_plugins = ["pytester"]

TESTS = '''
import pytest

@pytest.mark.limit_memory("1 MB")
def test_small_enough():
    x = [0] * 1000            # 8 KB

@pytest.mark.limit_memory("1 MB")
def test_too_big():
    x = bytearray(5_000_000)  # 5 MB, freed before the test ends: the *peak* counts
    del x

@pytest.mark.limit_memory("64 MiB")
def test_big_but_allowed():
    x = [str(i) for i in range(200_000)]

def test_fixture(rustmalloc_stats):
    keep = [bytes(1000) for _ in range(1000)]
    assert rustmalloc_stats.allocated_bytes >= 1_000_000
    assert rustmalloc_stats.peak_bytes >= 1_000_000
'''


def test_limit_memory_fails_and_passes(pytester: pytest.Pytester):
    pytester.makepyfile(test_mem=TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*test_too_big allocated a peak of *bytes (4.8 MiB), over its limit_memory of 1,000,000 bytes*"])


def test_limit_memory_failure_is_a_plain_failure_under_warnings_as_errors(pytester: pytest.Pytester):
    # Raised in the hook wrapper's teardown, the failure also came out as a pluggy warning: one
    # per test in the summary, and under -W error a warning traceback instead of the failure.
    pytester.makepyfile(test_mem=TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*test_too_big allocated a peak of *over its limit_memory*"])
    result.stdout.no_fnmatch_line("*PluggyTeardownRaisedWarning*")


def test_malformed_limit_is_a_usage_error(pytester: pytest.Pytester):
    pytester.makepyfile(test_bad='''
import pytest

@pytest.mark.limit_memory("24 parsecs")
def test_bad():
    pass
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret != 0
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*limit_memory*cannot read *24 parsecs* as a size*"])


def test_marker_is_registered(pytester: pytest.Pytester):
    result = pytester.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["*limit_memory(limit)*"])


def test_stats_plot(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "stats.png"
    proc = subprocess.run([sys.executable, "-m", "rustmalloc", "stats", "--plot", str(out)],
                          capture_output=True, text=True, timeout=120)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert proc.returncode == 2 and "pip install" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
