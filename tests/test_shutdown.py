"""Interpreter shutdown with rustmalloc installed: exit status 0 and nothing on stderr.

Daemon threads still allocating RAW without the GIL keep calling the allocator during and after
Py_FinalizeEx, so these runs are repeated a few times.
"""

import pytest

from helpers import run_python


def test_plain_exit_after_workload():
    run_python("""
import rustmalloc
rustmalloc.install()
keep = [{"k": str(i), "v": [i] * 20} for i in range(200000)]      # a big live heap at exit
blocks = [DOMAINS[d].malloc(n) for d in ("raw", "mem", "obj") for n in (10, 600, 70000, 3 << 20)]
check(python_churn() > 0)
print("bye")
""", expect_empty_stderr=True)


@pytest.mark.parametrize("domains", ["", '("raw",)', '("mem", "obj")'], ids=["all", "raw", "mem-obj"])
@pytest.mark.parametrize("run", range(3))
def test_exit_with_live_daemon_threads(domains, run):
    proc = run_python("""
import threading, time
import rustmalloc
rustmalloc.install(%s)
R = RAW_NOGIL
started = threading.Barrier(7)

def raw_loop(t):
    rng = random.Random(t)
    live = []
    started.wait()
    while True:
        n = rng.choice([8, 100, 511, 2000, 40000, 1 << 20])
        p = R.malloc(n)
        if p is None:
            continue
        ctypes.memset(p, t, min(n, 256))
        live.append(p)
        if len(live) > 32:
            R.free(live.pop(rng.randrange(len(live))))
        q = R.realloc(live[-1], rng.choice([16, 3000, 200000]))
        if q is not None:
            live[-1] = q

def py_loop(t):
    started.wait()
    while True:
        junk = [{"i": i, "s": str(i) * 10} for i in range(500)]
        json.dumps(junk)
        a = []; a.append(a)

def nondaemon():
    # finishes while the interpreter is shutting down (threading._shutdown joins it)
    started.wait()
    time.sleep(0.2)
    python_churn(5000)

ts = [threading.Thread(target=raw_loop, args=(t,), daemon=True) for t in range(3)]
ts += [threading.Thread(target=py_loop, args=(t,), daemon=True) for t in range(2)]
ts.append(threading.Thread(target=nondaemon))
for t in ts:
    t.start()
started.wait()
time.sleep(0.1)
import atexit
atexit.register(lambda: python_churn(3000))
print("exiting")
""" % domains, expect_empty_stderr=True, timeout=60)
    assert "exiting" in proc.stdout


def test_exit_via_sys_exit_with_tracemalloc_and_daemon_thread():
    run_python("""
import threading, tracemalloc, sys
import rustmalloc
tracemalloc.start(2)
rustmalloc.install()
def raw_loop():
    while True:
        p = RAW_NOGIL.malloc(300)
        RAW_NOGIL.free(p)
threading.Thread(target=raw_loop, daemon=True).start()
check(python_churn() > 0)
sys.exit(0)
""", expect_empty_stderr=True)


def test_exit_with_unfreed_blocks_and_foreign_blocks():
    """Blocks still live at exit, blocks from before install freed during finalization."""
    run_python("""
import rustmalloc
class Holder:
    pass
h = Holder()
h.before = [bytes(i % 900) for i in range(20000)]   # freed during finalization, after install
rustmalloc.install()
h.after = [bytes(i % 900) for i in range(20000)]
h.cycle = h
leak = [DOMAINS["raw"].malloc(i % 5000) for i in range(1000)]
print("bye")
""", expect_empty_stderr=True)
