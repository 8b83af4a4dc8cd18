"""RAW from plain C threads (no Python thread state, no GIL, tight loops).

native_stress.c is compiled with the system C compiler and loaded with ctypes.  It hammers
PyMem_RawMalloc/Calloc/Realloc/Free from 8 pthreads with blocks handed between threads, and starts
thousands of short-lived pthreads whose TLS destructors free and allocate RAW blocks before and after
the allocator's own thread-exit handling (a destructor registered after install() runs after it).
"""

import os
import shutil
import subprocess

import pytest

from helpers import run_python

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def native_lib(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler (cc/gcc/clang) on PATH to build native_stress.c")
    out = str(tmp_path_factory.mktemp("native") / "native_stress.so")
    proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-pthread", "-o", out,
                           os.path.join(HERE, "native_stress.c")], capture_output=True, text=True)
    assert proc.returncode == 0, "building native_stress.c failed:\n" + proc.stderr
    return out


LOAD = """
import rustmalloc
lib = ctypes.CDLL(sys.argv[1])          # CDLL: the GIL is released while the C code runs
lib.rm_first_error.restype = ctypes.c_char_p
lib.rm_stress.restype = ctypes.c_long
lib.rm_stress.argtypes = [ctypes.c_int, ctypes.c_long]
lib.rm_thread_churn.restype = ctypes.c_long
lib.rm_thread_churn.argtypes = [ctypes.c_int, ctypes.c_int]
"""


def test_native_threads_hammer_raw_with_cross_thread_frees(native_lib):
    run_python(LOAD + """
rustmalloc.install()
rm_stats()       # warm-up: the first snapshot may import modules
gc.collect()
b0 = dstat("raw")
for rnd in range(2):
    n = lib.rm_stress(8, 30000)
    check(n == 0, "rm_stress: %d errors, first: %s" % (n, lib.rm_first_error().decode()))
b1 = dstat("raw")
check(b1 == b0, "raw blocks_in_use %d before, %d after (every block was freed)" % (b0, b1))
# and again while Python threads churn objects and take snapshots at the same time
import threading
res = []
t = threading.Thread(target=lambda: res.append(lib.rm_stress(6, 20000)))
t.start()
while t.is_alive():
    python_churn(500)
    rm_stats()
t.join()
check(res == [0], "rm_stress: %r errors, first: %s" % (res, lib.rm_first_error().decode()))
print("ok")
""", argv=[native_lib], timeout=120)


def test_native_short_lived_threads_with_allocating_tls_destructors(native_lib):
    proc = run_python(LOAD + """
check(lib.rm_make_early_key() == 1)
rustmalloc.install()
check(lib.rm_make_late_key() == 1)
BATCH = 32
rm_stats()       # warm-up: the first snapshot may import modules
gc.collect()
b0 = dstat("raw")
n = lib.rm_thread_churn(1500, BATCH)
check(n == 0, "rm_thread_churn: %d errors, first: %s" % (n, lib.rm_first_error().decode()))
rss1 = vm_kib("VmRSS")
b1 = dstat("raw")
n = lib.rm_thread_churn(1500, BATCH)
check(n == 0, "rm_thread_churn: %d errors, first: %s" % (n, lib.rm_first_error().decode()))
rss2 = vm_kib("VmRSS")
b2 = dstat("raw")
heaps = rm_stats()["raw_heaps"]
print("blocks", b0, b1, b2, "rss", rss1, rss2, "heaps", heaps)
check(b1 == b0 and b2 == b0, "raw blocks_in_use %d -> %d -> %d: blocks freed at thread exit went missing"
      % (b0, b1, b2))
# pthread_join() returns after the thread's TLS destructors ran, so at most BATCH (+ main + Python's
# own) threads hold heaps at once
check(heaps["created"] <= BATCH + 8, "raw_heaps.created = %d after 3000 native threads" % heaps["created"])
check(rss2 - rss1 < 16 * 1024, "VmRSS grew by %d KiB over the second 1500 native threads" % (rss2 - rss1))
check(python_churn() > 0)
""", argv=[native_lib], timeout=120)
    print(proc.stdout)


def test_fork_while_native_threads_are_inside_raw_calls(native_lib):
    """Native threads spend most of their time inside PyMem_Raw* while the main thread forks."""
    run_python(LOAD + """
import os, signal, threading, time, traceback
rustmalloc.install()
from rustmalloc._rustmalloc import owns
lib.rm_request_stop.restype = None
R = RAW_NOGIL
res = []
bg = threading.Thread(target=lambda: res.append(lib.rm_stress(3, 10**9)))
bg.start()

def child():
    try:
        blocks = []
        for i in range(500):
            n = (i * 97) % 8000 + 1
            p = R.malloc(n)
            check(p is not None and owns(p))
            write(p, tagged(i, n))
            blocks.append((p, n, i))
        for j, (p, n, i) in enumerate(blocks):
            check(read(p, n) == tagged(i, n), "child block corrupted")
            if j % 3 == 0:
                p = R.realloc(p, n + 3000)
                check(p is not None and read(p, n) == tagged(i, n))
            R.free(p)
        th = threading.Thread(target=lambda: [R.free(R.malloc(k * 7)) for k in range(1, 500)])
        th.start(); th.join()
        check(python_churn(1000) > 0)
        rm_stats()
    except BaseException:
        os.write(2, ("child failed:\\n" + traceback.format_exc()).encode())
        os._exit(1)
    os._exit(0)

time.sleep(0.05)
results = []
for i in range(20):
    time.sleep(0.005)
    pid = os.fork()
    if pid == 0:
        child()
    deadline = time.monotonic() + 20
    while True:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid:
            results.append(os.waitstatus_to_exitcode(status))
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            results.append("HUNG")
            break
        time.sleep(0.005)
    if results[-1] == "HUNG":
        break
lib.rm_request_stop()
bg.join()
check("HUNG" not in results, "a fork child deadlocked: %r" % results)
check(all(r == 0 for r in results), "fork children exited badly (negative = signal): %r" % results)
check(res == [0], "rm_stress in the parent: %r errors, first: %s" % (res, lib.rm_first_error().decode()))
print("ok", results)
""", argv=[native_lib], timeout=150)


@pytest.mark.parametrize("run", range(4))
def test_exit_while_native_threads_allocate(native_lib, run):
    """C threads keep calling PyMem_Raw* through Py_FinalizeEx and libc's exit(): status 0, no output."""
    proc = run_python(LOAD + """
import threading, time
rustmalloc.install()
started = threading.Event()
def go():
    started.set()
    lib.rm_stress(3, 10**9)          # never returns: the process exits around it
threading.Thread(target=go, daemon=True).start()
started.wait()
time.sleep(0.2)
junk = [{"i": i, "s": str(i) * 10} for i in range(100000)]   # freed during finalization
print("exiting")
""", argv=[native_lib], expect_empty_stderr=True, timeout=60)
    assert "exiting" in proc.stdout
