"""MemoryError under a capped address space (RLIMIT_AS), set before start or after install()."""

import resource

import pytest

from helpers import run_python

GIB = 1 << 30

OOM_CHECKS = r"""
GIB = 1 << 30

def expect_memory_error(fn, what):
    try:
        x = fn()
    except MemoryError:
        return
    del x
    raise AssertionError("%s did not raise MemoryError under RLIMIT_AS" % what)

expect_memory_error(lambda: bytearray(2 * GIB), "bytearray(2 GiB)")
expect_memory_error(lambda: [0] * (300 * 1024 ** 2), "[0] * 300M")
expect_memory_error(lambda: b"x" * (1536 << 20), "bytes of 1.5 GiB")
expect_memory_error(lambda: list(range(200 * 1024 ** 2)), "list(range(200M))")
check(python_churn() > 0)

# through ctypes: every domain returns NULL, and a failed realloc keeps the old block
for name, D in list(DOMAINS.items()) + [("raw-nogil", RAW_NOGIL)]:
    check(D.malloc(2 * GIB) is None, "%s malloc(2 GiB) under the cap" % name)
    check(D.calloc(1, 2 * GIB) is None, "%s calloc(1, 2 GiB) under the cap" % name)
    check(D.calloc(2 << 20, 1024) is None, "%s calloc(2M, 1024) under the cap" % name)
    p = D.malloc(100)
    write(p, pattern(1, 100))
    check(D.realloc(p, 2 * GIB) is None, "%s realloc(p, 2 GiB) under the cap" % name)
    check(read(p, 100) == pattern(1, 100), "failed realloc changed the block")
    q = D.malloc(100 << 20)
    check(q is not None, "%s malloc(100 MiB) failed under a 1 GiB cap" % name)
    ctypes.memset(q, 1, 4096)
    ctypes.memset(q + (100 << 20) - 4096, 1, 4096)
    D.free(q)
    D.free(p)

# Fill the address space with huge blocks, free one (16 MiB of headroom), and fill the headroom with one
# size class after another (cheap: no page is touched), freeing each before the next; then check the huge
# blocks fit again.  Pointers go into preallocated ctypes arrays, and a MemoryError raised by the interpreter
# itself while memory is exhausted (e.g. for the int holding an address) also ends a fill.
SLOTS = (ctypes.c_void_p * 200000)()

def fill(D, size, cap=len(SLOTS)):
    n = 0
    try:
        while n < cap:
            p = D.malloc(size)
            if p is None:
                break
            SLOTS[n] = p
            n += 1
    except MemoryError:
        pass
    return n

def free_all(D, n):
    for i in range(n):
        D.free(SLOTS[i])

HUGE = 16 << 20
R = DOMAINS["raw"]
n1 = fill(R, HUGE)
check(n1 * HUGE > 512 << 20, "only %d blocks of 16 MiB fit under a 1 GiB cap" % n1)
R.free(SLOTS[n1 - 1])
huge = list(SLOTS[:n1 - 1])
results = []
for dom, size in (("obj", 256), ("mem", 4000), ("raw", 100 * 1024), ("obj", 48), ("mem", 700), ("raw", 16)):
    D = DOMAINS[dom]
    n = fill(D, size)
    results.append((dom, size, n))
    free_all(D, n)
    check(n * size >= 1 << 20, "only %d blocks of %d bytes (%s) fit in 16 MiB of headroom" % (n, size, dom))
    # the freed blocks are reusable
    m = fill(D, size, n // 2)
    check(m == n // 2, "%s: %d blocks of %d bytes fitted, then only %d of %d again" % (dom, n, size, m, n // 2))
    free_all(D, m)
for p in huge:
    R.free(p)
del huge
gc.collect()
print("headroom fills", results)
n2 = fill(R, HUGE)
free_all(R, n2)
check(n2 >= n1 - 8 - n1 // 10, "16 MiB blocks: %d fitted at first, only %d after the small blocks were freed"
      % (n1, n2))

# the same from Python: fill with bytes objects until MemoryError, drop them, fill again
chunks = []
try:
    while True:
        chunks.append(bytes(1 << 20))
except MemoryError:
    pass
m1 = len(chunks)
check(m1 > 512, "only %d MiB of bytes objects fit under a 1 GiB cap" % m1)
del chunks
gc.collect()
again = [bytes(1 << 20) for _ in range(m1 // 2)]
del again

# the interpreter still works, including a fresh large allocation
blob = json.dumps([{"i": i, "s": str(i) * 5} for i in range(100000)])
check(len(json.loads(blob)) == 100000)
big = bytearray(64 << 20)
del big
check(python_churn() > 0)
"""


def _cap_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (GIB, GIB))


def test_memoryerror_with_rlimit_set_before_start():
    run_python("""
import resource
check(resource.getrlimit(resource.RLIMIT_AS)[0] == 1 << 30)
import rustmalloc
rustmalloc.install()
""" + OOM_CHECKS + """
print("ok")
""", preexec_fn=_cap_address_space, timeout=120, expect_empty_stderr=True)


def test_memoryerror_with_rlimit_set_after_install():
    run_python("""
import resource
import rustmalloc
rustmalloc.install()
python_churn()
vm = vm_kib("VmSize") * 1024
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), hard))
""" + OOM_CHECKS + """
# lift the cap again: big allocations work again
resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
b = bytes(1200 << 20)      # more than the cap allowed
check(b[-1] == 0 and b[0] == 0)
del b
p = RAW_NOGIL.malloc(2 << 30)
check(p is not None, "RAW malloc(2 GiB) still fails after the cap was lifted")
RAW_NOGIL.free(p)
print("ok")
""", timeout=120, expect_empty_stderr=True)


def _overcommit_mode():
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


@pytest.mark.parametrize("install", [False, True], ids=["pymalloc", "rustmalloc"])
def test_a_request_larger_than_ram_and_swap_raises_memory_error(install):
    """With no RLIMIT_AS, under Linux's default overcommit heuristic (mode 0), the kernel refuses a
    single mapping larger than RAM and swap together; glibc then returns NULL and Python raises
    MemoryError. rustmalloc must too, instead of being granted memory that can never be backed
    (the process is killed when it touches it). ``bytes(n)`` comes from calloc, which touches
    nothing of a fresh mapping, so even a wrongly granted request costs nothing here; every domain
    is also asked through ctypes."""
    if _overcommit_mode() != 0:
        pytest.skip("needs vm.overcommit_memory = 0 (the kernel's default heuristic)")
    run_python(r"""
import rustmalloc
if INSTALL:
    rustmalloc.install()
kib = {}
with open("/proc/meminfo") as f:
    for line in f:
        name, value = line.split(":")
        kib[name] = int(value.split()[0])
n = 2 * (kib["MemTotal"] + kib.get("SwapTotal", 0)) * 1024
try:
    x = bytes(n)
except MemoryError:
    pass
else:
    check(False, "bytes(%d) (twice RAM and swap) was granted" % n)
for name, D in list(DOMAINS.items()) + [("raw-nogil", RAW_NOGIL)]:
    check(D.malloc(n) is None, "%s malloc(%d) was granted" % (name, n))
    check(D.calloc(1, n) is None, "%s calloc(1, %d) was granted" % (name, n))
check(python_churn() > 0)
print("ok")
""".replace("INSTALL", repr(install)))


def test_a_huge_realloc_gives_back_held_memory_before_failing():
    """Under RLIMIT_AS, with freed memory still held for reuse, growing a huge block by realloc
    succeeds where a fresh malloc of the new size would: the realloc, like malloc, gives the held
    memory back to the OS and tries again before it returns NULL."""
    run_python(r"""
import resource
import rustmalloc
rustmalloc.install()
rustmalloc.configure(purge_delay_ms=10**6, idle_purge=False)   # freed memory stays held
mem = DOMAINS["mem"]
blocks = [mem.malloc(1 << 20) for _ in range(300)]            # large blocks, in our segments
check(all(blocks))
for b in blocks:
    mem.free(b)
with open("/proc/self/status") as f:
    vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (150 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
p = mem.malloc(8 << 20)
check(p is not None)
write(p, pattern(3, 4096))
q = mem.realloc(p, 200 << 20)
check(q is not None, "realloc to 200 MiB returned NULL with 300 MiB held for reuse")
check(read(q, 4096) == pattern(3, 4096), "the grown block lost its contents")
mem.free(q)
print("ok")
""")
