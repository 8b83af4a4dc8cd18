"""The idle purger: a thread that gives free memory back while the program makes no allocation.

rustmalloc's automatic purge runs on a heap's allocation slow path, so a program that drops a
large structure and then waits (a service between requests) would keep that memory resident until
its next burst of allocation. This thread wakes now and then (every 10 ms to 1 s, as the heaps
ask), takes the GIL for a tick in the extension (``_idle_tick``) that runs the pass a slow path
would run if one came, and sleeps again; a heap with nothing more to give back costs a look of a
few hundred loads about once a second. It is a bare ``_thread`` thread: ``threading`` does not
list it and interpreter shutdown does not wait for it; it ends by itself once the interpreter's
main thread has (in the child of a fork made from another thread, the process lives until its
last thread ends). ``configure(idle_purge=False)`` (or ``RUSTMALLOC_IDLE_PURGE=0``) ends it at
its next tick.
"""

from __future__ import annotations

import _thread
import os
import sys
import time

from . import _rustmalloc as _ext

_fork_hook_registered = False


def start() -> None:
    """Start the thread if the idle purger is on and none runs in this process."""
    global _fork_hook_registered
    if not _fork_hook_registered:
        # The thread does not survive a fork: the child starts its own.
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_registered = True
    if _ext._idle_purger_claim():
        try:
            _thread.start_new_thread(_run, ())
        except BaseException:
            _ext._idle_purger_gone()
            raise


def _run() -> None:
    tick, sleep = _ext._idle_tick, time.sleep
    try:
        while _main_thread_alive():
            seconds = tick()
            if seconds <= 0:
                return  # turned off; `_idle_tick` marked the thread gone
            sleep(seconds)
        # The interpreter's main thread has ended: at shutdown, or in the child of a fork made
        # from another thread, whose process ends only when its last thread does (this one must
        # not keep it alive).
        _ext._idle_purger_gone()
    except BaseException:
        _ext._idle_purger_gone()
        raise


def _main_thread_alive() -> bool:
    # `threading` may be absent, or half imported (this thread runs while another imports it).
    main_thread = getattr(sys.modules.get("threading"), "main_thread", None)
    try:
        return main_thread is None or main_thread().is_alive()
    except Exception:
        return True


def _after_fork_in_child() -> None:
    _ext._idle_purger_gone()
    if _ext._installed_mask():
        start()
