//! Loom models live in tests/: see the crate manifest. What several models share is here.

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use loom::sync::Arc;
use loom::thread;

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

/// The remote-free models' execution: two threads `free` the blocks of `per_thread` (each its
/// own list) into the heap `h` while its owner `collect`s twice; after both are done the owner
/// collects the rest. Every block must come back exactly once.
pub fn two_freers_while_owner_collects<H: 'static>(
    h: Arc<H>,
    per_thread: [&'static [usize]; 2],
    free: impl Fn(&H, &[usize]) + Copy + 'static,
    mut collect: impl FnMut(&H, &mut Vec<usize>),
) {
    let threads: Vec<_> = per_thread
        .iter()
        .map(|&blocks| {
            let h = h.clone();
            thread::spawn(move || free(&h, blocks))
        })
        .collect();
    let mut got = Vec::new();
    collect(&h, &mut got);
    collect(&h, &mut got);
    for t in threads {
        t.join().unwrap();
    }
    collect(&h, &mut got);
    got.sort_unstable();
    let mut want: Vec<usize> = per_thread.iter().flat_map(|b| b.iter().copied()).collect();
    want.sort_unstable();
    assert_eq!(got, want, "blocks lost or collected twice");
}
