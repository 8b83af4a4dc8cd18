"""pyperformance's gc_traversal, in two shapes, for ``pyperformance_pingpong.py --script``.

The timed part is the same as gc_traversal's: a full ``gc.collect()`` that finds nothing, over a
chain of lists, each of which holds n references to the one before. What differs is the size
of the item arrays (``PyMem`` blocks of 8n bytes) and so which allocator places them under
pymalloc:

- ``gc_orig``: n = 0..999, gc_traversal itself. Most arrays are over 512 bytes, which pymalloc
  hands to glibc's malloc. That places them one after another in allocation order, so the
  collector's walk over them is one long stream. rustmalloc places them in size classes 16 per
  doubling, with the rounding left as a gap after each.
- ``gc_small``: n = 1 + k % 63 for 16,000 lists (512,000 items, about as many). Every array is
  504 bytes at most, so pymalloc's pools and rustmalloc's pages place them alike.
- ``gc_same``: n = 500 for 1,000 lists (as many items as ``gc_orig``). Every array is in one
  size class, so rustmalloc too places them one after another in allocation order.
- ``gc_shuffled``: ``gc_orig``'s sizes 1..999 in a random order. glibc still places the arrays one
  after another; a size-class allocator scatters them over the pages of every class.

Two more modes, under rustmalloc only: ``--order COUNT ITEMS ROUNDS`` times collections of one
size class's chain with its arrays in ascending against descending address order (what the
hardware prefetchers make of the direction of the walk), and ``--fresh SHAPE ROUNDS`` with the
chain on pages faulted in afresh (after ``rustmalloc.trim()``) against reused ones.

A list of 0 items holds no reference to the one before it, so everything before it is freed as
the chain is built: only ``gc_orig``'s first list may be empty. (Before session 20, ``gc_small``
was ``k % 64`` and ``gc_shuffled`` held a 0: they kept 64 lists of 2,016 items and 269 lists of
135,025 items alive, not the chains described. ``SHAPES`` is now checked against that.)
"""
import gc
import random
import time


def chain(sizes):
    current = []
    for n in sizes:
        new = [None] * n
        for i in range(n):
            new[i] = current
        current = new
    return current


SHAPES = {
    "gc_orig": list(range(1000)),  # arrays 0..7992 B: most above 512
    "gc_small": [1 + k % 63 for k in range(16000)],  # arrays 8..504 B, about as many items
    "gc_same": [500] * 1000,  # arrays of 4,000 B: one size class
    "gc_shuffled": random.Random(1).sample(range(1, 1000), 999),
}


def lists_of(head):
    """Every list of a chain, from its head (the last built) down to the empty first one."""
    while True:
        yield head
        if not head:
            return
        head = head[0]


def _timed_collection():
    """Seconds of one full collection, timed after an untimed one (gc_traversal's timed part)."""
    gc.collect()
    t0 = time.perf_counter()
    gc.collect()
    return time.perf_counter() - t0


def timed(loops, sizes):
    keep = chain(sizes)  # noqa: F841 (kept alive while timed)
    return sum(_timed_collection() for _ in range(loops))


def collect_only(shape, collections):
    """``python benches/gc_layout.py --collect SHAPE N``: build SHAPE's chain and run N full
    collections, nothing else, for valgrind (run it with N and 5N; the difference over 4N is one
    collection). It imports rustmalloc's modules under every allocator, so that the collector
    walks the same objects whether or not rustmalloc's startup hook ran."""
    import rustmalloc  # noqa: F401
    import rustmalloc._config  # noqa: F401
    import rustmalloc._idle  # noqa: F401
    import rustmalloc._startup  # noqa: F401

    keep = chain(SHAPES[shape])
    for _ in range(collections):
        gc.collect()
    return keep


def _array_address(lst):
    """The address of a list's item array (CPython 3.11's layout: ``ob_item`` at offset 24)."""
    import ctypes

    return ctypes.c_void_p.from_address(id(lst) + 24).value


def adjacency(shape):
    """``python benches/gc_layout.py --adjacency SHAPE``: of SHAPE's item arrays over 512 bytes,
    in allocation order, how many start within 64 bytes after the end of the one before (end to
    end, as glibc places them) and within 4 KiB (see ``_array_address``)."""
    arrays = [(_array_address(a), 8 * len(a))
              for a in lists_of(chain(SHAPES[shape])) if len(a) * 8 > 512]
    big = arrays[::-1]  # allocation order
    gaps = [b - (a + n) for (a, n), (b, _) in zip(big, big[1:])]
    within = lambda limit: sum(1 for g in gaps if 0 <= g <= limit)  # noqa: E731
    return len(big), within(64), within(4096)


def _arrange(order, count, items):
    """Under rustmalloc, leave ``count``-odd free blocks of the class of ``items``-item arrays on
    their pages' free lists so that the next arrays of that class come in ``order`` ("asc" or
    "desc") of address. Free lists are last in, first out: blocks freed from the highest address
    down are then handed out from the lowest up, and the reverse. One block in 16 stays allocated
    (returned: keep it alive) so that no page empties and is carved afresh."""
    blocks = sorted(([None] * items for _ in range(count + count // 4)), key=_array_address)
    pins = blocks[::16]
    rest = [b for i, b in enumerate(blocks) if i % 16]
    for b in (rest if order == "desc" else reversed(rest)):
        b.clear()  # frees the item array
    return pins


def _ascending_steps(head):
    """Of a chain's consecutive arrays, in build order, how many lie at a higher address."""
    arrays = [_array_address(a) for a in lists_of(head) if a][::-1]
    return sum(1 for a, b in zip(arrays, arrays[1:]) if b > a), len(arrays) - 1


def _collect_ms(repeats=5):
    import statistics

    return statistics.median(_timed_collection() for _ in range(repeats)) * 1e3


def _alternating(rounds, names, timed_round):
    """``timed_round(name)`` for each of two names, ``rounds`` times, the order alternating round
    by round so that drift hits both alike: the times, per name."""
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed_round(name))
    return times


def _ratios(first, second):
    import statistics

    ratios = [b / a for a, b in zip(first, second)]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return statistics.median(ratios), quartiles[0], quartiles[2]


def address_order(count, items, rounds):
    """``python benches/gc_layout.py --order COUNT ITEMS ROUNDS`` (under rustmalloc): a chain of
    COUNT lists of ITEMS items each (one size class), built with its arrays in ascending and in
    descending address order, the two alternating round by round; each round, the median of 5
    full collections. Returns the ascending steps of each order's chain (of its first round) and
    the descending rounds' times over the ascending ones: median and quartiles."""
    steps = {}

    def timed_round(order):
        pins = _arrange(order, count, items)  # noqa: F841 (kept alive while timed)
        head = chain([items] * count)
        steps.setdefault(order, _ascending_steps(head))
        return _collect_ms()

    times = _alternating(rounds, ("asc", "desc"), timed_round)
    return steps, _ratios(times["asc"], times["desc"]) + (
        min(times["asc"]), min(times["desc"]))


def fresh_pages(shape, rounds):
    """``python benches/gc_layout.py --fresh SHAPE ROUNDS`` (under rustmalloc): SHAPE's chain built
    after ``rustmalloc.trim()`` (its pages given back to the OS, so the chain gets pages faulted in
    afresh) or without it, alternating round by round; each round, the median of 5 full
    collections. Returns the trimmed rounds' times over the others: median and quartiles."""
    import rustmalloc

    def timed_round(mode):
        if mode == "trim":
            rustmalloc.trim()
        head = chain(SHAPES[shape])  # noqa: F841 (kept alive while timed)
        return _collect_ms()

    times = _alternating(rounds, ("trim", "keep"), timed_round)
    return _ratios(times["keep"], times["trim"])


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] in (["--order"], ["--fresh"]) and (
            "rustmalloc" not in sys.modules or "mem" not in sys.modules["rustmalloc"].installed()):
        sys.exit("%s needs rustmalloc serving the MEM domain: run it with RUSTMALLOC=1" % sys.argv[1])
    if sys.argv[1:2] == ["--order"]:
        steps, (median, q1, q3, fastest_asc, fastest_desc) = address_order(*map(int, sys.argv[2:5]))
        for order, (up, of) in sorted(steps.items()):
            print("%s: %d of %d consecutive arrays at a higher address" % (order, up, of))
        print("collections, descending over ascending: median %.3f, quartiles %.3f-%.3f "
              "(fastest: descending %.2f ms, ascending %.2f ms)" % (median, q1, q3, fastest_desc, fastest_asc))
        sys.exit(0)
    if sys.argv[1:2] == ["--fresh"]:
        print("collections, pages fresh over pages reused: median %.3f, quartiles %.3f-%.3f"
              % fresh_pages(sys.argv[2], int(sys.argv[3])))
        sys.exit(0)

    if sys.argv[1:2] == ["--adjacency"]:
        print("%s: %d arrays over 512 B; the next starts within 64 B of the end: %d, within 4 KiB: %d"
              % ((sys.argv[2],) + adjacency(sys.argv[2])))
        sys.exit(0)
    if sys.argv[1:2] == ["--collect"]:
        collect_only(sys.argv[2], int(sys.argv[3]))
        sys.exit(0)
    import pyperf

    r = pyperf.Runner()
    for name, sizes in SHAPES.items():
        r.bench_time_func(name, timed, sizes)
