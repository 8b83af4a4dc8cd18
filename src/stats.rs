//! Statistics counters.
//!
//! Every heap has one `Counters`, written only by whoever is using that heap (its owner thread,
//! or the GIL holder for the GIL heap), so an increment is a plain load and store, never an
//! atomic read-modify-write: the fast path pays one add. Readers on other threads load the
//! values (`Relaxed`) and add up every heap's counters.
//!
//! One exception keeps the free fast path to a counter at a fixed address: a heap's frees of
//! MEM and OBJ blocks into its own pages add the block's size to `local_bytes[domain]` (the
//! domain is the hook's, a constant) and count no class. Live bytes, and so the peaks, stay
//! exact at any time; the per-class counts of those frees are derived when the statistics are
//! read, by whoever may walk the heap's pages (its owner: the GIL holder for the GIL heap),
//! from `allocs - collected - used` (see `heap::local_frees`). A counter indexed by the
//! block's class, an address that waits on the load of the page's descriptor, cost the free
//! fast path about a third of its time on tight batches of frees (session 17's benchmarks).
//! RAW blocks are counted per class as they are freed: other threads read RAW heaps'
//! counters and cannot walk their pages.
//!
//! A counter records what the *caller* did, indexed by the domain and class of the *block*:
//! a free through another domain's function, or from another thread, is counted by the thread
//! that called free, against the domain whose page the block lives in. So in-use figures,
//! `allocs - frees` summed over all heaps, are exact once no thread is mid-call, and live blocks
//! stay attributed to the domain that allocated them.

use crate::size_class::{BLOCK_SIZES, NUM_CLASSES};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Number of domains: RAW, MEM, OBJ.
pub const DOMAINS: usize = 3;
/// Index of the "large and huge blocks" slot in the per-class arrays.
pub const LARGE_SLOT: usize = NUM_CLASSES;
pub const SLOTS: usize = NUM_CLASSES + 1;

/// A single-writer counter: `add` is a load and a store, not an atomic RMW.
#[repr(transparent)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    #[inline(always)]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline(always)]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
    #[inline(always)]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed)
    }
    #[inline(always)]
    pub fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(n), Relaxed);
    }
}

#[repr(C)]
pub struct Counters {
    /// Blocks handed out, per domain and class (`LARGE_SLOT`: large and huge blocks).
    pub allocs: [[Counter; SLOTS]; DOMAINS],
    /// Blocks freed, likewise, except this heap's frees of MEM/OBJ blocks into its own pages.
    pub frees: [[Counter; SLOTS]; DOMAINS],
    /// Bytes of this heap's own MEM/OBJ blocks it freed into its pages (see the module doc).
    pub local_bytes: [Counter; DOMAINS],
    /// Blocks of this heap's small pages that others freed and this heap collected as
    /// remote frees (`heap::collect_remote`), per (domain, class). Read only for MEM and OBJ
    /// (`heap::local_frees`); RAW heaps count them too, on that slow path, unread. Laid out as
    /// `frees` (its `LARGE_SLOT` unused), so a page's `counter` indexes both.
    pub collected: [[Counter; SLOTS]; DOMAINS],
    /// Bytes of large and huge blocks handed out and freed (their 16-byte-rounded sizes).
    pub large_bytes_allocated: [Counter; DOMAINS],
    pub large_bytes_freed: [Counter; DOMAINS],
    /// Frees and reallocs of pointers we do not own, handed to the previous allocator.
    pub foreign_frees: [Counter; DOMAINS],
    pub foreign_reallocs: [Counter; DOMAINS],
    /// calloc calls, and realloc calls on a block of ours (`realloc(NULL, n)` counts as a
    /// malloc), per calling domain.
    pub callocs: [Counter; DOMAINS],
    pub reallocs: [Counter; DOMAINS],
    /// Highest live bytes of this heap's counters per domain, and in all, as last sampled since
    /// the last `reset_peak` (see `sample_peak`).
    pub peak: [Counter; DOMAINS],
    pub peak_all: Counter,
    /// Bytes made available by slow paths since the last sample (the sampling throttle).
    pub unsampled: Counter,
    /// Pages and carved blocks per (domain, class), kept on slow paths by the owning heap.
    pub pages: [[Counter; NUM_CLASSES]; DOMAINS],
    pub carved: [[Counter; NUM_CLASSES]; DOMAINS],
    /// For the peaks (`held`): bytes of other heaps' blocks this heap freed (counted in `frees`
    /// and `large_bytes_freed` too), and bytes of this heap's own large blocks others freed, as
    /// it collected them (its small ones are in `collected`).
    pub given_bytes: [Counter; DOMAINS],
    pub taken_large_bytes: [Counter; DOMAINS],
    /// Bytes of huge blocks this heap allocated (or last resized) that other heaps freed or
    /// resized (`SegmentHeader::huge_heap`). The one counter others write, atomically: a huge
    /// block is freed at once by whoever frees it, with an munmap beside which the add is free.
    pub huge_taken: [AtomicU64; DOMAINS],
}

/// The counter at flat index `domain * SLOTS + slot` of a per-(domain, slot) table (a small
/// page's `counter`, see `segment::init_small_page`).
///
/// # Safety
/// `index < DOMAINS * SLOTS`.
#[inline(always)]
unsafe fn flat(table: &[[Counter; SLOTS]; DOMAINS], index: usize) -> &Counter {
    // SAFETY: the rows are contiguous arrays of `Counter`, so the table is `DOMAINS * SLOTS`
    // counters in a row, and `index` is within them by the caller's contract.
    &*(table.as_ptr() as *const Counter).add(index)
}

impl Counters {
    pub const fn new() -> Self {
        Counters {
            allocs: [const { [const { Counter::new() }; SLOTS] }; DOMAINS],
            frees: [const { [const { Counter::new() }; SLOTS] }; DOMAINS],
            local_bytes: [const { Counter::new() }; DOMAINS],
            collected: [const { [const { Counter::new() }; SLOTS] }; DOMAINS],
            large_bytes_allocated: [const { Counter::new() }; DOMAINS],
            large_bytes_freed: [const { Counter::new() }; DOMAINS],
            foreign_frees: [const { Counter::new() }; DOMAINS],
            foreign_reallocs: [const { Counter::new() }; DOMAINS],
            callocs: [const { Counter::new() }; DOMAINS],
            reallocs: [const { Counter::new() }; DOMAINS],
            peak: [const { Counter::new() }; DOMAINS],
            peak_all: Counter::new(),
            unsampled: Counter::new(),
            pages: [const { [const { Counter::new() }; NUM_CLASSES] }; DOMAINS],
            carved: [const { [const { Counter::new() }; NUM_CLASSES] }; DOMAINS],
            given_bytes: [const { Counter::new() }; DOMAINS],
            taken_large_bytes: [const { Counter::new() }; DOMAINS],
            huge_taken: [const { AtomicU64::new(0) }; DOMAINS],
        }
    }

    /// The free counter at flat index `domain * (NUM_CLASSES + 1) + class`.
    ///
    /// # Safety
    /// `index < DOMAINS * (NUM_CLASSES + 1)`.
    #[inline(always)]
    pub unsafe fn free_counter(&self, index: usize) -> &Counter {
        flat(&self.frees, index)
    }

    /// The `collected` counter at the same flat index as `free_counter`'s.
    ///
    /// # Safety
    /// As for `free_counter`.
    #[inline(always)]
    pub unsafe fn collected_counter(&self, index: usize) -> &Counter {
        flat(&self.collected, index)
    }

    /// A figure that moves on every free this heap makes (blocks counted per class plus bytes
    /// of local MEM/OBJ frees: for telling whether it freed anything, not how much).
    pub fn free_activity(&self) -> u64 {
        let bytes = self
            .local_bytes
            .iter()
            .fold(0u64, |sum, c| sum.wrapping_add(c.get()));
        self.frees
            .iter()
            .flatten()
            .fold(bytes, |sum, c| sum.wrapping_add(c.get()))
    }

    /// Bytes live in `domain` by this heap's counters (allocated minus freed; "negative", as a
    /// wrapped u64, when it freed more of others' blocks than it allocated).
    pub fn live(&self, domain: usize) -> u64 {
        let mut live = self.large_bytes_allocated[domain]
            .get()
            .wrapping_sub(self.large_bytes_freed[domain].get())
            .wrapping_sub(self.local_bytes[domain].get());
        for c in 0..NUM_CLASSES {
            let n = self.allocs[domain][c]
                .get()
                .wrapping_sub(self.frees[domain][c].get());
            live = live.wrapping_add(n.wrapping_mul(BLOCK_SIZES[c] as u64));
        }
        live
    }

    /// Bytes of this heap's own blocks in `domain` that are still live as far as it knows: its
    /// `live` figure with its frees of other heaps' blocks taken out, and less its blocks others
    /// freed, once it has collected them (`collected`, `taken_large_bytes`) or, for huge blocks,
    /// at once (`huge_taken`). What the peaks follow. `live` alone would not do: a heap whose
    /// blocks another thread frees (a thread's state, allocated by the thread that starts it and
    /// freed by the thread itself) sees its allocations and never those frees, so its peak would
    /// climb by every byte ever handed over, however little is live.
    pub fn held(&self, domain: usize) -> u64 {
        let mut taken = self.taken_large_bytes[domain]
            .get()
            .wrapping_add(self.huge_taken[domain].load(Relaxed));
        for (n, &size) in self.collected[domain].iter().zip(BLOCK_SIZES.iter()) {
            taken = taken.wrapping_add(n.get().wrapping_mul(size as u64));
        }
        self.live(domain)
            .wrapping_add(self.given_bytes[domain].get())
            .wrapping_sub(taken)
    }

    /// Raise the peaks to the held figures (`held`), with the cost spread out: the fast paths keep no
    /// live figure (a running total and a peak check would cost them a third of their time),
    /// so the slow paths call this with the bytes they just made available, and it samples
    /// once `SAMPLE_EVERY` bytes have been; readers sample too. A peak therefore misses at most
    /// about `SAMPLE_EVERY` bytes plus the free blocks of one page per size class.
    #[inline]
    pub fn note_available(&self, bytes: u64) {
        let pending = self.unsampled.get() + bytes;
        if pending < SAMPLE_EVERY {
            self.unsampled.set(pending);
        } else {
            self.sample_peak();
        }
    }

    #[cold]
    pub fn sample_peak(&self) {
        self.unsampled.set(0);
        let mut all = 0u64;
        for d in 0..DOMAINS {
            let held = self.held(d);
            all = all.wrapping_add(held);
            if held as i64 > self.peak[d].get() as i64 {
                self.peak[d].set(held);
            }
        }
        if all as i64 > self.peak_all.get() as i64 {
            self.peak_all.set(all);
        }
    }

    /// Restart the domains' peaks (`peak`, what `stats()` reports) from the current held
    /// figures: the user's `reset_peak()`. Called from another thread than the heap's user, this
    /// races benignly with it: a peak may be raised by a concurrent allocation just before or
    /// after the reset (see the README on RAW peaks).
    pub fn reset_peak(&self) {
        for d in 0..DOMAINS {
            self.peak[d].set(self.held(d));
        }
    }

    /// Restart the all-domains peak (`peak_all`, what `track()` follows) likewise. Apart from
    /// `reset_peak`, so entering a `track()` block leaves the peaks `stats()` reports alone.
    pub fn reset_peak_all(&self) {
        let all = (0..DOMAINS).fold(0u64, |a, d| a.wrapping_add(self.held(d)));
        self.peak_all.set(all);
    }
}

/// Bytes made available between two samples of the peaks.
pub const SAMPLE_EVERY: u64 = 256 * 1024;

/// The figures of one domain, summed over every heap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomainTotals {
    pub blocks_in_use: u64,
    pub bytes_in_use: u64,
    /// Sum over heaps of each heap's peak of its held bytes (`Counters::held`): exact when one
    /// heap does a domain's allocating and freeing (MEM and OBJ: the GIL heap), an upper bound
    /// otherwise (heaps peak at different times; a block another heap freed counts until its
    /// owner collects it).
    pub peak_bytes_in_use: u64,
    /// Blocks handed out (by malloc, calloc, or a realloc that moved) and freed, in all.
    pub allocs: u64,
    pub frees: u64,
    pub callocs: u64,
    pub reallocs: u64,
    pub foreign_frees: u64,
    pub foreign_reallocs: u64,
    pub large_allocs: u64,
    pub large_blocks_in_use: u64,
    pub large_bytes_in_use: u64,
    /// Cumulative bytes handed out and freed (blocks at their block size).
    pub bytes_allocated: u64,
    pub bytes_freed: u64,
}

/// One size class of one domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassTotals {
    pub blocks_in_use: u64,
    /// Carved from pages and free (including blocks freed remotely and not yet collected).
    pub blocks_free: u64,
    pub pages: u64,
}

/// An in-use figure whose sum over heaps wrapped below zero reads as zero. A read sums the heaps
/// one after another while other threads run: it can see another thread's free of a block (counted
/// on the freeing thread's heap) and not the block's allocation (counted on its owner's heap, read
/// before the allocation). Quiescent sums never wrap.
#[inline]
pub fn not_below_zero(x: u64) -> u64 {
    if (x as i64) < 0 {
        0
    } else {
        x
    }
}

/// Running sums over heaps.
pub struct Summary {
    allocs: [[u64; SLOTS]; DOMAINS],
    frees: [[u64; SLOTS]; DOMAINS],
    large_alloc: [u64; DOMAINS],
    large_freed: [u64; DOMAINS],
    foreign_frees: [u64; DOMAINS],
    foreign_reallocs: [u64; DOMAINS],
    callocs: [u64; DOMAINS],
    reallocs: [u64; DOMAINS],
    peak: [u64; DOMAINS],
    pages: [[u64; NUM_CLASSES]; DOMAINS],
    carved: [[u64; NUM_CLASSES]; DOMAINS],
    live_all: u64,
    pub peak_all: u64,
}

impl Summary {
    pub const fn new() -> Self {
        Summary {
            allocs: [[0; SLOTS]; DOMAINS],
            frees: [[0; SLOTS]; DOMAINS],
            large_alloc: [0; DOMAINS],
            large_freed: [0; DOMAINS],
            foreign_frees: [0; DOMAINS],
            foreign_reallocs: [0; DOMAINS],
            callocs: [0; DOMAINS],
            reallocs: [0; DOMAINS],
            peak: [0; DOMAINS],
            pages: [[0; NUM_CLASSES]; DOMAINS],
            carved: [[0; NUM_CLASSES]; DOMAINS],
            live_all: 0,
            peak_all: 0,
        }
    }

    pub fn add(&mut self, c: &Counters) {
        fn acc(to: &mut u64, c: &Counter) {
            *to = to.wrapping_add(c.get());
        }
        let (mut live_all, mut held_all) = (0u64, 0u64);
        for d in 0..DOMAINS {
            for s in 0..SLOTS {
                acc(&mut self.allocs[d][s], &c.allocs[d][s]);
                acc(&mut self.frees[d][s], &c.frees[d][s]);
            }
            for k in 0..NUM_CLASSES {
                acc(&mut self.pages[d][k], &c.pages[d][k]);
                acc(&mut self.carved[d][k], &c.carved[d][k]);
            }
            acc(&mut self.large_alloc[d], &c.large_bytes_allocated[d]);
            acc(&mut self.large_freed[d], &c.large_bytes_freed[d]);
            acc(&mut self.foreign_frees[d], &c.foreign_frees[d]);
            acc(&mut self.foreign_reallocs[d], &c.foreign_reallocs[d]);
            acc(&mut self.callocs[d], &c.callocs[d]);
            acc(&mut self.reallocs[d], &c.reallocs[d]);
            // A reader samples too: peaks never lag the figures it reports.
            let (held, peak) = (c.held(d), c.peak[d].get());
            self.peak[d] = self.peak[d].wrapping_add((held as i64).max(peak as i64) as u64);
            live_all = live_all.wrapping_add(c.live(d));
            held_all = held_all.wrapping_add(held);
        }
        let peak_all = c.peak_all.get();
        self.live_all = self.live_all.wrapping_add(live_all);
        self.peak_all = self
            .peak_all
            .wrapping_add((held_all as i64).max(peak_all as i64) as u64);
    }

    /// Add a heap's local MEM/OBJ frees per class (`heap::local_frees`) to the frees.
    pub fn add_local_frees(&mut self, local: &[[u64; NUM_CLASSES]; DOMAINS]) {
        for d in 0..DOMAINS {
            for c in 0..NUM_CLASSES {
                self.frees[d][c] = self.frees[d][c].wrapping_add(local[d][c]);
            }
        }
    }

    /// Live bytes of all domains (never below zero: see `not_below_zero`).
    pub fn live_all(&self) -> u64 {
        not_below_zero(self.live_all)
    }

    /// Live blocks of `class` in `domain` (sums wrap: a free may be counted on another heap).
    pub fn class_in_use(&self, domain: usize, class: usize) -> u64 {
        self.allocs[domain][class].wrapping_sub(self.frees[domain][class])
    }

    pub fn class(&self, domain: usize, class: usize) -> ClassTotals {
        let in_use = not_below_zero(self.class_in_use(domain, class));
        ClassTotals {
            blocks_in_use: in_use,
            blocks_free: self.carved[domain][class].saturating_sub(in_use),
            pages: self.pages[domain][class],
        }
    }

    pub fn domain(&self, d: usize) -> DomainTotals {
        let mut t = DomainTotals::default();
        for c in 0..NUM_CLASSES {
            let bs = BLOCK_SIZES[c] as u64;
            t.blocks_in_use = t.blocks_in_use.wrapping_add(self.class_in_use(d, c));
            t.allocs += self.allocs[d][c];
            t.frees += self.frees[d][c];
            t.bytes_allocated += self.allocs[d][c] * bs;
            t.bytes_freed += self.frees[d][c] * bs;
        }
        t.large_allocs = self.allocs[d][LARGE_SLOT];
        t.large_blocks_in_use = self.class_in_use(d, LARGE_SLOT);
        t.large_bytes_in_use = self.large_alloc[d].wrapping_sub(self.large_freed[d]);
        t.allocs += self.allocs[d][LARGE_SLOT];
        t.frees += self.frees[d][LARGE_SLOT];
        t.bytes_allocated += self.large_alloc[d];
        t.bytes_freed += self.large_freed[d];
        t.blocks_in_use = t.blocks_in_use.wrapping_add(t.large_blocks_in_use);
        t.bytes_in_use = not_below_zero(t.bytes_allocated.wrapping_sub(t.bytes_freed));
        t.blocks_in_use = not_below_zero(t.blocks_in_use);
        t.large_blocks_in_use = not_below_zero(t.large_blocks_in_use);
        t.large_bytes_in_use = not_below_zero(t.large_bytes_in_use);
        t.peak_bytes_in_use = (self.peak[d] as i64).max(t.bytes_in_use as i64).max(0) as u64;
        t.callocs = self.callocs[d];
        t.reallocs = self.reallocs[d];
        t.foreign_frees = self.foreign_frees[d];
        t.foreign_reallocs = self.foreign_reallocs[d];
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_use_figures_of_a_racing_read_never_go_below_zero() {
        // A free counted on one heap whose allocation the read missed on another.
        let (owner, freer) = (Counters::new(), Counters::new());
        owner.allocs[1][3].add(5);
        freer.frees[1][3].add(6);
        freer.frees[1][LARGE_SLOT].add(1);
        freer.large_bytes_freed[1].add(40_000);
        let mut sum = Summary::new();
        sum.add(&owner);
        sum.add(&freer);
        let d = sum.domain(1);
        assert_eq!((d.blocks_in_use, d.bytes_in_use), (0, 0));
        assert_eq!((d.large_blocks_in_use, d.large_bytes_in_use), (0, 0));
        assert_eq!(sum.class(1, 3).blocks_in_use, 0);
        // Quiescent sums are exact.
        owner.allocs[1][3].add(2);
        let mut sum = Summary::new();
        sum.add(&owner);
        sum.add(&freer);
        assert_eq!(sum.class(1, 3).blocks_in_use, 1);
        assert_eq!(
            sum.domain(1).bytes_in_use,
            0,
            "the large free still unmatched"
        );
    }
}
