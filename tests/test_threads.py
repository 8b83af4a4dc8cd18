"""RAW from many threads at once (GIL released), cross-thread frees, and thousands of short-lived threads."""

from helpers import run_python


def test_raw_concurrent_threads_cross_thread_frees():
    run_python("""
import threading, queue, time
import rustmalloc
rustmalloc.install()
from rustmalloc._rustmalloc import owns
R = RAW_NOGIL            # calls release the GIL: the allocator really runs concurrently
NT = 8
OPS = 2500
queues = [queue.Queue() for _ in range(NT)]
barrier = threading.Barrier(NT)
errors = []
counts = [0] * NT

def pick_size(rng):
    r = rng.random()
    if r < 0.70:
        return rng.randint(0, 512)
    if r < 0.90:
        return rng.randint(513, 16384)
    if r < 0.98:
        return rng.randint(16385, 262144)
    return rng.randint(262145, 2 << 20)

def verify(p, n, bid, where):
    got = read(p, n)
    if got != tagged(bid, n):
        raise AssertionError("%s: block %d (%d bytes at %#x) corrupted" % (where, bid, n, p))

def worker(t):
    try:
        rng = random.Random(t)
        live = []
        nextid = t * 10**7
        def take(i):
            live[i], live[-1] = live[-1], live[i]
            return live.pop()
        def adopt(item, how):
            p, n, bid = item
            verify(p, n, bid, "received in thread %d" % t)
            if how < 0.5:
                R.free(p)
            else:
                m = pick_size(rng)
                q = R.realloc(p, m)
                check(q is not None and q % 16 == 0, "cross-thread realloc failed")
                k = min(n, m)
                check(read(q, k) == tagged(bid, n)[:k], "cross-thread realloc lost contents")
                write(q, tagged(bid, m))
                live.append((q, m, bid))
        for op in range(OPS):
            r = rng.random()
            if r < 0.45 or not live:
                n = pick_size(rng)
                nextid += 1
                if rng.random() < 0.8:
                    p = R.malloc(n)
                    check(p is not None, "malloc(%d) returned NULL" % n)
                else:
                    p = R.calloc(1, n)
                    check(p is not None, "calloc(%d) returned NULL" % n)
                    check(read(p, n) == bytes(n), "calloc(%d) not zeroed" % n)
                check(p % 16 == 0, "unaligned")
                check(owns(p), "not owned")
                write(p, tagged(nextid, n))
                live.append((p, n, nextid))
            elif r < 0.65:
                p, n, bid = take(rng.randrange(len(live)))
                verify(p, n, bid, "before free")
                R.free(p)
            elif r < 0.82:
                p, n, bid = take(rng.randrange(len(live)))
                verify(p, n, bid, "before realloc")
                m = pick_size(rng)
                q = R.realloc(p, m)
                check(q is not None and q % 16 == 0, "realloc(%d -> %d) failed" % (n, m))
                k = min(n, m)
                check(read(q, k) == tagged(bid, n)[:k], "realloc %d -> %d lost contents" % (n, m))
                write(q, tagged(bid, m))
                live.append((q, m, bid))
            else:
                item = take(rng.randrange(len(live)))
                verify(*item, "before send")
                queues[rng.randrange(NT)].put(item)
            while True:
                try:
                    item = queues[t].get_nowait()
                except queue.Empty:
                    break
                adopt(item, rng.random())
            if op % 500 == 499:
                for p, n, bid in live:
                    verify(p, n, bid, "periodic check")
            counts[t] += 1
        barrier.wait()          # every send is done: drain the last ones
        while True:
            try:
                item = queues[t].get_nowait()
            except queue.Empty:
                break
            adopt(item, 0.0)
        for p, n, bid in live:
            verify(p, n, bid, "final check")
            R.free(p)
    except BaseException as e:
        import traceback
        errors.append("thread %d: %s" % (t, traceback.format_exc()))
        barrier.abort()

rm_stats()       # warm-up: the first snapshot may import modules
gc.collect()
start = rustmalloc.stats().to_dict()["domains"]["raw"]["blocks_in_use"]
threads = [threading.Thread(target=worker, args=(t,)) for t in range(NT)]
for th in threads:
    th.start()
# snapshots taken while the heaps change under them
snaps = 0
while any(th.is_alive() for th in threads):
    d = rm_stats()
    check(d["domains"]["raw"]["blocks_in_use"] >= 0)
    snaps += 1
for th in threads:
    th.join()
check(not errors, "\\n".join(errors[:3]))
check(snaps > 0)
check(counts == [OPS] * NT, counts)
for q in queues:
    check(q.empty())
del threads, th
gc.collect()
# A finished thread frees its PyThreadState with PyMem_RawFree *after* join() returned (the join lock is
# released in PyThreadState_Clear, before the state is freed), so wait for that last free to arrive.
deadline = time.monotonic() + 10
while True:
    end = rustmalloc.stats().to_dict()["domains"]["raw"]["blocks_in_use"]
    if end == start or time.monotonic() > deadline:
        break
    time.sleep(0.05)
check(end == start, "raw blocks_in_use %d before the threads, %d after" % (start, end))
print("ok", start, end)
""", timeout=120)


def test_thousands_of_short_lived_threads_do_not_grow_memory():
    proc = run_python("""
import threading
import rustmalloc
rustmalloc.install()
R = RAW_NOGIL
BATCH = 32
TOTAL = 3000
handoff = []          # one RAW block per thread, freed later by the main thread
errors = []

def work(i):
    try:
        ps = []
        for k in range(20):
            n = (i * 37 + k * 101) % 3000 + 1
            p = R.malloc(n)
            check(p is not None)
            ctypes.memset(p, k + 1, n)
            ps.append((p, n, k + 1))
        python_churn(300, seed=i)
        for p, n, v in ps:
            check(read(p, n) == bytes([v]) * n, "corrupted")
            R.free(p)
        p = R.malloc(64 + i % 500)
        ctypes.memset(p, 0x3C, 64)
        handoff.append(p)
    except BaseException as e:
        errors.append(repr(e))

def run(first, count):
    for s in range(first, first + count, BATCH):
        ts = [threading.Thread(target=work, args=(s + j,)) for j in range(BATCH)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    k = 0
    while handoff:
        p = handoff.pop()
        check(read(p, 64) == b"\\x3c" * 64)
        k += 1
        if k % 2:      # the thread that allocated it is gone: resize it here, then free it
            p = R.realloc(p, (64, 3000, 70000)[k % 3])
            check(p is not None and read(p, 64) == b"\\x3c" * 64, "realloc of a dead thread's block")
        R.free(p)
    gc.collect()

run(0, TOTAL // 2)
rss1 = vm_kib("VmRSS")
heaps1 = rm_stats()["raw_heaps"]
run(TOTAL // 2, TOTAL // 2)
rss2 = vm_kib("VmRSS")
heaps2 = rm_stats()["raw_heaps"]
check(not errors, errors[:3])
print("rss_kib", rss1, rss2, "heaps", heaps1, heaps2)
# At most BATCH + 1 Python threads are alive at once, but a native thread may still be finishing (and
# give its heap back) just after join() returned, so allow for one more batch plus a few: the point is
# that it is not thousands.
bound = 2 * BATCH + 16
check(heaps2["created"] <= bound,
      "raw_heaps.created = %d after %d short-lived threads (bound %d): heaps are not reused"
      % (heaps2["created"], TOTAL, bound))
check(heaps2["abandoned"] <= heaps2["created"], heaps2)
growth = rss2 - rss1
check(growth < 16 * 1024, "VmRSS grew by %d KiB over the second %d threads" % (growth, TOTAL // 2))
""", timeout=150)
    print(proc.stdout)


def test_install_while_threads_are_inside_raw_calls():
    """install() while other threads call PyMem_Raw* without the GIL: blocks from before and after the
    switch are freed and resized by every thread, contents checked."""
    run_python("""
import threading, time
import rustmalloc
from rustmalloc._rustmalloc import owns
R = RAW_NOGIL
NT = 4
stop = threading.Event()
errors = []
pre = []           # blocks allocated before install, shared out after it
shared = [[] for _ in range(NT)]
locks = [threading.Lock() for _ in range(NT)]
loops = [0] * NT

def worker(t):
    try:
        rng = random.Random(t)
        live = []
        bid = t * 10**8
        while not stop.is_set():
            for _ in range(30):
                n = rng.choice([8, 64, 300, 1000, 6000, 50000])
                bid += 1
                p = R.malloc(n)
                check(p is not None)
                write(p, tagged(bid, n))
                live.append((p, n, bid))
                if len(live) > 40:
                    p, n, b = live.pop(rng.randrange(len(live)))
                    check(read(p, n) == tagged(b, n), "block corrupted")
                    if rng.random() < 0.3:
                        with locks[(t + 1) % NT]:
                            shared[(t + 1) % NT].append((p, n, b))   # freed by another thread
                        continue
                    if rng.random() < 0.5:
                        m = rng.choice([16, 900, 70000])
                        p = R.realloc(p, m)
                        check(p is not None and read(p, min(n, m)) == tagged(b, n)[:min(n, m)], "realloc")
                    R.free(p)
            with locks[t]:
                mine, shared[t][:] = list(shared[t]), []
            for p, n, b in mine:
                check(read(p, n) == tagged(b, n), "handed-over block corrupted")
                R.free(p)
            loops[t] += 1
        for p, n, b in live:
            check(read(p, n) == tagged(b, n), "block corrupted at the end")
            R.free(p)
    except BaseException:
        import traceback
        errors.append(traceback.format_exc())

for i in range(2000):
    n = (i * 37) % 5000 + 1
    p = R.malloc(n)
    write(p, tagged(-i - 1 & (2**63 - 1), n))
    pre.append((p, n, -i - 1 & (2**63 - 1)))
ts = [threading.Thread(target=worker, args=(t,)) for t in range(NT)]
for th in ts:
    th.start()
while min(loops) < 3 and not errors:
    time.sleep(0.01)
rustmalloc.install()                 # the switch happens while the workers are inside RAW calls
check(rustmalloc.installed() == ("raw", "mem", "obj"))
check(not any(owns(p) for p, _, _ in pre))
# hand the pre-install blocks to the workers, to be freed after the switch
for k, item in enumerate(pre):
    with locks[k % NT]:
        shared[k % NT].append(item)
start = list(loops)
while any(l < s + 5 for l, s in zip(loops, start)) and not errors:
    time.sleep(0.01)
stop.set()
for th in ts:
    th.join()
for t in range(NT):                  # whatever was handed over after a worker's last drain
    for p, n, b in shared[t]:
        check(read(p, n) == tagged(b, n))
        R.free(p)
check(not errors, "\\n".join(errors[:2]))
check(python_churn() > 0)
print("ok", loops)
""", timeout=120)
