"""RAW from plain native threads (no Python thread state, no GIL, tight loops).

The extension's native stress functions (src/stress.rs, ``rustmalloc._rustmalloc._stress_*``)
release the GIL and hammer PyMem_RawMalloc/Calloc/Realloc/Free from 8 native threads with blocks
handed between threads (cross-thread frees and reallocs), replace threads as they exit while their
blocks live on elsewhere, and start thousands of short-lived threads whose TLS destructors free and
allocate RAW blocks before and after the allocator's own thread-exit handling (a key created after
install() has its destructor run after rustmalloc's). Every block's contents are verified.
"""

from helpers import run_python

LOAD = """
import rustmalloc
from rustmalloc import _rustmalloc as ext

def expect_clean(result, what):
    ops, errors, first = result
    check(errors == 0, "%s: %d errors, first: %s" % (what, errors, first))
    return ops
"""


def test_native_threads_hammer_raw_with_cross_thread_frees():
    run_python(LOAD + """
rustmalloc.install()
gc.collect()
b0 = dstat("raw")
for rnd in range(2):
    expect_clean(ext._stress_raw(threads=8, iters=30000, seed=rnd + 1), "stress_raw")
b1 = dstat("raw")
check(b1 == b0, "raw blocks_in_use %d before, %d after (every block was freed)" % (b0, b1))
# and again while a Python thread churns objects and takes snapshots at the same time
import threading
res = []
t = threading.Thread(target=lambda: res.append(ext._stress_raw(threads=6, iters=20000, seed=7)))
t.start()
while t.is_alive():
    python_churn(500)
    rm_stats()
t.join()
expect_clean(res[0], "stress_raw beside Python threads")
print("ok")
""", timeout=120)


def test_native_threads_exit_while_their_blocks_live_on():
    run_python(LOAD + """
rustmalloc.install()
gc.collect()
b0 = dstat("raw")
heaps0 = rm_stats()["raw_heaps"]["created"]
# 6 slots, every thread exits after 500 iterations and is replaced: ~240 threads in all
ops = expect_clean(ext._stress_raw(threads=6, iters=20000, lifetime=500, seed=11), "stress_raw with exits")
check(ops == 6 * 20000, "ran %d iterations" % ops)
b1 = dstat("raw")
heaps1 = rm_stats()["raw_heaps"]["created"]
check(b1 == b0, "raw blocks_in_use %d before, %d after" % (b0, b1))
# at most 6 workers (and the coordinator) alive at once: heaps are adopted, not multiplied
check(heaps1 - heaps0 <= 16, "%d RAW heaps created for ~240 threads" % (heaps1 - heaps0))
print("ok")
""", timeout=120)


def test_native_short_lived_threads_with_allocating_tls_destructors():
    proc = run_python(LOAD + """
check(ext._stress_make_tls_key())       # its destructor runs before rustmalloc's
rustmalloc.install()
check(ext._stress_make_tls_key())       # ... and this one's after it
BATCH = 32
gc.collect()
b0 = dstat("raw")
expect_clean(ext._stress_thread_churn(total=1500, batch=BATCH, seed=1), "thread_churn")
rss1 = vm_kib("VmRSS")
b1 = dstat("raw")
expect_clean(ext._stress_thread_churn(total=1500, batch=BATCH, seed=2), "thread_churn")
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
""", timeout=120)
    print(proc.stdout)


def test_native_stress_passes_on_the_default_allocators_too():
    # The harness itself is sound: against pymalloc/libc (no install) it finds nothing either.
    run_python(LOAD + """
expect_clean(ext._stress_raw(threads=4, iters=5000, lifetime=700), "stress_raw without rustmalloc")
expect_clean(ext._stress_thread_churn(total=200, batch=16), "thread_churn without rustmalloc")
print("ok")
""", timeout=120)


def test_a_thread_with_the_smallest_stack_gets_a_heap():
    # A native thread with a PTHREAD_STACK_MIN (16 KiB) stack whose first call is RAW, and no
    # heap of an exited thread to adopt: its heap is made. Made through the stack (the 18 KB
    # struct built there and copied), that crashed with SIGSEGV; glibc's malloc (the control,
    # without install) serves such a thread.
    for install in (False, True):
        proc = run_python("""
import sys
import rustmalloc
if sys.argv[1] == "1":
    rustmalloc.install()
libc = ctypes.CDLL(None)
stack_min = 16384
attr = ctypes.create_string_buffer(64)       # pthread_attr_t (56 bytes on x86_64 and aarch64)
check(libc.pthread_attr_init(attr) == 0)
check(libc.pthread_attr_setstacksize(attr, ctypes.c_size_t(stack_min)) == 0)
raw_malloc = ctypes.cast(ctypes.pythonapi.PyMem_RawMalloc, c_void_p)
for _ in range(3):
    tid, result = ctypes.c_ulong(), c_void_p()
    # The thread's start routine is PyMem_RawMalloc itself, its argument the size.
    check(libc.pthread_create(ctypes.byref(tid), attr, raw_malloc, c_void_p(64)) == 0)
    check(libc.pthread_join(tid, ctypes.byref(result)) == 0)
    check(result.value, "no block")
    write(result.value, b"x" * 64)
    RAW_NOGIL.free(result.value)
if sys.argv[1] == "1":
    check(rustmalloc.stats().raw_heaps_created >= 2, rustmalloc.stats())
print("ok")
""", argv=[str(int(install))])
        assert proc.stdout.strip().endswith("ok")
