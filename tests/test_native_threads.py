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
