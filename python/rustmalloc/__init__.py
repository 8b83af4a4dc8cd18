"""rustmalloc: a Rust size-class pool allocator for CPython's RAW, MEM and OBJ domains.

Call :func:`install` once; from then on ``PyMem_RawMalloc``, ``PyMem_Malloc`` and
``PyObject_Malloc`` (and their calloc/realloc/free) are served by rustmalloc. Blocks allocated
before the call are still freed by the allocator that made them. Installation is process-wide
and cannot be undone: blocks rustmalloc handed out must stay freeable until the process exits.
"""

from __future__ import annotations

import sys
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers read it as True)

from . import _rustmalloc as _ext

#: The allocator domains, in CPython's order (PYMEM_DOMAIN_RAW, _MEM, _OBJ).
from ._env import DOMAINS as DOMAINS

# The sets of domains install() and RUSTMALLOC accept. MEM and OBJ go together: with only one
# replaced, a block freed through the other domain's function (which pymalloc tolerates) would
# reach pymalloc, and from there libc's free().
from ._env import SETS as _ACCEPTED

if TYPE_CHECKING:  # at run time these load on first use (below): `import rustmalloc` stays
    # cheap, which matters because the startup hook imports it in every interpreter.
    from typing import Iterable, Union

    from ._config import configure, parse_size
    from ._stats import (
        DomainStats,
        OsStats,
        SizeClassStats,
        Snapshot,
        allocated_blocks,
        format_stats,
        print_stats,
        reset_peak,
        stats,
        track,
    )

_LAZY = {
    "configure": "._config",
    "parse_size": "._config",
    "DomainStats": "._stats",
    "OsStats": "._stats",
    "SizeClassStats": "._stats",
    "Snapshot": "._stats",
    "allocated_blocks": "._stats",
    "format_stats": "._stats",
    "print_stats": "._stats",
    "reset_peak": "._stats",
    "stats": "._stats",
    "track": "._stats",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rustmalloc' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DOMAINS",
    "DomainStats",
    "OsStats",
    "SizeClassStats",
    "Snapshot",
    "allocated_blocks",
    "configure",
    "format_stats",
    "install",
    "installed",
    "print_stats",
    "reset_peak",
    "stats",
    "track",
    "trim",
]



def _domain_mask(domains: "Union[str, Iterable[str]]") -> int:
    if isinstance(domains, str):
        items: tuple = (domains,)
    else:
        try:
            items = tuple(domains)
        except TypeError:
            raise TypeError(
                "domains must be an iterable of domain names such as ('raw', 'mem', 'obj'), "
                f"not {type(domains).__name__}"
            ) from None
    for item in items:
        if not isinstance(item, str):
            raise TypeError(
                f"domain names must be str ('raw', 'mem' or 'obj'), not {type(item).__name__}: {item!r}"
            )
        if item not in DOMAINS:
            raise ValueError(f"unknown domain {item!r}: the domains are 'raw', 'mem' and 'obj'")
    chosen = frozenset(items)
    if chosen not in _ACCEPTED:
        raise ValueError(
            f"cannot install the domains {sorted(chosen)}: install ('raw',), ('mem', 'obj') or "
            "('raw', 'mem', 'obj'). MEM and OBJ go together because C code may free a block "
            "through the other one's function."
        )
    return sum(1 << DOMAINS.index(d) for d in chosen)


def _check_supported() -> None:
    if sys.implementation.name != "cpython":
        raise RuntimeError(f"rustmalloc replaces CPython's allocators; this is {sys.implementation.name}")
    # sys._is_gil_enabled exists from 3.13 (no sysconfig import: this runs at every startup).
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        raise RuntimeError(
            "rustmalloc cannot run on a free-threaded CPython: it finds objects by walking its "
            "own mimalloc heaps, so the OBJ domain cannot be replaced"
        )
    if sys.version_info >= (3, 12):
        raise RuntimeError(
            "rustmalloc supports CPython 3.9-3.11: from 3.12 a per-interpreter GIL (PEP 684) makes "
            "the MEM and OBJ domains need thread safety that rustmalloc does not provide yet"
        )


def install(domains: Union[str, Iterable[str]] = DOMAINS, *, check: Union[bool, str, None] = None) -> None:
    """Serve the given allocator domains with rustmalloc from now on.

    Idempotent: installing a domain again does nothing, and a later call may add domains.
    Accepted sets: ``('raw',)``, ``('mem', 'obj')`` and all three (the default).

    ``check`` turns on the checking mode for C-extension memory bugs (double free, write past
    the end, write after free, MEM/OBJ without the GIL): ``True`` reports and aborts, ``"warn"``
    reports and goes on, ``False`` is off; ``None`` (the default) takes ``RUSTMALLOC_CHECK``
    (``1``, ``warn`` or ``0``) from the environment at the first install, and the mode in force
    at a later one. It is fixed by the first install: a later call that asks for another mode
    raises RuntimeError, whether or not it adds domains.

    If tracemalloc is tracing, it is stopped, rustmalloc installed, and tracing restarted with
    the same traceback limit (traces taken before the call are lost): tracemalloc must wrap
    rustmalloc, never the reverse. Raises RuntimeError if another allocator hook is in place.
    """
    _install(domains, forward_only=False, check=check)


_CHECK_NAMES = ("False (off)", "True (report and abort)", "'warn' (report and go on)")


def _check_mode(check: Union[bool, str, None]) -> "int | None":
    """An explicit ``check=`` value as a mode (0, 1, 2); None for None."""
    if check is None:
        return None
    if check is True or check is False:
        return int(check)
    if check == "warn":
        return 2
    raise ValueError(f"check must be True, False or 'warn', not {check!r}")


def _check_from_environment() -> int:
    from ._env import CHECK_HELP, parse_check

    value = _environ().get("RUSTMALLOC_CHECK", "")
    mode = parse_check(value)
    if mode is None:
        raise ValueError(f"RUSTMALLOC_CHECK={value!r}: {CHECK_HELP}")
    return mode


def _install_forward_only(domains: Union[str, Iterable[str]] = DOMAINS) -> None:
    """Install hooks that hand every call to the previous allocator: the floor cost of being a
    hook, for benchmarks. Not for use otherwise; the mode is fixed by the first install."""
    _install(domains, forward_only=True, check=False)


def _install(domains: Union[str, Iterable[str]], forward_only: bool, check: Union[bool, str, None]) -> None:
    mask = _domain_mask(domains)
    _check_supported()
    mode = _check_mode(check)
    have = _ext._installed_mask()
    if have:
        if forward_only != _ext._forward_only_in_force():
            raise RuntimeError(
                "rustmalloc is already installed in the other mode (forwarding or allocating); "
                "the mode is fixed by the first install() of the process"
            )
        in_force = _ext._check_mode_in_force()
        if mode is not None and mode != in_force and not forward_only:
            raise RuntimeError(
                f"the checking mode is fixed by the first install() of the process (blocks handed "
                f"out before cannot gain canaries): it is check={_CHECK_NAMES[in_force]}; call "
                f"install() without check= or with that value"
            )
        mode = in_force
    elif mode is None:
        mode = _check_from_environment()
    if mask & ~have == 0:
        return
    if not have and any(k.startswith("RUSTMALLOC_") for k in _environ()):
        from ._config import configure_from_environment

        configure_from_environment()
    import _tracemalloc

    tracing = _tracemalloc.is_tracing()
    limit = _tracemalloc.get_traceback_limit()
    if tracing:
        _tracemalloc.stop()
    try:
        _ext._install(mask, forward_only, mode)
    finally:
        if tracing:
            _tracemalloc.start(limit)
    if not forward_only:
        _register_fork_hook()
        from . import _idle

        _idle.start()


_fork_hook_registered = False


def _register_fork_hook() -> None:
    """Once: the child of ``os.fork()`` relinks the MEM/OBJ heap's pages with remote frees (a
    thread of the parent may have stopped halfway through freeing one of its blocks), with the
    GIL held and before it starts any thread (``_ext._after_fork_in_child``). The RAW heaps are
    relinked by the allocator's own ``pthread_atfork`` handler."""
    global _fork_hook_registered
    if not _fork_hook_registered:
        import os

        os.register_at_fork(after_in_child=_ext._after_fork_in_child)
        _fork_hook_registered = True


def _environ() -> "dict":
    import os

    return os.environ  # type: ignore[return-value]


def installed() -> tuple:
    """The domains rustmalloc serves, in the order ('raw', 'mem', 'obj')."""
    mask = _ext._installed_mask()
    return tuple(d for i, d in enumerate(DOMAINS) if mask & (1 << i))


def trim() -> int:
    """Give back to the OS all the memory that can be now — free OS pages inside partly used
    pages, empty pages and segments of the MEM/OBJ heap, of this thread's RAW heap and of the
    RAW heaps of exited threads — and return how many bytes that was. Other live threads' RAW
    heaps give theirs back on their next allocation slow path."""
    if not _ext._installed_mask():
        raise RuntimeError("rustmalloc is not installed: call rustmalloc.install() first")
    return _ext._trim()
