"""tracemalloc and rustmalloc: started after install(), or already tracing when install() is called."""

import pytest

from helpers import run_python

TRACE_WORK = """
def traced_work():
    keep = [("x%d" % i) * 20 for i in range(20000)]
    blob = json.dumps([{"a": i} for i in range(5000)])
    return keep, blob

def check_tracing_works():
    keep, blob = traced_work()
    cur, peak = tracemalloc.get_traced_memory()
    check(cur > 0 and peak >= cur, (cur, peak))
    snap = tracemalloc.take_snapshot()
    stats = snap.statistics("lineno")
    check(stats, "no traces in the snapshot")
    mine = [s for s in stats if s.traceback[0].filename == "<string>"]
    check(mine, "no trace from this script")
    check(sum(s.size for s in mine) >= 20000 * 20, sum(s.size for s in mine))
    # frees of traced blocks
    del keep, blob
    gc.collect()
    # the traceback of an object
    obj = ["y" * 100 for _ in range(10)]
    tb = tracemalloc.get_object_traceback(obj)
    check(tb is not None and tb[0].filename == "<string>", tb)
"""


def test_tracemalloc_started_after_install():
    run_python("""
import tracemalloc
import rustmalloc
rustmalloc.install()
""" + TRACE_WORK + """
tracemalloc.start(10)
check(tracemalloc.get_traceback_limit() == 10)
check_tracing_works()
# RAW through tracemalloc, with and without the GIL
for D in (DOMAINS["raw"], RAW_NOGIL, DOMAINS["mem"], DOMAINS["obj"]):
    ps = [D.malloc(n) for n in (0, 10, 600, 70000, 2 << 20)]
    ps = [D.realloc(p, 1000) for p in ps]
    for p in ps:
        D.free(p)
tracemalloc.stop()
check(not tracemalloc.is_tracing())
check(python_churn() > 0)
# and again
tracemalloc.start()
check_tracing_works()
tracemalloc.clear_traces()
tracemalloc.stop()
check(python_churn() > 0)
print("ok")
""", expect_empty_stderr=True)


@pytest.mark.parametrize("stop_before_exit", [False, True])
def test_install_while_tracing_in_code(stop_before_exit):
    run_python("""
import tracemalloc
tracemalloc.start(5)
import rustmalloc
pre = [str(i) * 10 for i in range(10000)]     # traced blocks from before install
rustmalloc.install()
check(tracemalloc.is_tracing(), "install() left tracemalloc stopped")
check(tracemalloc.get_traceback_limit() == 5, tracemalloc.get_traceback_limit())
check(rustmalloc.installed() == ("raw", "mem", "obj"))
""" + TRACE_WORK + """
check_tracing_works()
del pre
gc.collect()
check(python_churn() > 0)
if %r:
    tracemalloc.stop()
    check(python_churn() > 0)
print("ok")
# exiting runs tracemalloc.stop() (Py_FinalizeEx) when still tracing
""" % stop_before_exit, expect_empty_stderr=True)


def test_install_while_tracing_from_command_line():
    run_python("""
import tracemalloc
check(tracemalloc.is_tracing() and tracemalloc.get_traceback_limit() == 7)
import rustmalloc
rustmalloc.install()
check(tracemalloc.is_tracing(), "install() left tracemalloc stopped")
check(tracemalloc.get_traceback_limit() == 7, tracemalloc.get_traceback_limit())
""" + TRACE_WORK + """
check_tracing_works()
check(python_churn() > 0)
print("ok")
""", args=["-X", "tracemalloc=7"], expect_empty_stderr=True)


def test_install_in_steps_while_tracing():
    run_python("""
import tracemalloc
tracemalloc.start(3)
import rustmalloc
rustmalloc.install(("raw",))
check(tracemalloc.is_tracing() and tracemalloc.get_traceback_limit() == 3)
check(python_churn() > 0)
rustmalloc.install(("mem", "obj"))
check(tracemalloc.is_tracing() and tracemalloc.get_traceback_limit() == 3)
check(rustmalloc.installed() == ("raw", "mem", "obj"))
""" + TRACE_WORK + """
check_tracing_works()
print("ok")
""", expect_empty_stderr=True)

