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


def timed(loops, sizes):
    keep = chain(sizes)
    total = 0.0
    for _ in range(loops):
        gc.collect()
        t0 = time.perf_counter()
        gc.collect()
        total += time.perf_counter() - t0
    return total


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


def adjacency(shape):
    """``python benches/gc_layout.py --adjacency SHAPE``: of SHAPE's item arrays over 512 bytes,
    in allocation order, how many start within 64 bytes after the end of the one before (end to
    end, as glibc places them) and within 4 KiB. Reads each list's ``ob_item`` (CPython 3.11's
    layout: offset 24)."""
    import ctypes

    arrays = [(ctypes.c_void_p.from_address(id(a) + 24).value, 8 * len(a))
              for a in lists_of(chain(SHAPES[shape])) if len(a) * 8 > 512]
    big = arrays[::-1]  # allocation order
    gaps = [b - (a + n) for (a, n), (b, _) in zip(big, big[1:])]
    within = lambda limit: sum(1 for g in gaps if 0 <= g <= limit)  # noqa: E731
    return len(big), within(64), within(4096)


if __name__ == "__main__":
    import sys

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
