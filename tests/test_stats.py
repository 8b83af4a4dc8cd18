"""The statistics API: snapshots, size classes, peaks, track(), the report.

Each scenario installs rustmalloc, so each runs in a fresh interpreter (helpers.run_python).
Taking a snapshot allocates a little itself, so counts are compared in the size class that the
test allocated in, with a size no snapshot object uses (200 bytes -> class of 208), and RAW
through ctypes in a quiet process.
"""

import json

import pytest

from helpers import run_python


def test_every_stats_function_needs_install_first():
    run_python(
        """
        import rustmalloc
        for name in ("stats", "allocated_blocks", "reset_peak", "format_stats", "print_stats"):
            try:
                getattr(rustmalloc, name)()
            except RuntimeError as e:
                check("install()" in str(e), str(e))
            else:
                raise AssertionError(name + " worked before install()")
        try:
            with rustmalloc.track():
                pass
        except RuntimeError as e:
            check("install()" in str(e), str(e))
        else:
            raise AssertionError("track() worked before install()")
        """
    )


@pytest.mark.parametrize("domain", ["raw", "mem", "obj"])
def test_snapshot_moves_by_exactly_the_blocks_allocated(domain):
    run_python(
        f"""
        import rustmalloc
        rustmalloc.install()
        D = DOMAINS[{domain!r}]

        def cls(snap):
            for c in snap.size_classes:
                if c.domain == {domain!r} and c.block_size == 208:
                    return c.blocks_in_use, c.blocks_free, c.pages
            return 0, 0, 0

        # MEM and OBJ also serve the interpreter (this list, the snapshots): allow it a couple
        # of blocks of this class; RAW is exact.
        slack = 0 if {domain!r} == "raw" else 2
        ptrs = [0] * 500
        before = rustmalloc.stats()
        for i in range(500):
            ptrs[i] = D.malloc(200)
        mid = rustmalloc.stats()
        used0, free0, pages0 = cls(before)
        used1, free1, pages1 = cls(mid)
        check(abs(used1 - used0 - 500) <= slack, (used0, used1))
        check(pages1 * 65536 // 208 >= used1 + free1, "more blocks than the pages hold")
        d0, d1 = before.domains[{domain!r}], mid.domains[{domain!r}]
        if {domain!r} == "raw":   # the interpreter itself is quiet in RAW: exact
            check(d1.blocks_in_use - d0.blocks_in_use == 500, (d0, d1))
            check(d1.bytes_in_use - d0.bytes_in_use == 500 * 208, (d0, d1))
            check(d1.allocs - d0.allocs == 500, (d0, d1))
        check(d1.peak_bytes_in_use >= d1.bytes_in_use)
        for p in ptrs:
            D.free(p)
        after = rustmalloc.stats()
        check(abs(cls(after)[0] - used0) <= slack, (cls(after), used0))
        if {domain!r} == "raw":
            a = after.domains["raw"]
            check(a.blocks_in_use == d0.blocks_in_use and a.bytes_in_use == d0.bytes_in_use, (d0, a))
            check(a.frees - d0.frees == 500, (d0, a))
        """
    )


def test_callocs_reallocs_and_large_blocks_are_counted():
    run_python(
        """
        import rustmalloc
        rustmalloc.install()
        D = DOMAINS["mem"]
        s0 = rustmalloc.stats().domains["mem"]
        p = D.calloc(10, 10)
        p = D.realloc(p, 100_000)            # large: a span of pages
        s1 = rustmalloc.stats().domains["mem"]
        check(s1.callocs - s0.callocs >= 1, (s0, s1))   # the interpreter callocs in MEM too
        check(s1.reallocs - s0.reallocs >= 1, (s0, s1))
        check(s1.large_blocks_in_use - s0.large_blocks_in_use == 1, (s0, s1))
        check(s1.large_bytes_in_use - s0.large_bytes_in_use == 100_000, (s0, s1))
        check(s1.large_allocs - s0.large_allocs == 1, (s0, s1))
        D.free(p)
        s2 = rustmalloc.stats().domains["mem"]
        check(s2.large_blocks_in_use == s0.large_blocks_in_use, (s0, s2))
        check(s2.large_bytes_in_use == s0.large_bytes_in_use, (s0, s2))
        """
    )


def test_blocks_freed_through_another_domain_stay_attributed_to_their_own():
    run_python(
        """
        import rustmalloc
        rustmalloc.install()
        s0 = rustmalloc.stats().domains
        ptrs = [DOMAINS["raw"].malloc(200) for _ in range(300)]
        for p in ptrs:
            DOMAINS["obj"].free(p)      # RAW blocks freed through OBJ
        s1 = rustmalloc.stats().domains
        check(s1["raw"].blocks_in_use == s0["raw"].blocks_in_use, (s0["raw"], s1["raw"]))
        check(s1["raw"].frees - s0["raw"].frees == 300, (s0["raw"], s1["raw"]))
        """
    )


def test_foreign_frees_and_reallocs_are_counted():
    run_python(
        """
        import rustmalloc
        early = [DOMAINS[d].malloc(100) for d in ("raw", "mem", "obj")]
        moved = DOMAINS["mem"].malloc(50)
        rustmalloc.install()
        s0 = rustmalloc.stats().domains
        for d, p in zip(("raw", "mem", "obj"), early):
            DOMAINS[d].free(p)
        moved = DOMAINS["mem"].realloc(moved, 60)
        s1 = rustmalloc.stats().domains
        for d in ("raw", "mem", "obj"):
            check(s1[d].foreign_frees - s0[d].foreign_frees >= 1, (d, s0[d], s1[d]))
        check(s1["mem"].foreign_reallocs - s0["mem"].foreign_reallocs == 1, (s0["mem"], s1["mem"]))
        DOMAINS["mem"].free(moved)
        """
    )


def test_peak_and_reset_peak():
    run_python(
        """
        import rustmalloc
        rustmalloc.install()
        D = DOMAINS["raw"]
        rustmalloc.reset_peak()
        base = rustmalloc.stats().domains["raw"]
        check(base.peak_bytes_in_use == base.bytes_in_use, base)
        ptrs = [D.malloc(1000) for _ in range(8000)]    # 8,000 x 1,024 bytes
        for p in ptrs:
            D.free(p)
        after = rustmalloc.stats().domains["raw"]
        rise = after.peak_bytes_in_use - base.bytes_in_use
        # Peaks are sampled at least once per 256 KiB made available (`stats::SAMPLE_EVERY`), so
        # one may miss that much plus the free blocks of one 64 KiB page (see the README).
        check(8000 * 1024 - (256 + 64) * 1024 <= rise <= 8000 * 1024, rise)
        rustmalloc.reset_peak()
        now = rustmalloc.stats().domains["raw"]
        check(now.peak_bytes_in_use == now.bytes_in_use, now)
        """
    )


def test_peaks_stay_bounded_when_another_thread_frees():
    # One block live at a time, allocated by one thread and freed by another (a thread's state
    # is: its starter allocates it, the thread frees it as it exits). The allocating heap's peak
    # must not climb by every byte ever handed over: it counted 20 MB here, and `limit_memory`
    # failed tests that kept nothing alive.
    run_python(
        """
        import queue, threading
        import rustmalloc
        rustmalloc.install()
        R, M = RAW_NOGIL, DOMAINS["mem"]
        handed, done = queue.Queue(), queue.Queue()

        def freer():
            while (p := handed.get()) is not None:
                R.free(p)
                done.put(1)

        t = threading.Thread(target=freer)
        t.start()
        rustmalloc.reset_peak()
        before = rustmalloc.stats().domains
        with rustmalloc.track() as tr:
            for _ in range(20_000):
                handed.put(R.malloc(1000))    # RAW, freed by the other thread
                done.get()
                handed.put(M.malloc(1000))    # MEM, freed by the other thread through RawFree
                done.get()
        handed.put(None)
        t.join()
        for _ in range(3000):                 # threads started and joined
            th = threading.Thread(target=int)
            th.start()
            th.join()
        after = rustmalloc.stats().domains
        for d in ("raw", "mem"):
            rise = after[d].peak_bytes_in_use - before[d].bytes_in_use
            check(rise < 1 << 20, (d, rise, after[d]))
            check(after[d].bytes_in_use - before[d].bytes_in_use < 64 << 10, (d, after[d]))
        check(tr.peak_bytes < 2 << 20, tr)
        """
    )


def test_huge_blocks_freed_by_another_thread_leave_the_peak():
    run_python(
        """
        import threading
        import rustmalloc
        rustmalloc.install()
        R = RAW_NOGIL
        rustmalloc.reset_peak()
        base = rustmalloc.stats().domains["raw"].bytes_in_use
        for _ in range(40):
            p = R.malloc(8 << 20)             # a huge block: its own mapping
            q = R.malloc(6 << 20)
            def elsewhere():
                R.free(p)
                R.free(R.realloc(q, 7 << 20)) # resized there, then freed
            t = threading.Thread(target=elsewhere)
            t.start()
            t.join()
        rise = rustmalloc.stats().domains["raw"].peak_bytes_in_use - base
        check(14 << 20 <= rise < 16 << 20, rise)
        """
    )


def test_track_leaves_the_stats_peak_alone():
    run_python(
        """
        import rustmalloc
        rustmalloc.install()
        big = bytearray(50_000_000)
        del big
        before = rustmalloc.stats().domains["obj"].peak_bytes_in_use
        check(before >= 50_000_000, before)
        with rustmalloc.track() as t:
            small = bytearray(1_000_000)
            del small
        check(1_000_000 <= t.peak_bytes < 2_000_000, t)
        after = rustmalloc.stats().domains["obj"].peak_bytes_in_use
        check(after >= 50_000_000, ("entering track() reset the peak stats() reports", after))
        rustmalloc.reset_peak()                # the user's reset still resets it
        check(rustmalloc.stats().domains["obj"].peak_bytes_in_use < 50_000_000)
        """
    )


def test_track_measures_and_nests():
    run_python(
        """
        import rustmalloc
        rustmalloc.install()
        with rustmalloc.track() as outer:
            keep = [bytes(1000) for _ in range(1000)]          # ~1 MB kept
            with rustmalloc.track() as inner:
                tmp = bytearray(5_000_000)                     # 5 MB, dropped
                del tmp
            check(inner.peak_bytes >= 5_000_000, inner)
            check(inner.allocated_bytes >= 5_000_000 and inner.freed_bytes >= 5_000_000, inner)
            check(abs(inner.net_bytes) < 50_000, inner)
            seen_inside = outer.allocated_bytes
            check(seen_inside >= 6_000_000, outer)             # live figures inside the block
        # The inner block reset the peaks; the outer one still saw its own peak.
        check(outer.peak_bytes >= 6_000_000, outer)
        check(1_000_000 <= outer.net_bytes < 1_300_000, outer)
        check(outer.allocs >= 1000 and outer.frees >= 1, outer)
        check(outer.net_bytes == outer.allocated_bytes - outer.freed_bytes)
        frozen = outer.allocated_bytes
        junk = [bytes(100) for _ in range(1000)]
        check(outer.allocated_bytes == frozen, "figures must freeze when the block ends")
        print(repr(outer))
        """
    )


def test_track_as_decorator_measures_each_call():
    proc = run_python(
        """
        import rustmalloc
        rustmalloc.install()
        measure = rustmalloc.track()

        @measure
        def build(n):
            return [str(i) for i in range(n)]

        build(10)
        small = measure.last.allocated_bytes
        build(100_000)
        big = measure.last.allocated_bytes
        check(big > 50 * small and big > 1_000_000, (small, big))
        print("ok")
        """
    )
    assert proc.stdout.strip().endswith("ok")


def test_allocated_blocks_replaces_getallocatedblocks():
    run_python(
        """
        import rustmalloc
        rustmalloc.install()
        n0 = rustmalloc.allocated_blocks()
        ptrs = [DOMAINS["raw"].malloc(64) for _ in range(1000)]
        n1 = rustmalloc.allocated_blocks()
        check(n1 - n0 >= 1000, (n0, n1))
        for p in ptrs:
            DOMAINS["raw"].free(p)
        check(rustmalloc.allocated_blocks() < n1 - 900)
        """
    )


def test_concurrent_raw_threads_leave_consistent_totals():
    run_python(
        """
        import rustmalloc, threading
        rustmalloc.install()
        s0 = rustmalloc.stats().domains["raw"]
        def work(seed):
            rng = random.Random(seed)
            live = []
            for i in range(20_000):
                live.append(RAW_NOGIL.malloc(rng.randrange(1, 3000)))
                if len(live) > 200:
                    RAW_NOGIL.free(live.pop(rng.randrange(len(live))))
            for p in live:
                RAW_NOGIL.free(p)
        ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in ts: t.start()
        for t in ts: t.join()
        s1 = rustmalloc.stats().domains["raw"]
        # Thread states of the 4 finished threads are freed; what is left is the interpreter's.
        check(abs(s1.blocks_in_use - s0.blocks_in_use) <= 8, (s0, s1))
        check(s1.allocs - s0.allocs >= 80_000 and s1.frees - s0.frees >= 80_000, (s0, s1))
        """
    )


def test_to_dict_is_json_and_has_every_section():
    proc = run_python(
        """
        import rustmalloc
        rustmalloc.install()
        x = [dict(a=i) for i in range(10_000)]
        d = rustmalloc.stats().to_dict()
        print(json.dumps(d))
        """
    )
    d = json.loads(proc.stdout.strip().splitlines()[-1])
    assert d == json.loads(json.dumps(d))
    for name in ("raw", "mem", "obj"):
        for key in ("bytes_in_use", "blocks_in_use", "peak_bytes_in_use", "allocs", "callocs", "reallocs",
                    "frees", "foreign_frees", "foreign_reallocs", "large_allocs", "large_bytes_in_use"):
            assert isinstance(d["domains"][name][key], int), (name, key)
    classes = d["size_classes"]
    assert classes and all({"block_size", "blocks_in_use", "blocks_free", "pages", "domain", "heap"} <= set(c)
                           for c in classes)
    assert {c["heap"] for c in classes} <= {"gil", "raw"}
    os_ = d["os"]
    assert os_["bytes_mapped"] >= os_["bytes_resident"] > 0
    assert os_["segments_peak"] >= os_["segments"] >= 1
    assert 0.0 <= d["fragmentation"] <= 1.0


def test_resident_estimate_follows_the_os():
    """bytes_resident is measured with mincore over our segments: touching a huge block shows."""
    run_python(
        """
        import rustmalloc
        rustmalloc.install()
        r0 = rustmalloc.stats().os.bytes_resident
        b = bytearray(50 * 1024 * 1024)      # huge block: mapped, zero, not yet touched
        for i in range(0, len(b), 4096):
            b[i] = 1                         # now every page is resident
        r1 = rustmalloc.stats().os.bytes_resident
        check(r1 - r0 >= 49 * 1024 * 1024, (r0, r1))
        del b
        r2 = rustmalloc.stats().os.bytes_resident
        check(r1 - r2 >= 49 * 1024 * 1024, (r1, r2))
        """
    )


def test_format_stats_report():
    proc = run_python(
        """
        import rustmalloc
        rustmalloc.install()
        keep = [str(i) * 10 for i in range(50_000)]
        text = rustmalloc.format_stats()
        rustmalloc.print_stats()
        check(text in sys.stdout.getvalue() if hasattr(sys.stdout, "getvalue") else True)
        """
    )
    out = proc.stdout
    assert "rustmalloc statistics" in out
    assert "MiB" in out or "KiB" in out
    assert "segments" in out and "resident" in out
    lines = [line for line in out.splitlines() if "|" in line and ("#" in line or "." in line)]
    assert len(lines) >= 5, out  # one line per size class with a bar
    assert any("," in line for line in out.splitlines()), "thousands separators"


def test_bad_input_to_the_report_and_track_says_what_to_do():
    run_python(
        """
        import rustmalloc
        rustmalloc.install()
        for bad, kind in ((-3, ValueError), ("30", TypeError), (2.5, TypeError), (True, TypeError)):
            try:
                rustmalloc.format_stats(width=bad)
            except kind as e:
                check("bar length" in str(e), e)
            else:
                raise AssertionError("format_stats(width=%r) was accepted" % (bad,))
        check("|" in rustmalloc.format_stats(width=0))
        t = rustmalloc.track()
        try:
            t.__exit__(None, None, None)
        except RuntimeError as e:
            check("not active" in str(e), e)
        else:
            raise AssertionError("__exit__ of a track() never entered was accepted")
        with t:                                  # still usable afterwards
            x = bytes(10_000)
        check(t.allocated_bytes >= 10_000, t)
        """
    )
