"""Every allocator function of every domain, called through ctypes.pythonapi after install().

Sizes 0..4096 (all of them) and 8 KiB .. 10 MiB: alignment, ownership, no overlap between live blocks,
calloc zeroing (fresh and recycled blocks), calloc overflow, zero-byte requests, realloc keeping contents
across size classes, realloc(NULL, n), realloc(p, 0), absurd sizes.
"""

import importlib.util

import pytest

from helpers import run_python

DOMAIN_NAMES = ["raw", "mem", "obj"]
HAVE_TESTCAPI = importlib.util.find_spec("_testcapi") is not None

SETUP = """
import rustmalloc
rustmalloc.install()
from rustmalloc._rustmalloc import owns
D = DOMAINS[%r]
"""


def run_domain(domain, body, **kw):
    return run_python(SETUP % domain + body, **kw)


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
@pytest.mark.parametrize("api", ["malloc", "calloc"])
def test_all_sizes_aligned_owned_disjoint(domain, api):
    run_domain(domain, "API = %r\n" % api + """
blocks = []
for i, n in enumerate(SMALL_SIZES + BIG_SIZES):
    if API == "malloc":
        p = D.malloc(n)
    else:
        p = D.calloc(1, n) if i % 2 else D.calloc(n, 1)
    check(p is not None, "%s(%d) returned NULL" % (API, n))
    check(p % 16 == 0, "%s(%d) = %#x is not 16-byte aligned" % (API, n, p))
    check(owns(p), "owns(%#x) is False for a %s(%d) block allocated after install" % (p, API, n))
    if API == "calloc":
        check(read(p, n) == bytes(n), "calloc(%d) block not zeroed" % n)
    tag = i % 255 + 1
    ctypes.memset(p, tag, n)
    blocks.append((p, n, tag))
addrs = [p for p, _, _ in blocks]
check(len(set(addrs)) == len(addrs), "duplicate addresses among live blocks")
iv = sorted((p, p + max(n, 1), n) for p, n, _ in blocks)
for (a0, a1, an), (b0, b1, bn) in zip(iv, iv[1:]):
    check(a1 <= b0, "live blocks overlap: [%#x, +%d) and [%#x, +%d)" % (a0, an, b0, bn))
for p, n, tag in blocks:
    check(read(p, n) == bytes([tag]) * n, "contents of the %d-byte block at %#x were overwritten" % (n, p))
for p, n, tag in blocks:
    D.free(p)
# and again after everything was freed (recycled blocks)
again = [D.malloc(n) for n in SMALL_SIZES]
check(all(p is not None and p % 16 == 0 and owns(p) for p in again))
check(len(set(again)) == len(again))
for p in again:
    D.free(p)
D.free(None)
print("ok")
""")


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_calloc_zeroes_recycled_blocks(domain):
    run_domain(domain, """
sizes = SWEEP_SIZES + BIG_SIZES
for rnd in range(3):
    dirty = []
    for n in sizes:
        p = D.malloc(n)
        check(p is not None)
        ctypes.memset(p, 0xA5 ^ rnd, n)
        dirty.append(p)
    for p in dirty:
        D.free(p)
    fresh = []
    for k, n in enumerate(sizes):
        if k % 3 == 0:
            p = D.calloc(1, n)
        elif k % 3 == 1:
            p = D.calloc(n, 1)
        else:
            # nelem * elsize == n where possible
            e = 2 if n % 2 == 0 else 1
            p = D.calloc(n // e, e)
        check(p is not None and p % 16 == 0 and owns(p), n)
        check(read(p, n) == bytes(n), "recycled calloc(%d) block not zeroed (round %d)" % (n, rnd))
        ctypes.memset(p, 0x5A, n)
        fresh.append(p)
    for p in fresh:
        D.free(p)
# products of two factors
for a, b in ((7, 13), (3, 100), (1000, 1000), (16, 4096), (3, 1 << 20), (1 << 20, 5)):
    p = D.calloc(a, b)
    check(p is not None and read(p, a * b) == bytes(a * b), (a, b))
    ctypes.memset(p, 0xFF, a * b)
    D.free(p)
    q = D.calloc(b, a)
    check(q is not None and read(q, a * b) == bytes(a * b), (b, a))
    D.free(q)
print("ok")
""")


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_calloc_overflow_returns_null(domain):
    run_domain(domain, """
M = 2**64
cases = [(2**63, 2), (2, 2**63), (2**32, 2**32), (M - 1, M - 1), (M - 1, 2), (2**31, 2**33),
         (2**62, 4), (3, 2**63 // 3 + 1),
         # these do not overflow size_t and pass the wrappers' checks, but cannot be satisfied
         (2**31, 2**31), (2**62, 1), (1, 2**62), (2**40, 2**20)]
for a, b in cases:
    p = D.calloc(a, b)
    check(p is None, "calloc(%d, %d) returned %#x instead of NULL" % (a, b, p or 0))
# the allocator still works
ps = [D.calloc(10, 10) for _ in range(100)]
check(all(p is not None and read(p, 100) == bytes(100) for p in ps))
for p in ps:
    D.free(p)
check(python_churn() > 0)
print("ok")
""")


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_zero_byte_requests(domain):
    run_domain(domain, """
ps = []
for _ in range(100):
    ps.append(D.malloc(0))
    ps.append(D.calloc(0, 1))
    ps.append(D.calloc(1, 0))
    ps.append(D.calloc(0, 0))
    ps.append(D.realloc(None, 0))
check(all(p is not None for p in ps), "a zero-byte request returned NULL")
check(len(set(ps)) == len(ps), "zero-byte requests returned the same pointer twice")
check(all(p % 16 == 0 for p in ps), "unaligned zero-byte block")
check(all(owns(p) for p in ps), "zero-byte block not owned")
# realloc(p, 0) resizes (returns non-NULL), does not free
r = []
for n in (0, 1, 16, 100, 512, 513, 4096, 100000, 1 << 20):
    p = D.malloc(n)
    ctypes.memset(p, 0x77, n)
    q = D.realloc(p, 0)
    check(q is not None, "realloc(p[%d], 0) returned NULL" % n)
    r.append(q)
check(len(set(r + ps)) == len(r) + len(ps))
# a zero-byte block can grow
for i, p in enumerate(ps[:50]):
    q = D.realloc(p, 200)
    check(q is not None)
    write(q, pattern(i, 200))
    ps[i] = q
for i, q in enumerate(ps[:50]):
    check(read(q, 200) == pattern(i, 200))
for p in ps + r:
    D.free(p)
print("ok")
""")


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_realloc_keeps_contents_across_classes(domain):
    run_domain(domain, """
chain = [1, 15, 16, 17, 100, 511, 512, 513, 1000, 4096, 4097, 8192, 32768, 32769, 33 * 1024, 65537,
         100 * 1024, 1 << 20, 3 << 20, (4 << 20) + 1, 10 << 20, (4 << 20) - 16, 3 << 20, 1 << 20, 100 * 1024,
         65536, 33 * 1024, 32768, 32767, 8192, 4097, 4096, 1000, 513, 512, 511, 100, 17, 16, 15, 1,
         10 << 20, 1, 100, 3 << 20, 16, 32769, 32767, 65535, 65537, 64]
for start in range(3):
    seq = chain[start:] + chain[:start]
    n = seq[0]
    p = D.malloc(n)
    data = pattern(1000 + start, n)
    write(p, data)
    for step, m in enumerate(seq[1:]):
        q = D.realloc(p, m)
        check(q is not None, "realloc(%d -> %d) returned NULL" % (n, m))
        check(q % 16 == 0 and owns(q), (n, m))
        k = min(n, m)
        check(read(q, k) == data[:k], "realloc %d -> %d lost contents" % (n, m))
        data = pattern(step * 7 + start, m)
        write(q, data)
        p, n = q, m
    D.free(p)

# every odd size and class boundary: grow, shrink, grow to large and back
live = []
for s in SWEEP_SIZES:
    p = D.malloc(s)
    data = pattern(s, s)
    write(p, data)
    for m in (2 * s + 7, max(1, s // 3), 70000 if s % 64 == 1 else s + 16, s):
        q = D.realloc(p, m)
        check(q is not None, (s, m))
        k = min(len(data), m)
        check(read(q, k) == data[:k], "realloc of a %d-byte block to %d lost contents" % (len(data), m))
        data = data[:k] + pattern(m, m - k)
        write(q, data)
        p = q
    live.append((p, data))
    if len(live) > 64:
        p, data = live.pop(0)
        check(read(p, len(data)) == data)
        D.free(p)
for p, data in live:
    check(read(p, len(data)) == data)
    D.free(p)

# realloc(NULL, n) is malloc(n)
ps = []
for n in SWEEP_SIZES[::7] + BIG_SIZES:
    p = D.realloc(None, n)
    check(p is not None and p % 16 == 0 and owns(p), n)
    write(p, pattern(n, n))
    ps.append((p, n))
iv = sorted((p, p + n) for p, n in ps)
check(all(a1 <= b0 for (_, a1), (b0, _) in zip(iv, iv[1:])), "realloc(NULL, n) blocks overlap")
for p, n in ps:
    check(read(p, n) == pattern(n, n))
    D.free(p)
print("ok")
""")


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_absurd_sizes_return_null(domain):
    run_domain(domain, """
M = 2**64
absurd = [2**63, M - 1, M - 16, 2**63 - 1, 2**63 - 16, 2**63 - 4096, 2**62, 2**62 + 1, 2**48, 2**47 + 12345]
for n in absurd:
    p = D.malloc(n)
    check(p is None, "malloc(%d) returned %#x instead of NULL" % (n, p or 0))
    p = D.calloc(1, n)
    check(p is None, "calloc(1, %d) returned %#x instead of NULL" % (n, p or 0))
    p = D.realloc(None, n)
    check(p is None, "realloc(NULL, %d) returned %#x instead of NULL" % (n, p or 0))
# a failed realloc leaves the old block valid and unchanged
for size in (16, 700, 100000, 3 << 20):
    p = D.malloc(size)
    data = pattern(size, size)
    write(p, data)
    for n in absurd:
        q = D.realloc(p, n)
        check(q is None, "realloc(p, %d) returned %#x instead of NULL" % (n, q or 0))
        check(read(p, size) == data, "failed realloc changed the old block")
    q = D.realloc(p, size * 2)
    check(q is not None and read(q, size) == data)
    D.free(q)
# the interpreter still works
blob = json.dumps([{"i": i, "s": str(i) * 3} for i in range(20000)])
check(len(json.loads(blob)) == 20000)
check(python_churn() > 0)
big = bytearray(50 << 20)
del big
print("ok")
""")


def test_raw_absurd_sizes_through_cdll():
    """RAW without the GIL (CDLL) with absurd sizes, as the brief asks for 2**63 and 2**64-1."""
    run_python("""
import rustmalloc
rustmalloc.install()
R = RAW_NOGIL
for n in (2**63, 2**64 - 1, 2**63 - 1, 2**62):
    check(R.malloc(n) is None, n)
    check(R.calloc(n, 1) is None, n)
p = R.malloc(64)
check(R.realloc(p, 2**64 - 1) is None)
R.free(p)
check(python_churn() > 0)
print("ok")
""")


@pytest.mark.skipif(not HAVE_TESTCAPI, reason="_testcapi is not available in this CPython build")
def test_cpython_capi_allocator_selftests():
    """CPython's own C-level allocator self-tests, on top of rustmalloc (they wrap the current allocator)."""
    run_python("""
import rustmalloc, _testcapi
rustmalloc.install()
_testcapi.test_pymem_alloc0()
_testcapi.test_pymem_setrawallocators()
_testcapi.test_pymem_setallocators()
_testcapi.test_pyobject_setallocators()
check(rustmalloc.installed() == ("raw", "mem", "obj"))
check(python_churn() > 0)
print("ok")
""")


def test_owns_on_foreign_and_odd_addresses():
    run_python("""
import rustmalloc
rustmalloc.install()
from rustmalloc._rustmalloc import owns
libc_malloc = _NOGIL["malloc"]; libc_malloc.restype = c_void_p; libc_malloc.argtypes = [c_size_t]
libc_free = _NOGIL["free"]; libc_free.restype = None; libc_free.argtypes = [c_void_p]
static = ctypes.c_char_p.in_dll(ctypes.pythonapi, "Py_FileSystemDefaultEncoding")
foreign = [libc_malloc(n) for n in (16, 1000, 1 << 20)]
for addr in [0, 1, 15, 16, 4096, ctypes.addressof(static), 2**47 - 16, 2**63 - 16, 2**64 - 16] + foreign:
    check(owns(addr) is False, "owns(%#x) is not False for memory rustmalloc did not hand out" % addr)
for p in foreign:
    libc_free(p)
# a block of ours is owned; the answer is a bool
for d in ("raw", "mem", "obj"):
    p = DOMAINS[d].malloc(48)
    check(owns(p) is True)
    DOMAINS[d].free(p)
print("ok")
""")
