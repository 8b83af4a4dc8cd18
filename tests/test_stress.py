"""The short version of the long concurrent stress (scripts/stress.py) that CI runs.

For 30 seconds: native RAW threads with cross-thread frees and reallocs, threads exiting and
being replaced, short-lived threads with allocating TLS destructors, while the main thread churns
Python objects, reads rustmalloc.stats() and forks (each child allocates and exits; the parent waits
with a timeout). Every block's contents are verified. `python scripts/stress.py --minutes N` is the
long version.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "stress.py")
SECONDS = float(os.environ.get("RUSTMALLOC_STRESS_SECONDS", "30"))


def test_short_stress_run_finds_nothing():
    cmd = [sys.executable, "-X", "faulthandler", SCRIPT, "--minutes", str(SECONDS / 60), "--seed", "7"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS + 240,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail("stress.py hung (%s s):\n%s\n%s" % (SECONDS + 240, exc.stdout, exc.stderr), pytrace=False)
    print(proc.stdout)
    assert proc.returncode == 0, "stress.py exit status %d\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
        proc.returncode, proc.stdout, proc.stderr[-12000:])
    assert "stress: ok" in proc.stdout
    assert '"forks": 0' not in proc.stdout, "the run never forked"
