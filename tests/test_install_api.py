"""install() argument validation, installed(), idempotence, stats() before/after install, foreign hooks."""

import importlib.util
import json

import pytest

from helpers import run_python

HAVE_TESTCAPI = importlib.util.find_spec("_testcapi") is not None


def test_installed_is_empty_before_install():
    run_python("""
        import rustmalloc
        check(rustmalloc.installed() == (), repr(rustmalloc.installed()))
    """)


@pytest.mark.parametrize("call", ["stats", "trim"])
def test_calls_before_install_raise_runtimeerror(call):
    proc = run_python("""
        import rustmalloc
        try:
            rustmalloc.%s()
        except RuntimeError as e:
            print("MSG:", e)
        else:
            raise AssertionError("%s() before install() did not raise")
        check(rustmalloc.installed() == ())
    """ % (call, call))
    msg = proc.stdout.split("MSG:", 1)[1]
    assert "install()" in msg, msg


@pytest.mark.parametrize("arg, expected", [
    ('("raw", "mem", "obj")', ("raw", "mem", "obj")),
    (None, ("raw", "mem", "obj")),  # install() with no argument
    ('("raw",)', ("raw",)),
    ('"raw"', ("raw",)),
    ('["raw"]', ("raw",)),
    ('("raw", "raw")', ("raw",)),
    ('("mem", "obj")', ("mem", "obj")),
    ('("obj", "mem")', ("mem", "obj")),
    ('["obj", "mem", "obj"]', ("mem", "obj")),
    ('("obj", "raw", "mem")', ("raw", "mem", "obj")),
    ('("mem", "raw", "obj", "raw")', ("raw", "mem", "obj")),
    ('frozenset({"mem", "obj", "raw"})', ("raw", "mem", "obj")),
    ('iter(["mem", "obj"])', ("mem", "obj")),
], ids=lambda v: "default" if v is None else str(v))
def test_install_accepted_domain_sets(arg, expected):
    call = "rustmalloc.install()" if arg is None else "rustmalloc.install(%s)" % arg
    run_python("""
        import rustmalloc
        ret = %s
        got = rustmalloc.installed()
        check(got == %r, "installed() -> %%r" %% (got,))
        check(isinstance(got, tuple))
        # the interpreter keeps working and stats() now works
        check(python_churn() > 0)
        d = rm_stats()
        for dom in got:
            check(dom in d["domains"], (dom, d))
        print("installed", got)
    """ % (call, expected))


@pytest.mark.parametrize("arg, needle", [
    ('("mem",)', None),
    ('("obj",)', None),
    ('"mem"', None),
    ('("raw", "obj")', None),
    ('("raw", "mem")', None),
    ("()", None),
    ("[]", None),
    ('("bogus",)', "bogus"),
    ('"bogus"', "bogus"),
    ('("raw", "mem", "obj", "bogus")', "bogus"),
], ids=lambda v: str(v))
def test_install_rejects_invalid_domain_sets(arg, needle):
    proc = run_python("""
        import rustmalloc
        try:
            rustmalloc.install(%s)
        except ValueError as e:
            msg = str(e)
        else:
            raise AssertionError("install(%s) did not raise ValueError")
        print("MSG:", msg)
        check(rustmalloc.installed() == (), "a rejected install() installed %%r" %% (rustmalloc.installed(),))
        try:
            rustmalloc.stats()
        except RuntimeError:
            pass
        else:
            raise AssertionError("stats() works after a rejected install()")
        # a valid install still works afterwards
        rustmalloc.install()
        check(rustmalloc.installed() == ("raw", "mem", "obj"))
        check(python_churn() > 0)
    """ % (arg, arg.replace('"', "'")))
    msg = proc.stdout.split("MSG:", 1)[1].strip()
    # the message names the valid sets
    for name in ("raw", "mem", "obj"):
        assert name in msg, "ValueError message does not name the valid sets: %r" % msg
    if needle:
        assert needle in msg, "ValueError message does not name the bad domain %r: %r" % (needle, msg)


@pytest.mark.parametrize("arg", ["5", "3.5", "None", '(b"raw",)', '("raw", 5)', '["mem", "obj", None]',
                                 "(1, 2)"])
def test_install_type_errors(arg):
    proc = run_python("""
        import rustmalloc
        try:
            rustmalloc.install(%s)
        except TypeError as e:
            print("MSG:", e)
        else:
            raise AssertionError("install(%s) did not raise TypeError")
        check(rustmalloc.installed() == ())
        rustmalloc.install()
        check(rustmalloc.installed() == ("raw", "mem", "obj"))
    """ % (arg, arg.replace('"', "'")))
    assert proc.stdout.split("MSG:", 1)[1].strip(), "TypeError without a message"


@pytest.mark.parametrize("calls, expected", [
    (["()", "()"], ("raw", "mem", "obj")),
    (['("raw",)', "()"], ("raw", "mem", "obj")),
    (['("mem", "obj")', '("raw",)'], ("raw", "mem", "obj")),
    (['("raw",)', '("raw",)'], ("raw",)),
    (['("mem", "obj")', '("obj", "mem")'], ("mem", "obj")),
    (['("raw",)', '("mem", "obj")'], ("raw", "mem", "obj")),
    (["()", '("raw",)'], ("raw", "mem", "obj")),
    (["()", '("mem", "obj")', "()"], ("raw", "mem", "obj")),
], ids=lambda v: str(v))
def test_install_idempotent_and_additive(calls, expected):
    body = []
    for i, c in enumerate(calls):
        body.append("rustmalloc.install(%s)" % ("" if c == "()" else c))
        body.append("check(python_churn(seed=%d) > 0)" % i)
        body.append("ps = [DOMAINS[d].malloc(100) for d in ('raw', 'mem', 'obj')]")
        body.append("[DOMAINS[d].free(p) for d, p in zip(('raw', 'mem', 'obj'), ps)]")
    run_python("""
        import rustmalloc
        %s
        got = rustmalloc.installed()
        check(got == %r, "installed() -> %%r" %% (got,))
        # after install, an invalid call still raises and changes nothing
        try:
            rustmalloc.install(("bogus",))
        except ValueError:
            pass
        else:
            raise AssertionError("no ValueError after install")
        check(rustmalloc.installed() == got)
    """ % ("\n        ".join(body), expected))


def test_partial_install_routes_domains():
    """install(("raw",)) takes RAW only; install(("mem","obj")) takes MEM and OBJ only (checked with owns())."""
    run_python("""
        import rustmalloc
        from rustmalloc._rustmalloc import owns
        rustmalloc.install(("raw",))
        p = DOMAINS["raw"].malloc(100); check(owns(p), "RAW block not owned after install(('raw',))")
        q = DOMAINS["mem"].malloc(100); check(not owns(q), "small MEM block owned after install(('raw',)) only")
        r = DOMAINS["obj"].malloc(100); check(not owns(r), "small OBJ block owned after install(('raw',)) only")
        for d, x in (("raw", p), ("mem", q), ("obj", r)):
            DOMAINS[d].free(x)
        # now add MEM and OBJ
        rustmalloc.install(("mem", "obj"))
        for d in ("raw", "mem", "obj"):
            for n in (0, 1, 100, 512, 513, 5000, 1 << 20):
                x = DOMAINS[d].malloc(n)
                check(x is not None and owns(x), (d, n))
                DOMAINS[d].free(x)
    """)
    run_python("""
        import rustmalloc
        from rustmalloc._rustmalloc import owns
        rustmalloc.install(("mem", "obj"))
        p = DOMAINS["raw"].malloc(100); check(not owns(p), "RAW block owned after install(('mem','obj'))")
        DOMAINS["raw"].free(p)
        for d in ("mem", "obj"):
            for n in (0, 1, 100, 512, 513, 5000, 1 << 20):
                x = DOMAINS[d].malloc(n)
                check(x is not None and owns(x), (d, n))
                DOMAINS[d].free(x)
        check(python_churn() > 0)
    """)


def test_forward_only_hooks_forward_and_their_mode_is_fixed():
    """The benchmarks' forward-only hooks (rustmalloc-fwd) own no block, and an install in the
    other mode afterwards raises instead of returning silently with the hooks unchanged (found by
    a review: the benchmark's forward-only configuration could have measured the allocator)."""
    run_python("""
        import rustmalloc
        from rustmalloc._rustmalloc import owns, _forward_only_in_force
        rustmalloc._install_forward_only()
        check(rustmalloc.installed() == ("raw", "mem", "obj") and _forward_only_in_force())
        for d in ("raw", "mem", "obj"):
            x = DOMAINS[d].malloc(100)
            check(x is not None and not owns(x), d)
            DOMAINS[d].free(x)
        for call in (rustmalloc.install, lambda: rustmalloc.install(("mem", "obj"))):
            try:
                call()
            except RuntimeError as e:
                check("already installed in the other mode" in str(e), str(e))
            else:
                raise AssertionError("install() after _install_forward_only() did not raise")
        check(_forward_only_in_force())
    """)
    run_python("""
        import rustmalloc
        from rustmalloc._rustmalloc import _forward_only_in_force
        rustmalloc.install()
        try:
            rustmalloc._install_forward_only()
        except RuntimeError as e:
            check("already installed in the other mode" in str(e), str(e))
        else:
            raise AssertionError("_install_forward_only() after install() did not raise")
        check(not _forward_only_in_force())
    """)


def test_stats_snapshot_json_roundtrip_and_immutable():
    proc = run_python("""
        import rustmalloc
        rustmalloc.install()
        python_churn()
        p = DOMAINS["raw"].malloc(1000)
        snap = rustmalloc.stats()
        d1 = snap.to_dict()
        check(isinstance(d1, dict))
        text = json.dumps(d1)
        check(json.loads(text) == d1, "to_dict() does not survive a JSON round trip")
        for dom in ("raw", "mem", "obj"):
            for key in ("bytes_in_use", "blocks_in_use"):
                v = d1["domains"][dom][key]
                check(type(v) is int and 0 <= v < 2**62, (dom, key, v))
            check(d1["domains"][dom]["bytes_in_use"] >= d1["domains"][dom]["blocks_in_use"], dom)
        for key in ("created", "abandoned"):
            v = d1["raw_heaps"][key]
            check(type(v) is int and 0 <= v < 2**62, (key, v))
        check(d1["raw_heaps"]["created"] >= 1, d1["raw_heaps"])
        check(d1["raw_heaps"]["abandoned"] <= d1["raw_heaps"]["created"], d1["raw_heaps"])
        check(d1["domains"]["raw"]["blocks_in_use"] >= 1)
        # the snapshot does not change with later allocations
        keep = [DOMAINS[dom].malloc(64) for dom in ("raw", "mem", "obj") for _ in range(500)]
        junk = [str(i) * 5 for i in range(10000)]
        check(snap.to_dict() == d1, "snapshot changed after later allocations")
        # mutating the returned dict does not change the snapshot
        d2 = snap.to_dict()
        d2["domains"]["raw"]["blocks_in_use"] = -1
        d2.clear()
        check(snap.to_dict() == d1, "to_dict() returns shared mutable state")
        # a new snapshot sees the new blocks
        check(rustmalloc.stats().to_dict()["domains"]["raw"]["blocks_in_use"]
              >= d1["domains"]["raw"]["blocks_in_use"] + 500)
        # immutable: no new attributes
        try:
            snap.some_new_attribute = 1
        except (AttributeError, TypeError):
            pass
        else:
            raise AssertionError("stats snapshot accepts new attributes")
        for j, dom in enumerate(("raw", "mem", "obj")):
            for x in keep[j * 500:(j + 1) * 500]:
                DOMAINS[dom].free(x)
        DOMAINS["raw"].free(p)
        print(text)
    """)
    json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("pythonmalloc", ["malloc", "debug", "malloc_debug"])
def test_pythonmalloc_environment(pythonmalloc):
    """With PYTHONMALLOC=malloc or the debug hooks, the current allocator is a known one: install() wraps
    it, and blocks from before install() go back to it (the debug hooks would abort on a mismatch)."""
    run_python("""
        import rustmalloc
        from rustmalloc._rustmalloc import owns
        before = [DOMAINS[d].malloc(200) for d in ("raw", "mem", "obj")]
        data = [str(i) for i in range(50000)]
        grow = [[i] for i in range(5000)]
        rustmalloc.install()
        for l in grow:
            l.extend(range(100))        # reallocs of pre-install blocks
        del grow
        check(rustmalloc.installed() == ("raw", "mem", "obj"))
        for d, p in zip(("raw", "mem", "obj"), before):
            check(not owns(p))
            DOMAINS[d].free(p)
        del data
        check(python_churn() > 0)
    """, extra_env={"PYTHONMALLOC": pythonmalloc}, expect_empty_stderr=True)


@pytest.mark.parametrize("pythonmalloc", ["debug", "malloc_debug"])
def test_debug_hooks_blocks_inside_ours_go_back_to_them(pythonmalloc):
    """Over the debug hooks, a list grown after install() from a pre-install block is reallocated
    by them, over pymalloc, which takes requests over 512 bytes from PyMem_RawMalloc (ours): the
    list's items pointer lies 16 bytes (their header) inside one of our blocks. Its free must go
    to the debug hooks, not be taken for a block of ours (which would put a pointer 16 bytes into
    a block on a free list)."""
    run_python("""
        import rustmalloc
        from rustmalloc._rustmalloc import owns, _owns_block_start, _check_heaps
        grow = [[i] for i in range(2000)]
        rustmalloc.install()
        for l in grow:
            l.extend(range(100))                      # a realloc of a pre-install block
        items = [ctypes.c_void_p.from_address(id(l) + 24).value for l in grow]  # ob_item
        inside = [p for p in items if owns(p) and not _owns_block_start(p)]
        if PYTHONMALLOC == "debug":
            check(len(inside) > 1000, f"{len(inside)} of {len(items)} inside our blocks")
        del grow, items                               # the frees: back to the debug hooks
        _check_heaps()
        for _ in range(3):
            junk = [[j] * 120 for j in range(3000)]   # reuse the freed memory
            del junk
        _check_heaps()
        check(python_churn() > 0)
    """.replace("PYTHONMALLOC", repr(pythonmalloc)), extra_env={"PYTHONMALLOC": pythonmalloc},
        expect_empty_stderr=True)


@pytest.mark.skipif(not HAVE_TESTCAPI, reason="_testcapi is not available in this CPython build")
def test_install_refuses_unknown_allocator_hook():
    proc = run_python("""
        import _testcapi, rustmalloc
        # hooks that wrap the current allocators and fail only after 10**9 requests (i.e. never here)
        _testcapi.set_nomemory(10**9, 0)
        try:
            rustmalloc.install()
        except RuntimeError as e:
            print("MSG:", e)
        else:
            raise AssertionError("install() over an unknown allocator hook did not raise RuntimeError")
        check(rustmalloc.installed() == (), rustmalloc.installed())
        check(python_churn() > 0)
        _testcapi.remove_mem_hooks()
        # with the hooks gone, install() works
        rustmalloc.install()
        check(rustmalloc.installed() == ("raw", "mem", "obj"))
        check(python_churn() > 0)
    """)
    msg = proc.stdout.split("MSG:", 1)[1].strip().lower()
    assert msg, "RuntimeError without a message"
    assert "alloc" in msg or "hook" in msg, "RuntimeError does not name the cause: %r" % msg
