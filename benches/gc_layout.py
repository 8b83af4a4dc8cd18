"""pyperformance's gc_traversal, in two shapes, for ``pyperformance_pingpong.py --script``.

The timed part is the same as gc_traversal's: a full ``gc.collect()`` that finds nothing, over a
chain of lists, each of which holds n references to the one before. What differs is the size
of the item arrays (``PyMem`` blocks of 8n bytes) and so which allocator places them under
pymalloc:

- ``gc_orig``: n = 0..999, gc_traversal itself. Most arrays are over 512 bytes, which pymalloc
  hands to glibc's malloc. That places them one after another in allocation order, so the
  collector's walk over them is one long stream. rustmalloc places them in size classes four per
  doubling, with the rounding left as a gap after each.
- ``gc_small``: n = k % 64 for 16,000 lists (about as many items). Every array is 504 bytes at
  most, so pymalloc's pools and rustmalloc's pages place them alike.
- ``gc_same``: n = 500 for 1,000 lists (as many items as ``gc_orig``). Every array is in one
  size class, so rustmalloc too places them one after another in allocation order.
- ``gc_shuffled``: ``gc_orig``'s sizes in a random order. glibc still places the arrays one after
  another; a size-class allocator scatters them over the pages of every class.
"""
import gc
import random

import pyperf


def chain(sizes):
    current = []
    for n in sizes:
        new = [None] * n
        for i in range(n):
            new[i] = current
        current = new
    return current


def timed(loops, sizes):
    keep = chain(sizes)
    total = 0.0
    for _ in range(loops):
        gc.collect()
        t0 = pyperf.perf_counter()
        gc.collect()
        total += pyperf.perf_counter() - t0
    return total


if __name__ == "__main__":
    r = pyperf.Runner()
    r.bench_time_func("gc_orig", timed, list(range(1000)))          # arrays 0..7992 B: most above 512
    r.bench_time_func("gc_small", timed, [k % 64 for k in range(16000)])  # arrays 0..504 B, about as many items
    r.bench_time_func("gc_same", timed, [500] * 1000)  # arrays of 4,000 B: one size class
    r.bench_time_func("gc_shuffled", timed, random.Random(1).sample(range(1000), 1000))
