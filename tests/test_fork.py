"""os.fork() while other threads allocate RAW without the GIL and churn Python objects.

Each child allocates a lot and must exit by itself; a child that does not exit within the watchdog time is
killed and reported as a deadlock (a lock of the allocator held by a thread that does not exist in the child).
"""

from helpers import run_python


def test_fork_under_threaded_load():
    run_python("""
import os, signal, threading, time, traceback
import rustmalloc
rustmalloc.install()
from rustmalloc._rustmalloc import owns
R = RAW_NOGIL
stop = threading.Event()
bg_errors = []
bg_loops = [0] * 4
bg_live = [[] for _ in range(4)]

def background(t):
    try:
        rng = random.Random(t)
        live = bg_live[t]
        while not stop.is_set():
            for _ in range(20):
                n = rng.choice([16, 100, 700, 5000, 70000, 300000])
                p = R.malloc(n)
                check(p is not None)
                ctypes.memset(p, t + 1, n)          # ctypes.memset releases the GIL too
                live.append((p, n))
                if len(live) > 64:
                    p, n = live.pop(rng.randrange(len(live)))
                    check(read(p, n) == bytes([t + 1]) * n, "background block corrupted")
                    R.free(p)
            junk = [{"k": str(i), "v": [i] * 5} for i in range(100)]
            del junk
            bg_loops[t] += 1
            time.sleep(0.002)     # leave the children some CPU on a 2-core machine
        for p, n in live:
            R.free(p)
    except BaseException:
        bg_errors.append(traceback.format_exc())

def child():
    try:
        d = {i: str(i) * 10 for i in range(20000)}
        l = [bytes(1000) for _ in range(2000)]
        s = json.dumps(d)
        check(len(json.loads(s)) == 20000)
        blocks = []
        for i in range(600):
            n = (i * 53) % 8000 + 1
            dom = RAW_NOGIL if i % 2 else DOMAINS[("raw", "mem", "obj")[i % 3]]
            p = dom.malloc(n)
            check(p is not None and owns(p))
            write(p, tagged(i, n))
            blocks.append((dom, p, n, i))
        for dom, p, n, i in blocks:
            check(read(p, n) == tagged(i, n), "child block corrupted")
            dom.free(p)
        big = [R.malloc(3 << 20) for _ in range(4)]
        for p in big:
            check(p is not None)
            ctypes.memset(p, 1, 3 << 20)
            R.free(p)
        # blocks of the parent's other threads (which do not exist here) are freed / resized here
        for t, lst in enumerate(bg_live):
            for j, (p, n) in enumerate(list(lst)):
                check(read(p, n) == bytes([t + 1]) * n, "a background thread's block is corrupted in the child")
                if j % 2:
                    p = R.realloc(p, n * 2 + 1)
                    check(p is not None and read(p, n) == bytes([t + 1]) * n)
                R.free(p)
        # a thread in the child allocates too
        out = []
        th = threading.Thread(target=lambda: out.append(python_churn(2000)))
        th.start(); th.join()
        check(out and out[0] > 0)
        rustmalloc.stats().to_dict()
    except BaseException:
        os.write(2, ("child %d failed:\\n" % os.getpid() + traceback.format_exc()).encode())
        os._exit(1)
    os._exit(0)

sys.setswitchinterval(0.001)      # the forking thread gets the GIL back quickly
threads = [threading.Thread(target=background, args=(t,), daemon=True) for t in range(4)]
for th in threads:
    th.start()
while min(bg_loops) < 1 and not bg_errors:
    time.sleep(0.01)

FORKS = 20
WATCHDOG = 20.0
results = []
for i in range(FORKS):
    time.sleep(0.01)              # let the background threads get going again
    pid = os.fork()
    if pid == 0:
        child()
    deadline = time.monotonic() + WATCHDOG
    while True:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid:
            results.append((i, os.waitstatus_to_exitcode(status)))
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            results.append((i, "HUNG"))
            break
        time.sleep(0.005)
    if results[-1][1] == "HUNG":
        break                     # one deadlock is enough evidence; don't spend 20 s per fork

stop.set()
for th in threads:
    th.join(30)
check(not bg_errors, "\\n".join(bg_errors[:2]))
hung = [i for i, r in results if r == "HUNG"]
check(not hung, "fork child %s did not exit within %ss (deadlock in the child)" % (hung, WATCHDOG))
bad = [(i, r) for i, r in results if r != 0]
check(not bad, "fork children exited badly (negative = signal): %r" % bad)
check(len(results) == FORKS)
check(python_churn() > 0)
print("ok", results)
""", timeout=150)


def test_fork_child_collects_a_free_its_parent_left_halfway():
    """A thread freeing a MEM/OBJ block through PyMem_RawFree pushes it onto its page's list, then
    the page onto the heap's stack; a fork between the two leaves the page on no stack in the child,
    where nothing would collect it. The child's at-fork hook relinks the heap's pages. The parent,
    which has no such hook run, shows that without it the block stays uncollected."""
    run_python("""
import os
import rustmalloc
rustmalloc.install()
from rustmalloc._rustmalloc import _strand_remote_free, _remote_frees_pending, _check_heaps
p = _strand_remote_free(200)        # the stranded state, as a fork mid-free leaves it
_check_heaps()                      # collects the heap's remote frees, and checks its invariants
check(_remote_frees_pending(p), "nothing finds a page left off the stack")
pid = os.fork()
if pid == 0:
    try:
        _check_heaps()
        os._exit(0 if not _remote_frees_pending(p) else 3)
    except BaseException:
        os._exit(4)
_, status = os.waitpid(pid, 0)
check(os.waitstatus_to_exitcode(status) == 0, "child: %r (3: not collected)" % status)
check(_remote_frees_pending(p))
for bad, error in ((1 << 20, ValueError), (-1, OverflowError)):
    try:
        _strand_remote_free(bad)
    except error:
        pass
    else:
        check(False, "no %s for %r" % (error.__name__, bad))
try:
    _remote_frees_pending(id(None))  # a static of libpython's
except ValueError as exc:
    check("not in a small page" in str(exc), str(exc))
else:
    check(False, "no ValueError for an address not ours")
print("ok")
""")
