"""Blocks stay intact while the allocator gives free memory back to the OS around them.

rustmalloc returns free OS pages inside partly used pages (and empty pages) some time after they were
freed, on a later allocation's slow path.  A free list kept inside a page that was given back would be
lost, so these scenarios free most of a large heap (leaving scattered survivors), wait long enough for
a purge pass to be due, allocate again (fresh and recycled blocks, calloc must still give zeros), and
check every survivor and every new block.  Nothing here asserts on memory figures or timing.
"""

import pytest

from helpers import run_python


@pytest.mark.parametrize("domain", ["raw", "mem", "obj"])
def test_survivors_and_recycled_blocks_after_purge(domain):
    run_python("DOMAIN = %r\n" % domain + """
import time
import rustmalloc
rustmalloc.install()
from rustmalloc._rustmalloc import owns
D = DOMAINS[DOMAIN]
rng = random.Random(7)
SIZES = [16, 32, 48, 64, 100, 128, 200, 256, 400, 512, 700, 1024, 2000, 4096, 9000, 30000, 70000]
WEIGHTS = [8, 8, 8, 8, 8, 6, 6, 6, 4, 4, 3, 3, 2, 2, 1, 1, 1]
nextid = 0

def alloc_many(count, calloc_share):
    global nextid
    out = []
    for _ in range(count):
        n = rng.choices(SIZES, WEIGHTS)[0]
        nextid += 1
        if rng.random() < calloc_share:
            p = D.calloc(1, n)
            check(p is not None)
            check(read(p, n) == bytes(n), "calloc(%d) after a purge is not zeroed" % n)
        else:
            p = D.malloc(n)
            check(p is not None)
        check(p % 16 == 0 and owns(p))
        write(p, tagged(nextid, n))
        out.append((p, n, nextid))
    return out

def verify(blocks, what):
    for p, n, i in blocks:
        check(read(p, n) == tagged(i, n), "%s: block %d (%d bytes at %#x) corrupted" % (what, i, n, p))

def disjoint(blocks):
    iv = sorted((p, p + n) for p, n, _ in blocks)
    for (a0, a1), (b0, b1) in zip(iv, iv[1:]):
        check(a1 <= b0, "overlapping live blocks at %#x and %#x" % (a0, b0))

survivors = []
for rnd in range(2):
    blocks = alloc_many(20000, 0.1)
    keep = blocks[rnd::25]                     # scattered survivors in every page
    drop = [b for k, b in enumerate(blocks) if (k - rnd) % 25]
    rng.shuffle(drop)
    for p, n, i in drop:
        D.free(p)
    survivors += keep
    del blocks, drop
    time.sleep(0.35)                           # a purge pass is due on the next slow path
    fresh = alloc_many(8000, 0.5)             # slow paths: new pages, recycled (purged) pages
    verify(survivors, "survivor after purge, round %d" % rnd)
    verify(fresh, "new block after purge, round %d" % rnd)
    disjoint(survivors + fresh)
    for p, n, i in fresh[::2]:
        D.free(p)
    survivors += fresh[1::2]
    time.sleep(0.35)
    again = alloc_many(3000, 0.5)
    verify(survivors + again, "after the second purge of round %d" % rnd)
    disjoint(survivors + again)
    for p, n, i in again:
        D.free(p)
for p, n, i in survivors:
    D.free(p)
check(python_churn() > 0)
print("ok", rm_stats().get("os"))      # informational only
""", timeout=120)


def test_raw_purge_with_remote_frees_across_threads():
    """RAW blocks freed by other threads (remote frees) are collected and purged by their owner heap."""
    run_python("""
import threading, time
import rustmalloc
rustmalloc.install()
from rustmalloc._rustmalloc import owns
R = RAW_NOGIL
NT = 4
inbox = [[] for _ in range(NT)]
locks = [threading.Lock() for _ in range(NT)]
barrier = threading.Barrier(NT)
errors = []
SIZES = [16, 48, 100, 256, 512, 1000, 3000, 20000]

def worker(t):
    try:
        rng = random.Random(t)
        mine = []
        for i in range(8000):
            n = rng.choice(SIZES)
            p = R.malloc(n)
            check(p is not None and owns(p))
            write(p, tagged(t * 10**6 + i, n))
            mine.append((p, n, t * 10**6 + i))
        keep = mine[::10]
        give = [b for k, b in enumerate(mine) if k % 10]
        with locks[(t + 1) % NT]:
            inbox[(t + 1) % NT].extend(give)
        barrier.wait()
        with locks[t]:
            got, inbox[t][:] = list(inbox[t]), []
        for p, n, i in got:
            check(read(p, n) == tagged(i, n), "received block corrupted")
            R.free(p)                                  # remote free into the other thread's heap
        barrier.wait()
        time.sleep(0.35)                               # a purge pass is due
        fresh = []
        for j in range(4000):
            n = rng.choice(SIZES)
            bid = t * 10**6 + 500000 + j
            if j % 2:
                p = R.calloc(n, 1)
                check(p is not None and read(p, n) == bytes(n), "calloc after purge not zeroed")
            else:
                p = R.malloc(n)
                check(p is not None)
            write(p, tagged(bid, n))
            fresh.append((p, n, bid))
        for p, n, i in keep + fresh:
            check(read(p, n) == tagged(i, n), "block corrupted after purge")
        barrier.wait()
        for p, n, i in keep + fresh:
            R.free(p)
    except BaseException:
        import traceback
        errors.append(traceback.format_exc())
        barrier.abort()

ts = [threading.Thread(target=worker, args=(t,)) for t in range(NT)]
for th in ts:
    th.start()
for th in ts:
    th.join()
check(not errors, "\\n".join(errors[:2]))
print("ok")
""", timeout=120)
