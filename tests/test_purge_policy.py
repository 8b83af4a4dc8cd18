"""The purge policy as users drive it: configure(), the RUSTMALLOC_* variables, trim(), the
automatic purge's adaptive delay, and the idle purger.

Memory figures are our own (stats().os: bytes_resident is measured with mincore() over our
segments), so other allocators' memory in the process does not blur them. Nothing here asserts on
speed; where the policy acts on time (the purge delay), a scenario waits well past the delay and
asserts what the allocator did, with bounds far from the figures it should see.
"""

import pytest

from helpers import run_python

MIB = 1 << 20

# Source for the scenarios: go on allocating a little (slow paths, where purge passes run) until
# our resident memory falls below `limit` or `seconds` pass; returns the last reading.
ALLOCATE_UNTIL_RESIDENT_BELOW = """
import time
def allocate_until_resident_below(limit, seconds):
    junk = []
    deadline = time.monotonic() + seconds
    while True:
        junk.append([str(i) for i in range(2000)])
        if len(junk) > 20:
            junk.clear()
        time.sleep(0.005)
        r = rustmalloc.stats().os.bytes_resident
        if r < limit or time.monotonic() > deadline:
            return r
"""


def test_configure_sets_and_validates():
    run_python("""
import rustmalloc
rustmalloc.install()
from rustmalloc._config import settings
default = settings()
check(default == {"purge": True, "purge_delay_ms": 250, "retain_bytes": 4 * 1024 * 1024,
                  "idle_purge": True}, default)
now = rustmalloc.configure(purge_delay_ms=100, retain_bytes="8 MiB")
check(now == {"purge": True, "purge_delay_ms": 100, "retain_bytes": 8 * 1024 * 1024,
              "idle_purge": True}, now)
check(rustmalloc.configure(purge=False)["purge"] is False)
check(rustmalloc.configure() == settings())

def refused(kwargs, exc, words):
    before = settings()
    try:
        rustmalloc.configure(**kwargs)
    except exc as e:
        for w in words:
            check(w in str(e), (kwargs, str(e)))
    else:
        raise AssertionError("configure(%r) was accepted" % (kwargs,))
    check(settings() == before, "a refused configure() changed the settings")

refused({"purge_delay_ms": -1}, ValueError, ["purge_delay_ms", "between 0 and 3600000"])
refused({"purge_delay_ms": 3_600_001}, ValueError, ["purge_delay_ms"])
refused({"purge_delay_ms": 1.5}, TypeError, ["purge_delay_ms", "int"])
refused({"purge_delay_ms": True}, TypeError, ["purge_delay_ms"])
refused({"purge": 1}, TypeError, ["purge", "True or False"])
refused({"idle_purge": "no"}, TypeError, ["idle_purge", "True or False"])
refused({"retain_bytes": "lots"}, ValueError, ["retain_bytes", "'24 MB'"])
refused({"retain_bytes": -5}, ValueError, ["retain_bytes", "negative"])
refused({"retain_bytes": 2.0}, TypeError, ["retain_bytes"])
refused({"retain_bytes": 2**64}, ValueError, ["retain_bytes", "too large"])
refused({"retain_bytes": "99999999999999999999 GiB"}, ValueError, ["retain_bytes", "too large"])
check(rustmalloc.parse_size("1.5KiB") == 1536 and rustmalloc.parse_size("24 MB") == 24_000_000)
print("ok")
""")


@pytest.mark.parametrize("var,value,words", [
    ("RUSTMALLOC_PURGE_DELAY_MS", "soon", ["RUSTMALLOC_PURGE_DELAY_MS", "whole number of milliseconds"]),
    ("RUSTMALLOC_PURGE", "maybe", ["RUSTMALLOC_PURGE", "1 (on) or 0 (off)"]),
    ("RUSTMALLOC_RETAIN_BYTES", "12 parsecs", ["RUSTMALLOC_*", "retain_bytes"]),
    ("RUSTMALLOC_IDLE_PURGE", "sometimes", ["RUSTMALLOC_IDLE_PURGE", "1 (on) or 0 (off)"]),
    ("RUSTMALLOC_RETAIN_BYTES", "99999999999999999999", ["RUSTMALLOC_*", "retain_bytes", "too large"]),
    ("RUSTMALLOC_PURGE_DELAY_MS", "\u00b2", ["RUSTMALLOC_PURGE_DELAY_MS", "whole number"]),
])
def test_a_bad_environment_setting_is_refused_at_install(var, value, words):
    """A bad RUSTMALLOC_* value fails install() with a message naming it; nothing is installed."""
    proc = run_python("""
import rustmalloc
try:
    rustmalloc.install()
except ValueError as e:
    print("refused:", e)
check(rustmalloc.installed() == (), rustmalloc.installed())
""", extra_env={var: value})
    out = proc.stdout
    assert "refused:" in out, out
    for w in words:
        assert w in out, out


def test_environment_settings_apply_at_install():
    run_python("""
import rustmalloc
rustmalloc.install()
from rustmalloc._config import settings
check(settings() == {"purge": False, "purge_delay_ms": 1000, "retain_bytes": 1536,
                     "idle_purge": False}, settings())
check(rustmalloc._rustmalloc._idle_purge_state() == (False, False), "no idle purger thread")
print("ok")
""", extra_env={"RUSTMALLOC_PURGE": "0", "RUSTMALLOC_PURGE_DELAY_MS": "1000",
                 "RUSTMALLOC_RETAIN_BYTES": "1.5KiB", "RUSTMALLOC_IDLE_PURGE": "0"})


def test_trim_gives_back_a_dropped_structure():
    """trim() returns what it gave back; our resident memory falls by about that much; the
    survivors and the heap stay intact, and later allocation works (refilling given-back pages)."""
    run_python("""
import rustmalloc
rustmalloc.install()
rustmalloc.configure(purge=False)                 # only trim() gives back here
MIB = 1 << 20
keep = []
items = [(str(i) * 3, [i, i + 1]) for i in range(400_000)]
keep = items[::5000]
del items
r0 = rustmalloc.stats().os
given = rustmalloc.trim()
r1 = rustmalloc.stats().os
print("given", given >> 20, "resident", r0.bytes_resident >> 20, "->", r1.bytes_resident >> 20)
check(given > 30 * MIB, given)
check(r1.bytes_returned - r0.bytes_returned >= given, (r0, r1, given))
check(r0.bytes_resident - r1.bytes_resident > given // 2, (r0, r1, given))
check(all(k[0] == str(k[1][0]) * 3 and k[1][1] == k[1][0] + 1 for k in keep))
again = [(str(i) * 3, [i, i + 1]) for i in range(400_000)]
check(again[123_456][0] == "123456" * 3)
check(rustmalloc.stats().os.bytes_refaulted > 0)
check(rustmalloc.trim() >= 0)
print("ok")
""", timeout=120)


def test_automatic_purge_gives_back_a_dropped_structure():
    """With the default policy, memory a program drops comes back to the OS while it goes on
    allocating a little (no trim() call)."""
    run_python(ALLOCATE_UNTIL_RESIDENT_BELOW + """
import time
import rustmalloc
rustmalloc.install()
MIB = 1 << 20
items = [(str(i) * 3, [i, i + 1]) for i in range(400_000)]
r_built = rustmalloc.stats().os.bytes_resident
del items
r = allocate_until_resident_below(r_built // 4, 20)
print("resident", r_built >> 20, "->", r >> 20, "MiB")
check(r < r_built // 4, (r_built, r))
print("ok")
""", timeout=120)


def test_the_purge_delay_lengthens_for_a_program_that_comes_back_for_its_memory():
    """A program that builds and drops the same structure in rounds, with a pause longer than
    the purge delay: at first every round's pages are given back at the pause and faulted in
    again by the next round (refaults); the heap's delay then grows past the pause, the later
    rounds refault (almost) nothing, and memory still comes back within the longest delay once
    the program stops coming back for it."""
    run_python(ALLOCATE_UNTIL_RESIDENT_BELOW + """
import time
import rustmalloc
rustmalloc.install()
MIB = 1 << 20
base = rustmalloc.configure()["purge_delay_ms"]
refaults = []
delays = []
for rnd in range(16):
    r0 = rustmalloc.stats().os.bytes_refaulted
    items = [(str(i) * 3, [i, i + 1]) for i in range(300_000)]
    del items
    refaults.append(rustmalloc.stats().os.bytes_refaulted - r0)
    delays.append(rustmalloc.stats().os.purge_delay_ms)
    time.sleep(0.4)                              # longer than the 250 ms delay
print("refaulted MiB by round", [r >> 20 for r in refaults])
print("delay in force by round", delays)
check(max(refaults) > 8 * MIB, "the pauses never made a round refault: %r" % refaults)
check(delays[-1] > base, delays)
check(delays[-1] <= 16 * base, delays)
# Most of the last rounds refault little (a busy machine may oversleep a pause now and then).
check(sorted(refaults[-5:])[2] < max(refaults) // 4, "the last rounds still refault: %r" % refaults)

# Stop coming back: the memory still returns, within the longest delay and a pass.
items = [(str(i) * 3, [i, i + 1]) for i in range(300_000)]
r_built = rustmalloc.stats().os.bytes_resident
del items
start = time.monotonic()
r = allocate_until_resident_below(r_built // 3, 16 * base / 1000 + 10)
print("resident", r_built >> 20, "->", r >> 20, "MiB after %.1f s" % (time.monotonic() - start))
check(r < r_built // 3, (r_built, r))
check("taken again" in rustmalloc.format_stats())
print("ok")
""", timeout=180)


# Source for the idle purger scenarios: build a structure, drop it, then wait without allocating
# (a service between requests) and read the process's RSS (VmRSS) before and after. Reading
# /proc allocates a few small blocks (fast paths), not enough to run a purge pass.
BUILD_DROP_WAIT = """
import gc, time
def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
def rss_mib():
    return status("VmRSS") >> 10
def build_drop_wait(seconds, until_below=None):
    \"\"\"Build and drop about 350 MB, then wait `seconds`, or until RSS is below
    `until_below` times what was built (whichever is first); returns RSS built, dropped, after.\"\"\"
    items = [{"s": str(i), "t": (i, i + 1)} for i in range(600_000)]
    built = rss_mib()
    del items
    gc.collect()
    dropped = rss_mib()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if until_below is not None and rss_mib() < built * until_below:
            break
    return built, dropped, rss_mib()
"""


@pytest.mark.parametrize("idle_purge", [True, False])
def test_the_idle_purger_gives_back_memory_while_the_program_waits(idle_purge):
    """A program that drops a structure and then only waits takes no allocation slow path, where
    the automatic purge runs: the idle purger gives the memory back anyway, within a few purge
    delays. Turned off, the same program keeps it (so this scenario does measure the purger)."""
    proc = run_python(BUILD_DROP_WAIT + """
import rustmalloc
rustmalloc.install()
rustmalloc.configure(idle_purge=%r, purge_delay_ms=250)
if %r:
    built, dropped, waited = build_drop_wait(15.0, until_below=1 / 3)
    check(waited < built // 3, (built, dropped, waited))
else:
    built, dropped, waited = build_drop_wait(3.0)
    check(waited > built * 3 // 4, (built, dropped, waited))
print("RSS MiB built", built, "dropped", dropped, "after waiting", waited)
check(built > 150, built)
print("ok")
""" % (idle_purge, idle_purge), timeout=120)
    assert "ok" in proc.stdout


def test_the_idle_purger_thread_ends_and_starts_again_with_configure():
    """configure(idle_purge=False) ends the thread at its next tick; True starts one again (one
    thread, however often it is asked); it is not one of threading's; purge=False makes it give
    nothing back."""
    run_python(BUILD_DROP_WAIT + """
import threading, time
import rustmalloc
from rustmalloc import _rustmalloc as ext
check(ext._idle_purge_state() == (True, False), "no thread before install()")
threads = status("Threads")
rustmalloc.install()
check(ext._idle_purge_state() == (True, True), ext._idle_purge_state())
check(status("Threads") == threads + 1, (threads, status("Threads")))
check(threading.active_count() == 1, threading.enumerate())

def wait_for(state, threads_now):
    deadline = time.monotonic() + 10
    while ext._idle_purge_state() != state or status("Threads") != threads_now:
        check(time.monotonic() < deadline, (state, ext._idle_purge_state(), status("Threads")))
        time.sleep(0.05)

rustmalloc.configure(idle_purge=False)
wait_for((False, False), threads)            # ended at its next tick (at most a second)
for _ in range(3):
    rustmalloc.configure(idle_purge=True)    # one thread, however often it is asked
check(ext._idle_purge_state() == (True, True))
check(status("Threads") == threads + 1, (threads, status("Threads")))
rustmalloc.configure(purge=False, purge_delay_ms=250)  # the automatic policy off
built, dropped, waited = build_drop_wait(2.0)
print("purge off: RSS MiB", built, dropped, waited)
check(waited > built * 3 // 4, (built, waited))
rustmalloc.configure(purge=True)
deadline = time.monotonic() + 15
while rss_mib() >= built // 3 and time.monotonic() < deadline:
    time.sleep(0.1)
print("purge on again:", rss_mib())
check(rss_mib() < built // 3, (built, rss_mib()))
print("ok")
""", timeout=120)


def test_the_idle_purger_ends_before_the_interpreter_finalizes():
    """The thread never runs into finalization (where CPython 3.11 kills a running thread with
    pthread_exit, and a thread not started yet writes into its freed state): the atexit handler
    install() registers ends it first. An atexit handler registered before install() runs after
    ours (last in, first out) and finds it ended, both for a process that exits at once (the
    thread may not have run yet) and for one that ran a while."""
    for pause in (0.0, 0.5):
        proc = run_python("""
import atexit, os, time
def after():
    import rustmalloc
    from rustmalloc import _rustmalloc as ext
    # A purger started here, after ours ended, would run into finalization.
    rustmalloc.configure(idle_purge=True)
    os.write(1, b"at exit: purger running %%r\\n" %% (ext._idle_purge_state()[1],))
atexit.register(after)
import rustmalloc
rustmalloc.install()
time.sleep(%r)
""" % pause, prelude=False)
        assert "at exit: purger running False" in proc.stdout, (pause, proc.stdout)


def test_the_child_of_a_fork_gets_an_idle_purger_of_its_own():
    """The thread does not survive a fork, and the child comes back from fork() with one thread
    (as CPython's test_threading checks). A child forked from the main thread starts its own
    purger at its first garbage collection, which then gives back what the child drops while it
    waits. A child forked from another thread lives only as long as that thread: it gets none,
    and ends with that thread."""
    proc = run_python(BUILD_DROP_WAIT + """
import os, sys, threading, time
import rustmalloc
from rustmalloc import _rustmalloc as ext
rustmalloc.install()
check(ext._idle_purge_state() == (True, True))
pid = os.fork()
if pid == 0:
    code = 1
    try:
        frames = len(sys._current_frames())
        threads = [l for l in open("/proc/self/status") if l.startswith("Threads:")][0].split()[1]
        at_fork = ext._idle_purge_state()
        built, dropped, waited = build_drop_wait(15.0, until_below=1 / 3)
        running = ext._idle_purge_state()
        print("child: frames", frames, "threads", threads, "at fork", at_fork, "then", running,
              "RSS MiB", built, dropped, waited, flush=True)
        single = frames == 1 and threads == "1" and at_fork == (True, False)
        code = 0 if single and running == (True, True) and waited < built // 3 else 3
    finally:
        os._exit(code)
_, status_ = os.waitpid(pid, 0)
check(os.waitstatus_to_exitcode(status_) == 0, status_)

result = {}
def fork_from_a_thread():
    pid = os.fork()
    if pid == 0:
        os.write(1, b"child of a thread: purger %r\\n" % (ext._idle_purge_state(),))
        # configure() (even to read the settings) started a purger here, which kept the
        # child alive after its thread ended.
        rustmalloc.configure(idle_purge=True)
        os.write(1, b"after configure: purger %r\\n" % (ext._idle_purge_state(),))
        return          # the thread ends, and with it the child process
    start = time.monotonic()
    _, st = os.waitpid(pid, 0)
    result["seconds"], result["status"] = time.monotonic() - start, st
t = threading.Thread(target=fork_from_a_thread)
t.start()
t.join()
print("child of a thread ended after %.2f s" % result["seconds"])
check(os.waitstatus_to_exitcode(result["status"]) == 0, result)
check(result["seconds"] < 20, result)
print("ok")
""", timeout=120)
    assert "child of a thread: purger (True, False)" in proc.stdout, proc.stdout
    assert "after configure: purger (True, False)" in proc.stdout, proc.stdout


@pytest.mark.parametrize("idle_purge", [True, False])
def test_the_idle_purger_gives_back_an_exited_threads_heap(idle_purge):
    """An exited thread's RAW heap takes no slow path until another thread adopts it: the idle
    purger gives its free memory back (turned off: it stays). Measured in our own resident
    bytes (stats().os)."""
    run_python("""
import threading, time
import rustmalloc
rustmalloc.install()
rustmalloc.configure(idle_purge=%r, purge_delay_ms=250)
MIB = 1 << 20
raw = RAW_NOGIL

def work():
    blocks = [raw.malloc(16_000) for _ in range(8000)]      # about 128 MB of RAW blocks
    for b in blocks:
        ctypes.memset(b, 1, 16_000)
    for b in blocks:
        raw.free(b)

before = rustmalloc.stats().os.bytes_resident
t = threading.Thread(target=work)
t.start()
t.join()
after_exit = rustmalloc.stats().os.bytes_resident
deadline = time.monotonic() + (15 if %r else 3)
while time.monotonic() < deadline:
    time.sleep(0.2)
    now = rustmalloc.stats().os.bytes_resident
    if now < before + 16 * MIB:
        break
print("resident MiB before", before >> 20, "after the thread", after_exit >> 20, "later", now >> 20)
check(after_exit > before + 64 * MIB, (before, after_exit))
if %r:
    check(now < before + 16 * MIB, (before, after_exit, now))
else:
    check(now > before + 64 * MIB, (before, after_exit, now))
print("ok")
""" % (idle_purge, idle_purge, idle_purge), timeout=120)


def test_a_thread_started_outside_raw_gets_its_raw_blocks_from_the_allocator_before_us():
    """`_start_thread_outside_raw` (how the idle purger starts when it is the only thread):
    CPython's RAW blocks for the new thread (its start-up record, freed at once by the thread,
    and its thread state, freed as it ends) come from the previous allocator, so they reach our
    free hook as foreign frees; a thread started the usual way frees blocks of ours instead.
    CPython swaps RAW to its default allocator for moments without a lock (right after start-up,
    during finalization), and a block of ours freed by another thread then goes to glibc."""
    proc = run_python("""
import _thread, time
import rustmalloc
from rustmalloc import _rustmalloc as ext
rustmalloc.install()        # no purger thread (RUSTMALLOC_IDLE_PURGE=0): its end would count
check(ext._idle_purge_state() == (False, False))

def foreign_raw_frees():
    return rustmalloc.stats().domains["raw"].foreign_frees

def started(start):
    done = _thread.allocate_lock()
    done.acquire()
    before = foreign_raw_frees()
    start(done.release, ())
    done.acquire()
    time.sleep(0.2)         # the thread's state is freed after it returns
    return foreign_raw_frees() - before

outside = started(ext._start_thread_outside_raw)
usual = started(_thread.start_new_thread)
print("foreign RAW frees: outside", outside, "usual", usual)
check(outside >= 2 and usual == 0, (outside, usual))
print("ok")
""", extra_env={"RUSTMALLOC_IDLE_PURGE": "0"})
    assert "ok" in proc.stdout, proc.stdout
