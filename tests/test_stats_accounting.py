"""stats() accounting: blocks_in_use / bytes_in_use move by exactly what a test allocates.

RAW is exact: in a quiet single-threaded process nothing else calls PyMem_RawMalloc between two
snapshots (MEM/OBJ traffic of the interpreter no longer reaches RAW once rustmalloc serves MEM/OBJ).
MEM and OBJ see the interpreter's own traffic (ints created for the addresses ctypes returns, frames,
the snapshot objects, the interpreter's free lists), so those are checked with a small tolerance after
a gc.collect() (which also empties the free lists).
"""

import pytest

from helpers import run_python


def test_raw_accounting_exact_per_size_class():
    run_python("""
import rustmalloc
rustmalloc.install()
R = DOMAINS["raw"]
N = 1000

def raw():
    d = rustmalloc.stats().to_dict()["domains"]["raw"]
    return d["blocks_in_use"], d["bytes_in_use"]

arr = (ctypes.c_void_p * N)()
raw(); raw()      # warm-up: the first snapshot may import modules while it is taken
for size, cls in [(1, 16), (15, 16), (16, 16), (17, 32), (100, 112), (255, 256), (500, 512),
                  (511, 512), (512, 512)]:
    for api in ("malloc", "calloc"):
        gc.collect()
        b0, y0 = raw()
        if api == "malloc":
            for i in range(N):
                arr[i] = R.malloc(size)
        else:
            for i in range(N):
                arr[i] = R.calloc(1, size)
        b1, y1 = raw()
        check(b1 - b0 == N, "%s(%d) x %d: blocks_in_use moved by %d" % (api, size, N, b1 - b0))
        check(y1 - y0 == N * cls,
              "%s(%d) x %d: bytes_in_use moved by %d, expected %d (size class %d)"
              % (api, size, N, y1 - y0, N * cls, cls))
        for i in range(N):
            R.free(arr[i])
        b2, y2 = raw()
        check((b2, y2) == (b0, y0), "after freeing %s(%d) blocks: %r != %r" % (api, size, (b2, y2), (b0, y0)))

# realloc within the small classes: blocks unchanged, bytes follow the new class
b0, y0 = raw()
for i in range(N):
    arr[i] = R.malloc(100)
for i in range(N):
    arr[i] = R.realloc(arr[i], 200)
b1, y1 = raw()
check(b1 - b0 == N and y1 - y0 == N * 208, (b1 - b0, y1 - y0))
for i in range(N):
    arr[i] = R.realloc(arr[i], 20)
b1, y1 = raw()
check(b1 - b0 == N and y1 - y0 == N * 32, (b1 - b0, y1 - y0))
for i in range(N):
    R.free(arr[i])
check(raw() == (b0, y0))

# large blocks: one block each, at least the request, less than twice it
for size in (4097, 100 * 1024, 1 << 20, 10 << 20):
    b0, y0 = raw()
    p = R.malloc(size)
    b1, y1 = raw()
    check(b1 - b0 == 1, (size, b1 - b0))
    check(size <= y1 - y0 < 2 * size, "malloc(%d): bytes_in_use moved by %d" % (size, y1 - y0))
    R.free(p)
    check(raw() == (b0, y0), size)
print("ok")
""")


@pytest.mark.parametrize("domain", ["mem", "obj"])
def test_mem_obj_accounting_with_tolerance(domain):
    run_python("""
import rustmalloc
rustmalloc.install()
DOM = %r
D = DOMAINS[DOM]
N = 2000
TOL = 40   # blocks of interpreter traffic allowed between two snapshots

def cur():
    # a full collection also empties the tuple/float/list/dict free lists, which hold OBJ/MEM blocks
    # (stats() itself leaves tuples there)
    gc.collect()
    d = rustmalloc.stats().to_dict()["domains"][DOM]
    return d["blocks_in_use"], d["bytes_in_use"]

arr = (ctypes.c_void_p * N)()
cur(); cur()      # warm-up: the first snapshot may import modules while it is taken
for size, cls in [(16, 16), (100, 112), (500, 512)]:
    gc.collect()
    b0, y0 = cur()
    for i in range(N):
        arr[i] = D.malloc(size)
    b1, y1 = cur()
    check(abs((b1 - b0) - N) <= TOL, "%%s malloc(%%d) x %%d: blocks moved by %%d" %% (DOM, size, N, b1 - b0))
    check(abs((y1 - y0) - N * cls) <= TOL * 1024,
          "%%s malloc(%%d) x %%d: bytes moved by %%d, expected about %%d" %% (DOM, size, N, y1 - y0, N * cls))
    for i in range(N):
        D.free(arr[i])
    b2, y2 = cur()
    check(abs(b2 - b0) <= TOL and abs(y2 - y0) <= TOL * 1024, ((b0, y0), (b2, y2)))
print("ok")
""" % domain, prelude=True)
