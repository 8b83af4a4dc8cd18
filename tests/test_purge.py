"""Giving memory back: trim(), the automatic policy, purged pages reused, the knobs."""

import pytest

from helpers import run_python


def test_trim_gives_memory_back_and_rss_drops():
    run_python(
        """
        import rustmalloc
        rustmalloc.install()
        def rss_mb():
            return vm_kib("VmRSS") // 1024
        items = [{"s": str(i), "t": (i, i + 1), "l": [i, i, i]} for i in range(400_000)]
        built = rss_mb()
        keep = items[::1000]
        del items
        gc.collect()
        returned = rustmalloc.trim()
        after = rss_mb()
        # Generous margins: only the direction and the order of magnitude are asserted.
        check(returned > 50 * 1024 * 1024, returned)
        check(after < built - 50, (built, after))
        s = rustmalloc.stats()
        check(s.os.bytes_returned >= returned, s.os)
        # Survivors intact.
        check(all(d["t"][1] == d["t"][0] + 1 and d["s"] == str(d["t"][0]) for d in keep))
        """
    )


def test_purged_pages_are_reused_correctly():
    run_python(
        """
        import rustmalloc
        rustmalloc.install()
        for domain in ("raw", "mem", "obj"):
            D = DOMAINS[domain]
            ptrs = [D.malloc(48) for _ in range(100_000)]
            for i, p in enumerate(ptrs):
                write(p, tagged(i, 48))
            keep = {i: p for i, p in enumerate(ptrs) if i % 300 == 0}
            for i, p in enumerate(ptrs):
                if i not in keep:
                    D.free(p)
            rustmalloc.trim()
            for i, p in keep.items():
                check(read(p, 48) == tagged(i, 48), "survivor corrupted by purge")
            # Reuse purged memory: calloc'd blocks are zero, written blocks keep their data.
            fresh = [D.calloc(1, 48) for _ in range(100_000)]
            for j, p in enumerate(fresh):
                check(read(p, 48) == bytes(48), "calloc'd block from a purged page is not zero")
                write(p, tagged(j + 1_000_000, 48))
            for j, p in enumerate(fresh):
                check(read(p, 48) == tagged(j + 1_000_000, 48))
                D.free(p)
            for i, p in keep.items():
                check(read(p, 48) == tagged(i, 48))
                D.free(p)
        """
    )


def test_automatic_policy_returns_memory_when_the_program_goes_on():
    run_python(
        """
        import rustmalloc, time
        rustmalloc.install()
        rustmalloc.configure(purge_delay_ms=50, retain_bytes=0)
        items = [[str(i)] * 3 for i in range(300_000)]
        keep = items[::1000]
        del items
        gc.collect()
        before = rustmalloc.stats().os.bytes_returned
        t = time.time()
        while time.time() - t < 0.5:          # go on allocating: slow paths run the policy
            junk = [str(i) for i in range(1000)]
        after = rustmalloc.stats().os.bytes_returned
        check(after - before > 10 * 1024 * 1024, (before, after))
        """
    )


def test_configure_validates_and_reports():
    run_python(
        """
        import rustmalloc
        s = rustmalloc.configure(purge_delay_ms=1000, retain_bytes="8 MiB", purge=True)
        check(s == {"purge": True, "purge_delay_ms": 1000, "retain_bytes": 8 * 1024 * 1024}, s)
        check(rustmalloc.configure(retain_bytes="1.5KB")["retain_bytes"] == 1500)
        for bad, exc in ((dict(purge_delay_ms=-1), ValueError), (dict(purge_delay_ms="5"), TypeError),
                         (dict(retain_bytes="12 parsecs"), ValueError), (dict(purge="yes"), TypeError),
                         (dict(retain_bytes=-5), ValueError), (dict(purge_delay_ms=10**9), ValueError)):
            try:
                rustmalloc.configure(**bad)
            except exc as e:
                check(str(e), "empty message")
            else:
                raise AssertionError("accepted %r" % bad)
        check(rustmalloc.configure()["purge_delay_ms"] == 1000, "a rejected call changed nothing")
        try:
            rustmalloc.trim()
        except RuntimeError as e:
            check("install()" in str(e))
        else:
            raise AssertionError("trim() before install()")
        """
    )


@pytest.mark.parametrize(
    "env, expect",
    [
        ({"RUSTMALLOC_PURGE_DELAY_MS": "42", "RUSTMALLOC_RETAIN_BYTES": "2MiB", "RUSTMALLOC_PURGE": "0"},
         "{'purge': False, 'purge_delay_ms': 42, 'retain_bytes': 2097152}"),
        ({"RUSTMALLOC_PURGE_DELAY_MS": "soon"}, "RUSTMALLOC_PURGE_DELAY_MS"),
        ({"RUSTMALLOC_RETAIN_BYTES": "lots"}, "retain_bytes"),
    ],
)
def test_environment_variables(env, expect):
    proc = run_python(
        """
        import rustmalloc
        try:
            rustmalloc.install()
        except ValueError as e:
            print("error:", e)
            check(rustmalloc.installed() == (), "a bad setting must not install")
        else:
            print(rustmalloc.configure())
        """,
        extra_env=env,
    )
    assert expect in proc.stdout, proc.stdout
