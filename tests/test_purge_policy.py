"""The purge policy as users drive it: configure(), the RUSTMALLOC_* variables, trim(), and the
automatic purge's adaptive delay.

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
check(default == {"purge": True, "purge_delay_ms": 250, "retain_bytes": 4 * 1024 * 1024}, default)
now = rustmalloc.configure(purge_delay_ms=100, retain_bytes="8 MiB")
check(now == {"purge": True, "purge_delay_ms": 100, "retain_bytes": 8 * 1024 * 1024}, now)
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
refused({"retain_bytes": "lots"}, ValueError, ["retain_bytes", "'24 MB'"])
refused({"retain_bytes": -5}, ValueError, ["retain_bytes", "negative"])
refused({"retain_bytes": 2.0}, TypeError, ["retain_bytes"])
check(rustmalloc.parse_size("1.5KiB") == 1536 and rustmalloc.parse_size("24 MB") == 24_000_000)
print("ok")
""")


@pytest.mark.parametrize("var,value,words", [
    ("RUSTMALLOC_PURGE_DELAY_MS", "soon", ["RUSTMALLOC_PURGE_DELAY_MS", "whole number of milliseconds"]),
    ("RUSTMALLOC_PURGE", "maybe", ["RUSTMALLOC_PURGE", "1 (on) or 0 (off)"]),
    ("RUSTMALLOC_RETAIN_BYTES", "12 parsecs", ["RUSTMALLOC_*", "retain_bytes"]),
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
check(settings() == {"purge": False, "purge_delay_ms": 1000, "retain_bytes": 1536}, settings())
print("ok")
""", extra_env={"RUSTMALLOC_PURGE": "0", "RUSTMALLOC_PURGE_DELAY_MS": "1000",
                 "RUSTMALLOC_RETAIN_BYTES": "1.5KiB"})


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
