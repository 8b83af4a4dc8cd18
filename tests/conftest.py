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
