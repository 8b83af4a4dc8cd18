//! Loom models live in tests/: see the crate manifest. What several models share is here.

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// A block of a model: `next`, its first word, is the link while it is on a list; `payload`,
/// the rest, is what its last user wrote. Both are loom cells, so loom reports a data race where
/// a reader has no happens-before edge to the last write.
pub struct Block {
    pub next: UnsafeCell<usize>,
    pub payload: UnsafeCell<u64>,
}

/// `n` blocks, links and payloads 0. A model's "pointer" to block `i` is `i + 1` (0 is null).
pub fn blocks(n: usize) -> Vec<Block> {
    (0..n)
        .map(|_| Block {
            next: UnsafeCell::new(0),
            payload: UnsafeCell::new(0),
        })
        .collect()
}

/// Scheduling points only: an atomic that carries no data. Loom's partial-order reduction can
/// skip interleavings when a thread's own earlier access to an atomic hides another thread's
/// access to it (tokio-rs/loom#392: a model with a relaxed load before a CAS ran one execution
/// only), so each step of a model is preceded by `point`, a relaxed RMW on this atomic, and loom
/// branches at every step.
pub struct Sched(AtomicUsize);

impl Sched {
    pub fn new() -> Sched {
        Sched(AtomicUsize::new(0))
    }

    /// A scheduling point.
    pub fn point(&self) {
        self.0.fetch_add(1, Relaxed);
    }
}
