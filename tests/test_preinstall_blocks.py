"""Blocks allocated before install() are freed / reallocated after it: contents kept, no crash, not owned."""

from helpers import run_python


def test_preinstall_blocks_freed_and_reallocated_after_install():
    run_python("""
from rustmalloc._rustmalloc import owns
import rustmalloc
SIZES = [1, 8, 16, 100, 300, 512, 513, 1000, 4096, 100 * 1024, 1 << 20, 3 << 20]
before = []
seed = 0
for dom in ("raw", "mem", "obj"):
    D = DOMAINS[dom]
    for rep in range(3):
        for n in SIZES:
            seed += 1
            p = D.malloc(n) if rep != 1 else D.calloc(1, n)
            check(p is not None)
            data = pattern(seed, n)
            write(p, data)
            before.append((dom, p, data))
# Python objects created before install, dropped after it
old_objs = {i: [str(i) * (i % 40), bytes(i % 700), float(i)] for i in range(30000)}
old_big = [bytearray(100000) for _ in range(20)]
old_cycle = []
for i in range(2000):
    a = {"i": i}; b = [a]; a["b"] = b
    old_cycle.append(a)

rustmalloc.install()
check(rustmalloc.installed() == ("raw", "mem", "obj"))

for dom, p, data in before:
    check(not owns(p), "owns() is True for a %s block allocated before install" % dom)
    check(read(p, len(data)) == data, "pre-install block changed by install()")

# a third is freed as is, a third reallocated (grow, shrink, cross classes) then freed, a third
# reallocated to 0 / to huge
for i, (dom, p, data) in enumerate(before):
    D = DOMAINS[dom]
    if i % 3 == 0:
        D.free(p)
        continue
    targets = (len(data) * 3 + 5, max(1, len(data) // 4), 700, 20) if i % 3 == 1 else (0, 5 << 20, 64)
    for m in targets:
        q = D.realloc(p, m)
        check(q is not None, "realloc of a pre-install %s block to %d returned NULL" % (dom, m))
        k = min(len(data), m)
        check(read(q, k) == data[:k], "realloc of a pre-install %s block (%d -> %d) lost contents"
              % (dom, len(data), m))
        data = data[:k] + pattern(m, m - k)
        write(q, data)
        p = q
    D.free(p)

# drop the old Python objects
old_objs.clear()
del old_objs, old_big
del old_cycle
gc.collect()

# everything still works and new blocks are ours
for dom in ("raw", "mem", "obj"):
    for n in (1, 100, 600, 5000, 1 << 20):
        p = DOMAINS[dom].malloc(n)
        check(owns(p), (dom, n))
        DOMAINS[dom].free(p)
check(python_churn() > 0)
print("ok")
""")


def test_preinstall_python_objects_survive_partial_installs():
    """Objects made before each of two partial installs are resized and dropped afterwards."""
    run_python("""
import rustmalloc
lists = [[i] * (i % 100) for i in range(20000)]
strs = ["x" * (i % 900) for i in range(20000)]
raw_before = [DOMAINS["raw"].malloc(n) for n in (10, 600, 70000)]
rustmalloc.install(("mem", "obj"))
lists2 = [[i] for i in range(20000)]
for l in lists:
    l.extend(range(50))          # realloc of pymalloc-era item arrays now goes through rustmalloc
for l in lists2:
    l.extend(range(600))
rustmalloc.install(("raw",))
for l in lists:
    del l[10:]
strs = [s + "y" for s in strs]
for l in lists2:
    l.extend(range(100))
for p in raw_before:
    q = DOMAINS["raw"].realloc(p, 100000)
    DOMAINS["raw"].free(q)
del lists, lists2, strs
gc.collect()
check(python_churn() > 0)
check(rustmalloc.installed() == ("raw", "mem", "obj"))
print("ok")
""")
