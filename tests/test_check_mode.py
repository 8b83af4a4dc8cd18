"""The checking mode: planted C-extension bugs are reported, each in a fresh interpreter."""

import signal
import sys

import pytest

from helpers import run_python

PLANT = """
import rustmalloc
rustmalloc.install(check={check!r})
D = DOMAINS[{domain!r}]
junk = [str(i) * 3 for i in range(50_000)]       # ordinary work first: it must stay clean
del junk
def plant_bug(kind):
    p = D.malloc(40)
    if kind == "double free":
        D.free(p); D.free(p)
    elif kind == "overflow":
        ctypes.memset(p, 0x41, 41)                # one byte past the 40 requested
        D.free(p)
    elif kind == "realloc overflow":
        ctypes.memset(p, 0x41, 48)
        D.realloc(p, 100)
    elif kind == "use after free":
        D.free(p)
        ctypes.memset(p + 8, 0x41, 4)
        for i in range(5000):                      # push it out of the quarantine
            D.free(D.malloc(40))
plant_bug({kind!r})
print("finished")
"""

MESSAGES = {
    "double free": "rustmalloc: double free of block 0x",
    "overflow": "rustmalloc: write past the end of block 0x",
    "realloc overflow": "rustmalloc: write past the end of block 0x",
    "use after free": "rustmalloc: write to freed block 0x",
}


@pytest.mark.parametrize("domain", ["raw", "mem", "obj"])
@pytest.mark.parametrize("kind", list(MESSAGES))
def test_planted_bug_is_reported_and_aborts(kind, domain):
    proc = run_python(PLANT.format(check=True, domain=domain, kind=kind), expect_rc=-signal.SIGABRT)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("rustmalloc:")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(MESSAGES[kind]), lines[0]
    assert "size class 64 bytes" in lines[0] and f"{domain} domain" in lines[0], lines[0]
    assert "finished" not in proc.stdout
    # The Python stack where the bug was found follows, when it was found in the call that made
    # it; a write after free is found later, in an unrelated call, so no stack is given for it.
    if kind == "use after free":
        assert "Stack (most recent call first)" not in proc.stderr, proc.stderr
    else:
        after = proc.stderr.split(lines[0], 1)[1]
        assert after.lstrip().startswith("Stack (most recent call first)"), proc.stderr
        assert "in plant_bug" in after and "in <module>" in after, proc.stderr


@pytest.mark.parametrize("kind", list(MESSAGES))
def test_warn_mode_reports_and_goes_on(kind):
    proc = run_python(PLANT.format(check="warn", domain="mem", kind=kind))
    assert MESSAGES[kind] in proc.stderr
    assert "finished" in proc.stdout


def test_clean_run_stays_clean():
    proc = run_python(
        """
        import rustmalloc, threading
        rustmalloc.install(check=True)
        out = python_churn(20_000)
        def work():
            for i in range(2000):
                RAW_NOGIL.free(RAW_NOGIL.realloc(RAW_NOGIL.malloc(i % 700), i % 1300))
        ts = [threading.Thread(target=work) for _ in range(4)]
        for t in ts: t.start()
        for t in ts: t.join()
        big = bytearray(3_000_000); del big
        for d in DOMAINS.values():
            p = d.calloc(10, 10)
            check(read(p, 100) == bytes(100), "calloc in check mode must zero")
            q = d.malloc(24)
            check(read(q, 24) == b"\\xcb" * 24, "fresh blocks are filled with 0xCB")
            d.free(q); d.free(p)
        print(out)
        """,
        expect_empty_stderr=True,
    )
    assert proc.stdout.strip()


def test_check_mode_is_fixed_at_first_install():
    run_python(
        """
        import rustmalloc
        rustmalloc.install(("raw",), check=True)
        try:
            rustmalloc.install(("mem", "obj"), check=False)
        except RuntimeError as e:
            check("fixed by the first install" in str(e), str(e))
        else:
            raise AssertionError("mode changed after install")
        rustmalloc.install(("mem", "obj"), check=True)
        check(rustmalloc.installed() == ("raw", "mem", "obj"))
        try:
            rustmalloc.install(check="sometimes")
        except ValueError as e:
            check("warn" in str(e))
        # Without check=, a later install follows the mode in force (RUSTMALLOC_CHECK is unset).
        rustmalloc.install()
        """
    )


def test_asking_for_another_mode_after_install_raises_even_with_no_new_domain():
    # It returned without a word and left the checking mode off.
    run_python(
        """
        import rustmalloc
        rustmalloc.install()
        for mode in (True, "warn"):
            try:
                rustmalloc.install(check=mode)
            except RuntimeError as e:
                check("fixed by the first install" in str(e) and "check=False" in str(e), str(e))
            else:
                raise AssertionError("install(check=%r) after install() was accepted" % (mode,))
        rustmalloc.install(check=False)          # the mode in force: fine
        """
    )


def test_environment_variable_turns_it_on_at_startup():
    proc = run_python(
        """
        import rustmalloc
        check(rustmalloc.installed() == ("raw", "mem", "obj"), rustmalloc.installed())
        p = DOMAINS["obj"].malloc(40)
        DOMAINS["obj"].free(p); DOMAINS["obj"].free(p)
        """,
        extra_env={"RUSTMALLOC_CHECK": "1"},
        expect_rc=-signal.SIGABRT,
    )
    assert "rustmalloc: double free of block" in proc.stderr


def test_mem_without_the_gil_is_reported():
    # ctypes.CDLL releases the GIL around the call: PyMem_Malloc then runs without it.
    proc = run_python(
        """
        import rustmalloc
        rustmalloc.install(check="warn")
        nogil = ctypes.CDLL(None)
        m = nogil.PyMem_Malloc; m.restype = c_void_p; m.argtypes = [c_size_t]
        f = nogil.PyMem_Free; f.argtypes = [c_void_p]; f.restype = None
        p = m(100)
        check(p is not None)
        f(p)
        print("served")
        """
    )
    assert "rustmalloc: PyMem_Malloc called by a thread that does not hold the GIL" in proc.stderr
    assert "Stack (most recent call first)" in proc.stderr and "in <module>" in proc.stderr, proc.stderr
    assert "served" in proc.stdout


def test_a_foreign_block_freed_without_the_gil_is_reported():
    """A MEM block pymalloc served before install() and freed without the GIL is handed on to
    pymalloc, which it corrupts as surely as ours: reported before it is handed on."""
    proc = run_python(
        """
        import rustmalloc
        mem = DOMAINS["mem"]
        p = mem.malloc(100)                  # pymalloc's (with the GIL: ctypes.pythonapi)
        rustmalloc.install(check="warn")
        check(not rustmalloc._rustmalloc.owns(p))
        nogil = ctypes.CDLL(None)
        f = nogil.PyMem_Free; f.argtypes = [c_void_p]; f.restype = None
        f(p)
        print("handed on")
        """
    )
    assert "rustmalloc: PyMem_Free called by a thread that does not hold the GIL" in proc.stderr, proc.stderr
    assert "handed on" in proc.stdout


LATE_DOUBLE_FREE = """
import rustmalloc
rustmalloc.install(check={check!r})
D = DOMAINS[{domain!r}]
def plant_bug(kind):
    if kind == "large":                            # not quarantined: its pages go back at once
        keep = D.malloc(100_000)
        p = D.malloc(100_000)
        D.free(p)
    elif kind == "huge":                           # its mapping is gone after the first free
        p = D.malloc(3_000_000)
        D.free(p)
    elif kind == "small, purged":                  # its OS page given back by trim()
        keep = [D.malloc(4000) for _ in range(12)] # one block per OS page, the page stays in use
        p = keep.pop(6)
        D.free(p)
        for i in range(6000):                      # push it out of the quarantine
            D.free(D.malloc(40))
        rustmalloc.trim()
    else:                                          # small, double freed after it left the quarantine
        p = D.malloc(1000)
        D.free(p)
        for i in range(6000):                      # push it out; its page empties and goes back
            D.free(D.malloc(40))
    D.free(p)
    D.free(D.malloc(40))
plant_bug({kind!r})
print("finished")
"""

LATE_MESSAGES = {
    "large": "not at a live block: a double free",
    "huge": "double free of huge block 0x",
    # Its page may still be carved (the block then still carries its freed mark) or gone back.
    "small after the quarantine": "double free",
    # Read as zeros: it was reported as a write past the end of a 0-byte block.
    "small, purged": "double free of block 0x",
}


@pytest.mark.parametrize("domain", ["raw", "mem"])
@pytest.mark.parametrize("kind", list(LATE_MESSAGES))
def test_a_double_free_found_after_the_block_was_given_back_is_reported(kind, domain):
    # Once the block's page (or mapping) has gone back, the pointer is no live block of ours.
    # Handed to the allocator before us as a foreign pointer it made glibc abort or crash with no
    # report, or put our memory into glibc's tcache (see the next test).
    proc = run_python(LATE_DOUBLE_FREE.format(check=True, domain=domain, kind=kind),
                      expect_rc=-signal.SIGABRT)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("rustmalloc:")]
    assert len(lines) == 1, proc.stderr
    assert LATE_MESSAGES[kind] in lines[0], lines[0]
    assert "Stack (most recent call first)" in proc.stderr and "in plant_bug" in proc.stderr
    assert "finished" not in proc.stdout
    warn = run_python(LATE_DOUBLE_FREE.format(check="warn", domain=domain, kind=kind))
    assert LATE_MESSAGES[kind] in warn.stderr and "finished" in warn.stdout, warn.stderr


def test_a_late_double_free_never_reaches_glibc():
    # The review's case: the second free of a large block whose pages went back, with the 8
    # bytes before it (a small page's last block) holding what glibc takes for a chunk size. It
    # went to glibc's free, which put it in its tcache, and glibc's next malloc(40) returned
    # memory inside a live segment of ours.
    proc = run_python(
        """
        import threading
        import rustmalloc
        from rustmalloc import _rustmalloc as R
        rustmalloc.install(check="warn")
        m, f = RAW_NOGIL.malloc, RAW_NOGIL.free
        libc_malloc = ctypes.CDLL(None).malloc
        libc_malloc.restype = c_void_p
        libc_malloc.argtypes = [c_size_t]
        SEG, PAGE = 4 << 20, 64 << 10
        out = {}
        def scenario():
            l1 = m(100_000); l2 = m(100_000)       # 2-page spans from the segment's bottom
            seg = l1 & ~(SEG - 1)
            check(l2 == l1 + 2 * PAGE, (hex(l1), hex(l2)))
            keep = []
            while True:                            # fill the segment with small pages
                p = m(48); keep.append(p)
                if p & ~(SEG - 1) != seg: break
            f(l1)                                  # its pages come back; a small page lands below l2
            n = 0
            for _ in range(200_000):
                p = m(48); keep.append(p)
                n += l2 - PAGE <= p < l2
                if n == 1024: break
            f(l2)
            out["live_after_free"] = R._owns_block_start(l2)
            f(l2)                                  # the double free
            q = libc_malloc(40)
            out["glibc_block_is_ours"] = R.owns(q)
        t = threading.Thread(target=scenario); t.start(); t.join()
        check(out == {"live_after_free": False, "glibc_block_is_ours": False}, out)
        print("finished")
        """
    )
    assert "not at a live block: a double free" in proc.stderr, proc.stderr
    assert "finished" in proc.stdout
