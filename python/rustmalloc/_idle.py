"""The idle purger: a thread that gives free memory back while the program makes no allocation.

rustmalloc's automatic purge runs on a heap's allocation slow path, so a program that drops a
large structure and then waits (a service between requests) would keep that memory resident until
its next burst of allocation. This thread wakes now and then (every 10 ms to 1 s, as the heaps
ask), takes the GIL for a tick in the extension (``_idle_tick``) that runs the pass a slow path
would run if one came, and sleeps again; a heap with nothing more to give back costs a look of a
few hundred loads about once a second. It is a bare ``_thread`` thread: ``threading`` does not
list it. ``configure(idle_purge=False)`` (or ``RUSTMALLOC_IDLE_PURGE=0``) ends it at its next
tick.

The thread does not survive a fork, and the child gets no thread from us at the fork itself:
``fork()`` returns with the child as single-threaded as it promises (``sys._current_frames()``
lists one thread; CPython's test_threading checks that). A child forked from the main thread
starts its own purger at its first garbage collection after the fork (a ``gc.callbacks`` entry
that does nothing otherwise). A child that only execs (``subprocess``) or exits at once never
starts one; a child that goes on running Python allocates, and soon collects.

It never outlives the interpreter: an ``atexit`` handler (run after ``threading`` has joined the
program's threads, before finalization) wakes it and waits for it to end. CPython 3.11 ends a
thread that is still running when finalization starts with ``pthread_exit``, and a thread that
had not started yet then writes into its freed thread state: a process that installed rustmalloc
at startup and exited at once aborted about once in 2,000 runs (``free(): invalid pointer``)
before this handler.
"""

from __future__ import annotations

import _thread
import atexit
import os
import time

from . import _rustmalloc as _ext

#: Wait at most this long at exit for the thread to end (it only has to wake and return).
_EXIT_WAIT_SECONDS = 5.0

_hooks_registered = False
_forked_from_main_thread = True
#: The running thread's (wake, done) locks: `wake` is what it sleeps on (released to wake it
#: early), `done` is held by it until it returns. None when no thread was started here.
_locks = None
_stopping = False
#: The running thread's native id (`_thread.get_native_id`), to wait for its end at exit.
_native_id = None
#: A fork child's purger is due at its next garbage collection (see `_start_at_collection`).
_start_pending = False
#: This process is (or descends from) a child forked from another thread than the main one: it
#: lives until that thread ends, with no atexit, so a thread of ours would keep it alive.
_no_thread_here = False
#: `_stop` has run (interpreter exit): no thread may start after it, from a later atexit handler.
_exiting = False


def start() -> None:
    """Start the thread if the idle purger is on and none runs in this process. If the thread
    cannot be started (no threads left: a pids limit), rustmalloc goes on without it."""
    global _locks, _stopping
    if _no_thread_here or _exiting:
        return
    _register_hooks()
    if not _ext._idle_purger_claim():
        return
    wake, done = _thread.allocate_lock(), _thread.allocate_lock()
    wake.acquire()
    done.acquire()
    _stopping = False
    try:
        if _only_thread():
            # CPython's RAW blocks for the new thread come from the allocator before ours (see
            # `_start_thread_outside_raw`): a `.pth` install starts this thread just before
            # CPython swaps RAW to its default allocator for a moment.
            _ext._start_thread_outside_raw(_run, (wake, done))
        else:
            _thread.start_new_thread(_run, (wake, done))
    except RuntimeError as e:  # "can't start new thread"
        _ext._idle_purger_gone()
        import warnings

        warnings.warn(f"rustmalloc: the idle purger thread could not start ({e}); free memory goes "
                      "back to the OS on allocation slow paths only", RuntimeWarning, stacklevel=3)
        return
    _locks = (wake, done)


def _only_thread() -> bool:
    """Whether this process has one thread (the caller), by the kernel's count, native threads
    included. False when it cannot tell."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Threads:"):
                    return int(line.split()[1]) == 1
    except (OSError, ValueError):
        pass
    return False


def _register_hooks() -> None:
    global _hooks_registered
    if _hooks_registered:
        return
    atexit.register(_stop)
    # The thread does not survive a fork: the child starts its own (see `_after_fork_in_child`).
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    _hooks_registered = True


def _run(wake, done) -> None:
    global _native_id
    _native_id = _thread.get_native_id()
    tick, gone = _ext._idle_tick, _ext._idle_purger_gone
    try:
        while not _stopping:
            seconds = tick()
            if seconds <= 0:
                return  # turned off; `_idle_tick` marked the thread gone
            wake.acquire(True, seconds)  # sleeps with the GIL released; `_stop` wakes it
    except BaseException:
        # Never print from this thread (a thread writing to stderr near shutdown can hold the
        # stream's lock when the main thread needs it): just end.
        gone()
    finally:
        done.release()


def _stop() -> None:
    """atexit: end the thread and wait for it, so that none runs into finalization."""
    global _stopping, _exiting
    _exiting = True
    if _locks is None:
        return
    wake, done = _locks
    _stopping = True
    if wake.locked():
        wake.release()
    deadline = time.monotonic() + _EXIT_WAIT_SECONDS
    if done.acquire(True, _EXIT_WAIT_SECONDS):
        done.release()
        # `done` is released inside `_run`; the thread then still returns through CPython, which
        # frees its thread state with PyMem_RawFree after releasing the GIL. Finalization swaps
        # the RAW domain to the default allocator for moments (`_PyImport_Fini2`), and a free of
        # our block in such a moment goes to glibc: "free(): invalid pointer" (CI's test_io, about
        # once in thousands of quick exits). So wait for the OS thread itself to be gone.
        task = f"/proc/self/task/{_native_id}"
        while _native_id is not None and os.path.exists(task) and time.monotonic() < deadline:
            time.sleep(0.0005)
    _ext._idle_purger_gone()


def _before_fork() -> None:
    global _forked_from_main_thread
    import sys

    threading = sys.modules.get("threading")
    main = getattr(threading, "_main_thread", None)  # None: not (fully) imported
    _forked_from_main_thread = main is None or getattr(main, "ident", None) == _thread.get_ident()


def _after_fork_in_child() -> None:
    global _locks, _start_pending, _native_id, _no_thread_here
    _ext._idle_purger_gone()
    _locks = None
    _native_id = None
    _start_pending = False
    # A child forked from another thread than the main one lives until that thread ends (no
    # finalization, no atexit): a thread of ours would keep it alive. It goes without, and so
    # do its own children (it never had a main thread), whatever `configure()` asks.
    _no_thread_here = _no_thread_here or not _forked_from_main_thread
    if not _no_thread_here and _ext._installed_mask():
        # Not now: the child of fork() must come back with one thread (see the module doc).
        import gc

        _start_pending = True
        if _start_at_collection not in gc.callbacks:
            gc.callbacks.append(_start_at_collection)


def _start_at_collection(phase: str, info: dict) -> None:
    """gc callback, in fork children: start the purger after the first collection. Stays in
    ``gc.callbacks`` afterwards (taking it out while the collector walks that list would make it
    skip the next callback), doing nothing but this test."""
    global _start_pending
    if _start_pending and phase == "stop":
        _start_pending = False
        start()
