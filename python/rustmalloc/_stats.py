"""Statistics: snapshots, the text report, track() and the peak."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields
from types import MappingProxyType
from typing import Any, Callable, List, Mapping, Optional, Tuple, TypeVar

from . import _rustmalloc as _ext

DOMAINS = ("raw", "mem", "obj")
#: Size of the pages blocks of one class are carved from.
PAGE_SIZE = 64 * 1024

F = TypeVar("F", bound=Callable[..., Any])


def _require_installed() -> None:
    if not _ext._installed_mask():
        raise RuntimeError("rustmalloc is not installed: call rustmalloc.install() first")


@dataclass(frozen=True)
class DomainStats:
    """Figures of one domain, summed over every heap.

    Live blocks count at their block size (the request rounded up to its size class); large
    blocks (over 32 KiB) at their size rounded up to 16 bytes. A block is counted against the
    domain that allocated it, whichever function frees it.
    """

    blocks_in_use: int
    bytes_in_use: int
    #: Highest ``bytes_in_use`` since start or ``reset_peak()`` (``track()`` leaves it alone);
    #: exact for MEM and OBJ, an upper bound for RAW when several threads allocate, and a block
    #: another thread freed counts until its heap collects that free (see the README).
    peak_bytes_in_use: int
    #: Blocks handed out (malloc, calloc, or a realloc that moved the block) and freed.
    allocs: int
    callocs: int
    #: realloc calls on a block (``realloc(NULL, n)`` is counted as the malloc it is).
    reallocs: int
    frees: int
    #: Frees and reallocs of pointers rustmalloc does not own (allocated before install()),
    #: handed to the allocator that was installed before.
    foreign_frees: int
    foreign_reallocs: int
    large_allocs: int
    large_blocks_in_use: int
    large_bytes_in_use: int
    #: Cumulative bytes handed out and freed.
    bytes_allocated: int
    bytes_freed: int


@dataclass(frozen=True)
class SizeClassStats:
    """One size class of one domain."""

    domain: str
    #: The heap serving the domain: "gil" (MEM and OBJ) or "raw" (per-thread heaps).
    heap: str
    index: int
    block_size: int
    blocks_in_use: int
    #: Blocks carved from pages and free.
    blocks_free: int
    pages: int


@dataclass(frozen=True)
class OsStats:
    """Memory rustmalloc holds from the OS."""

    #: Mapped now: segments, huge blocks and metadata (address space, not all resident).
    bytes_mapped: int
    #: Given back so far, with munmap or madvise(MADV_DONTNEED).
    bytes_returned: int
    #: Resident in physical memory now, measured with mincore() over our segments.
    bytes_resident: int
    segments: int
    segments_peak: int
    #: Given back by purges and later taken into use again (each such OS page was faulted in again).
    bytes_refaulted: int
    #: The MEM/OBJ heap's automatic purge delay now: ``purge_delay_ms`` or up to 16 times it when
    #: memory it gave back was soon taken again (each RAW heap adapts its own the same way).
    purge_delay_ms: int


@dataclass(frozen=True)
class Snapshot:
    """An immutable snapshot of rustmalloc's statistics, taken by :func:`stats`."""

    installed: Tuple[str, ...]
    domains: Mapping[str, DomainStats]
    size_classes: Tuple[SizeClassStats, ...]
    os: OsStats
    raw_heaps_created: int
    raw_heaps_abandoned: int

    @property
    def fragmentation(self) -> float:
        """Share of carved small-block memory not holding live blocks (0.0 to 1.0)."""
        live = sum(c.blocks_in_use * c.block_size for c in self.size_classes)
        free = sum(c.blocks_free * c.block_size for c in self.size_classes)
        return free / (live + free) if live + free else 0.0

    @property
    def blocks_in_use(self) -> int:
        return sum(d.blocks_in_use for d in self.domains.values())

    @property
    def bytes_in_use(self) -> int:
        return sum(d.bytes_in_use for d in self.domains.values())

    def to_dict(self) -> dict:
        """Plain, JSON-serializable data."""
        return {
            "installed": list(self.installed),
            "domains": {name: asdict(d) for name, d in self.domains.items()},
            "size_classes": [asdict(c) for c in self.size_classes],
            "os": asdict(self.os),
            "fragmentation": self.fragmentation,
            "raw_heaps": {"created": self.raw_heaps_created, "abandoned": self.raw_heaps_abandoned},
        }


def stats() -> Snapshot:
    """A snapshot of rustmalloc's statistics. Raises RuntimeError before install().

    Taking it allocates a little itself (the snapshot's own objects).
    """
    _require_installed()
    from . import installed

    domains_raw, classes_raw, os_raw, (created, abandoned) = _ext._snapshot()
    domain_fields = [f.name for f in fields(DomainStats)]
    assert list(_ext.DOMAIN_FIELDS) == domain_fields, "native and Python field lists differ"
    domains: Any = MappingProxyType(
        {name: DomainStats(*values) for name, values in zip(DOMAINS, domains_raw)}
    )
    classes = tuple(
        SizeClassStats(DOMAINS[d], "raw" if d == 0 else "gil", c, bs, used, free, pages)
        for d, c, bs, used, free, pages in classes_raw
    )
    return Snapshot(installed(), domains, classes, OsStats(*os_raw), created, abandoned)


def allocated_blocks() -> int:
    """Live blocks in every domain: the replacement for ``sys.getallocatedblocks()``, which
    stops moving once pymalloc is replaced."""
    _require_installed()
    domains_raw = _ext._snapshot()[0]
    index = list(_ext.DOMAIN_FIELDS).index("blocks_in_use")
    return sum(d[index] for d in domains_raw)


# ---- track() and the peak ---------------------------------------------------------------

_active: List["track"] = []


def _fold_peak() -> None:
    """Record the peak reached so far in every active tracker (before it is reset)."""
    peak = _ext._track_totals()[5]
    for t in _active:
        if peak > t._max_live:
            t._max_live = peak


def reset_peak() -> None:
    """Restart every peak (``peak_bytes_in_use`` of each domain) from the current figures.
    ``track()`` blocks keep their own peaks, which this leaves alone."""
    _require_installed()
    _ext._reset_peak()


class track:
    """Measure the allocations of a block of code, process-wide (every domain, every thread)::

        with rustmalloc.track() as t:
            work()
        print(t.allocated_bytes, t.peak_bytes)

    Also a decorator (``@rustmalloc.track()``: each call is measured anew, and ``last`` holds
    the figures of the latest call). Blocks nest: an inner block does not disturb the peak of
    an outer one. Inside the block, the attributes give the figures so far.
    """

    def __init__(self) -> None:
        self._start: Optional[Tuple[int, ...]] = None
        self._end: Optional[Tuple[int, ...]] = None
        self._base_live = 0
        self._max_live = 0
        self.last: Optional[track] = None

    def __enter__(self) -> "track":
        _require_installed()
        if self in _active:
            raise RuntimeError("this track() is already active: use a new track() to nest")
        # track()'s own peak (all domains): the peaks stats() reports are left alone.
        _fold_peak()
        _ext._reset_track_peak()
        totals = _ext._track_totals()
        self._start, self._end = totals, None
        self._base_live = self._max_live = totals[4]
        _active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self not in _active:
            raise RuntimeError("this track() is not active: __exit__ ends a block that "
                               "`with rustmalloc.track():` entered")
        _fold_peak()
        _active.remove(self)
        self._end = _ext._track_totals()

    def __call__(self, func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = track()
            with t:
                try:
                    return func(*args, **kwargs)
                finally:
                    self.last = t

        return wrapper  # type: ignore[return-value]

    def _totals(self) -> Tuple[int, ...]:
        if self._start is None:
            raise RuntimeError("track() has not been entered: use it as `with rustmalloc.track() as t:`")
        if self._end is not None:
            return self._end
        _fold_peak()
        return _ext._track_totals()

    def _delta(self, i: int) -> int:
        assert self._start is not None
        return self._totals()[i] - self._start[i]

    @property
    def allocated_bytes(self) -> int:
        """Bytes handed out in the block (each block at its block size)."""
        return self._delta(0)

    @property
    def freed_bytes(self) -> int:
        """Bytes freed in the block (including blocks allocated before it)."""
        return self._delta(1)

    @property
    def net_bytes(self) -> int:
        """allocated_bytes - freed_bytes."""
        return self.allocated_bytes - self.freed_bytes

    @property
    def peak_bytes(self) -> int:
        """The highest net bytes in use reached within the block (relative to its start)."""
        self._totals()
        return max(0, self._max_live - self._base_live)

    @property
    def allocs(self) -> int:
        return self._delta(2)

    @property
    def frees(self) -> int:
        return self._delta(3)

    def __repr__(self) -> str:
        if self._start is None:
            return "<rustmalloc.track (not entered)>"
        return (
            f"<rustmalloc.track allocated={self.allocated_bytes:,} freed={self.freed_bytes:,} "
            f"net={self.net_bytes:,} peak={self.peak_bytes:,} allocs={self.allocs:,} frees={self.frees:,}>"
        )


# ---- the text report ----------------------------------------------------------------------


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; thousands separators below 1 KiB."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{int(n):,} B"


def format_stats(snapshot: Optional[Snapshot] = None, width: int = 30) -> str:
    """A human-readable report: totals, domains, OS memory, and a line per size class with a
    bar of blocks in use (``#``) and free (``.``)."""
    if isinstance(width, bool) or not isinstance(width, int):
        raise TypeError(f"format_stats(width=...) takes an int, the bar length in characters; got {width!r}")
    if width < 0:
        raise ValueError(f"format_stats(width=...) is the bar length in characters, 0 or more; got {width}")
    s = snapshot if snapshot is not None else stats()
    out = []
    out.append(f"rustmalloc statistics (domains installed: {', '.join(s.installed)})")
    out.append(
        f"  in use: {s.blocks_in_use:,} blocks, {format_bytes(s.bytes_in_use)}; "
        f"fragmentation {s.fragmentation:.1%} of carved small-block memory free"
    )
    out.append("")
    out.append(
        f"  {'domain':<6} {'blocks in use':>14} {'bytes in use':>12} {'peak':>12} {'allocs':>13} "
        f"{'frees':>13} {'callocs':>10} {'reallocs':>10} {'large live':>11} {'foreign frees':>14}"
    )
    for name, d in s.domains.items():
        out.append(
            f"  {name:<6} {d.blocks_in_use:>14,} {format_bytes(d.bytes_in_use):>12} "
            f"{format_bytes(d.peak_bytes_in_use):>12} {d.allocs:>13,} {d.frees:>13,} {d.callocs:>10,} "
            f"{d.reallocs:>10,} {format_bytes(d.large_bytes_in_use):>11} {d.foreign_frees:>14,}"
        )
    o = s.os
    out.append("")
    out.append(
        f"  OS: {format_bytes(o.bytes_mapped)} mapped, {format_bytes(o.bytes_resident)} resident, "
        f"{format_bytes(o.bytes_returned)} returned ({format_bytes(o.bytes_refaulted)} of it taken "
        f"again; purge delay {o.purge_delay_ms:,} ms); segments (4 MiB): {o.segments:,} now, "
        f"{o.segments_peak:,} at most"
    )
    out.append(f"  RAW thread heaps: {s.raw_heaps_created:,} created, {s.raw_heaps_abandoned:,} waiting for adoption")
    live = sum(c.blocks_in_use * c.block_size for c in s.size_classes)
    free = sum(c.blocks_free * c.block_size for c in s.size_classes)
    pages = sum(c.pages for c in s.size_classes)
    quantization = sum((PAGE_SIZE % c.block_size) * c.pages for c in s.size_classes)
    uncarved = pages * PAGE_SIZE - live - free - quantization
    out.append(
        f"  small pages: {pages:,} ({format_bytes(pages * PAGE_SIZE)}): {format_bytes(live)} in allocated "
        f"blocks, {format_bytes(free)} in free blocks, {format_bytes(uncarved)} not yet carved, "
        f"{format_bytes(quantization)} page-tail quantization"
    )
    out.append("")
    out.append(
        f"  {'heap':<4} {'dom':<4} {'class':>5} {'size':>7} {'pages':>7} {'in use':>11} {'free':>11}  blocks in use"
    )
    for c in sorted(s.size_classes, key=lambda c: (c.heap, c.domain, c.index)):
        total = c.blocks_in_use + c.blocks_free
        used = round(width * c.blocks_in_use / total) if total else 0
        bar = "#" * used + "." * (width - used if total else 0)
        out.append(
            f"  {c.heap:<4} {c.domain:<4} {c.index:>5} {c.block_size:>7,} {c.pages:>7,} "
            f"{c.blocks_in_use:>11,} {c.blocks_free:>11,}  |{bar:<{width}}|"
        )
    return "\n".join(out)


def print_stats(snapshot: Optional[Snapshot] = None, file: Any = None) -> None:
    """Print :func:`format_stats` (to ``file``, default stdout)."""
    print(format_stats(snapshot), file=file)
