import os
import subprocess
import sys

import pytest

# Make ``import helpers`` work whatever pytest's import mode / rootdir is.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session", autouse=True)
def _rustmalloc_is_installed():
    """Fail fast with one clear message if the extension is not built/installed."""
    proc = subprocess.run([sys.executable, "-c", "import rustmalloc, rustmalloc._rustmalloc"],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.fail("rustmalloc is not importable in a fresh interpreter (run `pip install .` in the "
                    "project root first):\n" + proc.stderr, pytrace=False)


# Under valgrind (scripts/memcheck.py) every interpreter runs 20 to 50 times slower: the timeouts
# the tests give their subprocesses are multiplied by RUSTMALLOC_TEST_TIMEOUT_SCALE (subprocess.run
# waits through Popen.communicate, as do the tests that wait themselves).
_TIMEOUT_SCALE = float(os.environ.get("RUSTMALLOC_TEST_TIMEOUT_SCALE", "1"))
if _TIMEOUT_SCALE != 1:
    _communicate = subprocess.Popen.communicate

    def _communicate_scaled(self, input=None, timeout=None):
        return _communicate(self, input, None if timeout is None else timeout * _TIMEOUT_SCALE)

    subprocess.Popen.communicate = _communicate_scaled
