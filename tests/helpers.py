"""Shared helpers for the rustmalloc test suite.

``rustmalloc.install()`` is process-wide and irreversible, so every scenario that installs the
allocator runs in a fresh interpreter started with ``sys.executable``.  ``run_python`` starts one,
waits for it with a timeout and fails the calling test with the child's stdout/stderr when it does
not exit the way it should (a negative status is reported by signal name, e.g. SIGSEGV).

``PRELUDE`` is Python source that scenario scripts can start with: it binds all twelve allocator
functions of the three domains through ``ctypes.pythonapi`` (calls keep the GIL), the four RAW
functions once more through ``ctypes.CDLL(None)`` (calls release the GIL, so RAW can be hammered
from several threads at once), and defines small utilities (pattern writing and checking, stats).
Nothing here imports rustmalloc at import time: the test modules must collect without it.
"""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

DEFAULT_TIMEOUT = 90  # seconds; a hang is a failure, never a skip

# Sizes beyond the small range that every per-domain scenario covers.
BIG_SIZES = [8 * 1024, 16 * 1024 - 1, 16 * 1024 + 1, 32 * 1024 - 1, 32 * 1024, 32 * 1024 + 1, 33 * 1024,
             64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 100 * 1024, 1 << 20, 3 << 20,
             (4 << 20) - 16, 4 << 20, (4 << 20) + 1, 10 << 20]   # 32 KiB, 64 KiB, 4 MiB: internal limits

PRELUDE = r'''
import ctypes, gc, json, os, random, sys, types
from ctypes import c_void_p, c_size_t

_API = ctypes.pythonapi        # PyDLL: the GIL stays held during calls
_NOGIL = ctypes.CDLL(None)     # CDLL: the GIL is released during calls (RAW functions only!)

def _bind(lib, name, prefix):
    m = lib[prefix + "Malloc"];  m.restype = c_void_p; m.argtypes = [c_size_t]
    c = lib[prefix + "Calloc"];  c.restype = c_void_p; c.argtypes = [c_size_t, c_size_t]
    r = lib[prefix + "Realloc"]; r.restype = c_void_p; r.argtypes = [c_void_p, c_size_t]
    f = lib[prefix + "Free"];    f.restype = None;     f.argtypes = [c_void_p]
    return types.SimpleNamespace(name=name, malloc=m, calloc=c, realloc=r, free=f)

DOMAINS = {
    "raw": _bind(_API, "raw", "PyMem_Raw"),
    "mem": _bind(_API, "mem", "PyMem_"),
    "obj": _bind(_API, "obj", "PyObject_"),
}
RAW_NOGIL = _bind(_NOGIL, "raw", "PyMem_Raw")

SMALL_SIZES = list(range(0, 4097))
BIG_SIZES = %(big_sizes)r
# every odd size up to 4096 plus every multiple of 16 and its neighbours (class boundaries)
SWEEP_SIZES = sorted(set(list(range(1, 4097, 2)) + [s + d for s in range(16, 4097, 16) for d in (-1, 0, 1)
                                                   if 0 < s + d <= 4096]))

def check(cond, msg="check failed"):
    if not cond:
        raise AssertionError(msg)

def write(addr, data):
    ctypes.memmove(addr, data, len(data))

def read(addr, size):
    return ctypes.string_at(addr, size) if size else b""

def pattern(seed, size):
    """Deterministic pseudo-random bytes, different for every seed."""
    return random.Random(seed).randbytes(size)

def tagged(bid, size):
    """Cheap per-block content: the 8-byte block id, then one repeated byte derived from it."""
    head = bid.to_bytes(8, "little")
    return (head + bytes([bid %% 251 + 1]) * max(0, size - 8))[:size]

def rm_stats():
    import rustmalloc
    return rustmalloc.stats().to_dict()

def dstat(domain, key="blocks_in_use"):
    return rm_stats()["domains"][domain][key]

def vm_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)

def python_churn(n=2000, seed=0):
    """Some ordinary interpreter work; returns a deterministic digest."""
    rng = random.Random(seed)
    d = {"k%%d" %% i: [i] * (i %% 7) for i in range(n)}
    for i in range(0, n, 3):
        del d["k%%d" %% i]
    s = json.dumps({k: v for k, v in d.items() if len(v) %% 2}, sort_keys=True)
    junk = [(str(rng.random()), bytes(rng.randrange(600))) for _ in range(n // 10)]
    return len(s) + sum(len(b) for _, b in junk)
''' % {"big_sizes": BIG_SIZES}


def _signal_name(rc):
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return "signal %d" % -rc


def _tail(text, limit=12000):
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text if len(text) <= limit else "...[%d chars cut]...\n%s" % (len(text) - limit, text[-limit:])


def run_python(code, *, args=(), argv=(), prelude=True, timeout=DEFAULT_TIMEOUT, env=None,
               extra_env=None, preexec_fn=None, expect_rc=0, expect_empty_stderr=False):
    """Run ``code`` in a fresh interpreter and return the CompletedProcess.

    Fails the current test (showing stdout/stderr) if the child times out, exits with a status other
    than ``expect_rc`` (None: don't check), or, with ``expect_empty_stderr``, writes anything to
    stderr.  ``args`` go before ``-c`` (interpreter options), ``argv`` after the code (sys.argv[1:]).
    """
    source = textwrap.dedent(code)
    if prelude:
        source = PRELUDE + "\n" + source
    cmd = [sys.executable, "-X", "faulthandler", *args, "-c", source, *argv]
    child_env = dict(os.environ if env is None else env)
    if extra_env:
        child_env.update(extra_env)
    timed_out = None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env,
                              preexec_fn=preexec_fn, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        timed_out = exc
    if timed_out is not None:
        pytest.fail("child interpreter timed out after %ss (hang or deadlock?)\n--- stdout ---\n%s\n"
                    "--- stderr ---\n%s" % (timeout, _tail(timed_out.stdout), _tail(timed_out.stderr)),
                    pytrace=False)
    problems = []
    if expect_rc is not None and proc.returncode != expect_rc:
        if proc.returncode < 0:
            problems.append("child killed by %s (expected exit status %s)"
                            % (_signal_name(proc.returncode), expect_rc))
        else:
            problems.append("child exit status %s (expected %s)" % (proc.returncode, expect_rc))
    if expect_empty_stderr and proc.stderr:
        problems.append("child wrote to stderr (expected nothing)")
    if problems:
        pytest.fail("%s\n--- stdout ---\n%s\n--- stderr ---\n%s"
                    % ("; ".join(problems), _tail(proc.stdout), _tail(proc.stderr)), pytrace=False)
    return proc
