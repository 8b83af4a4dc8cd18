//! Statistics counters.
//!
//! Every heap has one `Counters`, written only by whoever is using that heap (its owner thread,
//! or the GIL holder for the GIL heap), so an increment is a plain load and store, never an
//! atomic read-modify-write: the fast path pays one add. Readers on other threads load the
//! values (`Relaxed`) and add up every heap's counters.
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
const SLOTS: usize = NUM_CLASSES + 1;

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
}

#[repr(C)]
pub struct Counters {
    /// Blocks handed out, per domain and class (`LARGE_SLOT`: large and huge blocks).
    pub allocs: [[Counter; SLOTS]; DOMAINS],
    /// Blocks freed, likewise.
    pub frees: [[Counter; SLOTS]; DOMAINS],
    /// Bytes of large and huge blocks handed out and freed (their 16-byte-rounded sizes).
    pub large_bytes_allocated: [Counter; DOMAINS],
    pub large_bytes_freed: [Counter; DOMAINS],
    /// Frees and reallocs of pointers we do not own, handed to the previous allocator.
    pub foreign_frees: [Counter; DOMAINS],
    pub foreign_reallocs: [Counter; DOMAINS],
}

impl Counters {
    pub const fn new() -> Self {
        Counters {
            allocs: [const { [const { Counter::new() }; SLOTS] }; DOMAINS],
            frees: [const { [const { Counter::new() }; SLOTS] }; DOMAINS],
            large_bytes_allocated: [const { Counter::new() }; DOMAINS],
            large_bytes_freed: [const { Counter::new() }; DOMAINS],
            foreign_frees: [const { Counter::new() }; DOMAINS],
            foreign_reallocs: [const { Counter::new() }; DOMAINS],
        }
    }
}

/// In-use figures of one domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomainTotals {
    pub blocks_in_use: u64,
    pub bytes_in_use: u64,
    pub large_blocks_in_use: u64,
    pub large_bytes_in_use: u64,
    pub foreign_frees: u64,
    pub foreign_reallocs: u64,
}

/// Running sums over heaps, turned into per-domain totals at the end.
pub struct Summary {
    allocs: [[u64; SLOTS]; DOMAINS],
    frees: [[u64; SLOTS]; DOMAINS],
    large_alloc: [u64; DOMAINS],
    large_freed: [u64; DOMAINS],
    foreign_frees: [u64; DOMAINS],
    foreign_reallocs: [u64; DOMAINS],
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
        }
    }

    pub fn add(&mut self, c: &Counters) {
        for d in 0..DOMAINS {
            for s in 0..SLOTS {
                self.allocs[d][s] = self.allocs[d][s].wrapping_add(c.allocs[d][s].get());
                self.frees[d][s] = self.frees[d][s].wrapping_add(c.frees[d][s].get());
            }
            self.large_alloc[d] = self.large_alloc[d].wrapping_add(c.large_bytes_allocated[d].get());
            self.large_freed[d] = self.large_freed[d].wrapping_add(c.large_bytes_freed[d].get());
            self.foreign_frees[d] += c.foreign_frees[d].get();
            self.foreign_reallocs[d] += c.foreign_reallocs[d].get();
        }
    }

    /// Live blocks of `class` in `domain` (sums wrap: a free may be counted on another heap).
    pub fn class_in_use(&self, domain: usize, class: usize) -> u64 {
        self.allocs[domain][class].wrapping_sub(self.frees[domain][class])
    }

    pub fn domain(&self, d: usize) -> DomainTotals {
        let mut t = DomainTotals::default();
        for c in 0..NUM_CLASSES {
            let n = self.class_in_use(d, c);
            t.blocks_in_use = t.blocks_in_use.wrapping_add(n);
            t.bytes_in_use = t.bytes_in_use.wrapping_add(n.wrapping_mul(BLOCK_SIZES[c] as u64));
        }
        t.large_blocks_in_use = self.class_in_use(d, LARGE_SLOT);
        t.large_bytes_in_use = self.large_alloc[d].wrapping_sub(self.large_freed[d]);
        t.blocks_in_use = t.blocks_in_use.wrapping_add(t.large_blocks_in_use);
        t.bytes_in_use = t.bytes_in_use.wrapping_add(t.large_bytes_in_use);
        t.foreign_frees = self.foreign_frees[d];
        t.foreign_reallocs = self.foreign_reallocs[d];
        t
    }
}
