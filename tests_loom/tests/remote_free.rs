//! Loom model of the remote-free stack.
//!
//! Mirrors `src/heap.rs`:
//! - `push_remote`: load the head (`Relaxed`), write it into the block's first word (a plain
//!   store), `compare_exchange_weak(head, p, Release, Relaxed)` until it succeeds;
//! - `collect_remote`: the owner's early-out `remote.load(Relaxed).is_null()`, then
//!   `remote.swap(null, Acquire)` and a walk of the chain through each block's first word.
//!
//! Blocks are slots of an array; a "pointer" is `index + 1` (0 is null). Each block has its link
//! word and a payload, both loom `UnsafeCell`s, so loom reports a data race if the owner could
//! read a link or the freeing thread's last writes to the block without a happens-before edge.
//! The owner, after collecting a block, reuses it (writes its payload), as an allocation would.
//!
//! Loom's partial-order reduction can skip interleavings when a thread's own earlier access to an
//! atomic hides another thread's access to it (tokio-rs/loom#392: a model with a relaxed load
//! before a CAS ran one execution only). So every step of the model is preceded by
//! `Sched::point` (src/lib.rs), a relaxed RMW on an extra atomic that only serves as a scheduling
//! point: loom then branches at each step. The `relaxed_push_is_caught` control shows the racy
//! interleavings are reached.
//!
//! Checked: every pushed block is collected exactly once (none lost, none twice, no cycle), its
//! contents as the freeing thread left them, with no data race; and the same model with the
//! push's `Release` weakened to `Relaxed` is caught (so the model has teeth).

use loom::sync::atomic::{AtomicUsize, Ordering, Ordering::*};
use loom::sync::Arc;
use loom::thread;
use rustmalloc_loom::{blocks, two_freers_while_owner_collects, Block, Sched};

const NBLOCKS: usize = 4;
/// Loom's bound on preemptions per execution (exhaustive within it; bugs in protocols this
/// small need one or two).
const PREEMPTIONS: usize = 4;


struct Heap {
    remote: AtomicUsize,
    blocks: Vec<Block>,
    /// Scheduling points only (see the module doc); carries no data.
    sched: Sched,
}

impl Heap {
    fn new() -> Heap {
        Heap {
            remote: AtomicUsize::new(0),
            blocks: blocks(NBLOCKS),
            sched: Sched::new(),
        }
    }


    /// `heap::push_remote`, with the success ordering of its CAS as a parameter.
    fn push_remote(&self, i: usize, success: Ordering) {
        let p = i + 1;
        self.sched.point();
        let mut head = self.remote.load(Relaxed);
        loop {
            // SAFETY (model): the caller holds the block; nobody else reads it until published.
            self.blocks[i].next.with_mut(|n| unsafe { *n = head });
            self.sched.point();
            match self.remote.compare_exchange_weak(head, p, success, Relaxed) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// `heap::collect_remote`: returns the collected blocks in stack order. The owner checks each
    /// block holds what its freer wrote, then reuses it.
    fn collect_remote(&self, out: &mut Vec<usize>) {
        self.sched.point();
        if self.remote.load(Relaxed) == 0 {
            return;
        }
        self.sched.point();
        let mut b = self.remote.swap(0, Acquire);
        while b != 0 {
            let i = b - 1;
            self.sched.point();
            assert!(out.len() < 64, "cycle on the remote stack");
            let next = self.blocks[i].next.with(|n| unsafe { *n });
            let v = self.blocks[i].payload.with(|v| unsafe { *v });
            assert_eq!(v, freed_value(i), "block {i} collected without its freer's writes");
            self.blocks[i].payload.with_mut(|v| unsafe { *v = 0 }); // reused by the owner
            out.push(i);
            b = next;
        }
    }
}

fn freed_value(i: usize) -> u64 {
    0xF00 + i as u64
}

/// A freeing thread: its last writes to each block, then the push.
fn free_blocks(h: &Heap, blocks: &[usize], success: Ordering) {
    for &i in blocks {
        h.sched.point();
        h.blocks[i].payload.with_mut(|v| unsafe { *v = freed_value(i) });
        h.push_remote(i, success);
    }
}

/// Two threads free blocks of the owner's heap while the owner collects, twice; after both are
/// done the owner collects the rest. Every block must come back exactly once.
fn model(success: Ordering, per_thread: [&'static [usize]; 2]) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(PREEMPTIONS);
    b.check(move || {
        two_freers_while_owner_collects(
            Arc::new(Heap::new()),
            per_thread,
            move |h: &Heap, blocks: &[usize]| free_blocks(h, blocks, success),
            |h: &Heap, got: &mut Vec<usize>| h.collect_remote(got),
        );
    });
}

#[test]
fn two_freers_one_block_each_owner_collecting() {
    model(Release, [&[0], &[1]]);
}

#[test]
fn two_freers_two_blocks_each_owner_collecting() {
    // Bounded: 4 pushes with retry loops and 3 collects; the bound keeps it to seconds.
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(|| {
        let h = Arc::new(Heap::new());
        let t1 = {
            let h = h.clone();
            thread::spawn(move || free_blocks(&h, &[0, 1], Release))
        };
        let t2 = {
            let h = h.clone();
            thread::spawn(move || free_blocks(&h, &[2, 3], Release))
        };
        let mut got = Vec::new();
        h.collect_remote(&mut got);
        h.collect_remote(&mut got);
        t1.join().unwrap();
        t2.join().unwrap();
        h.collect_remote(&mut got);
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2, 3], "blocks lost or collected twice");
    });
}

/// The same protocol with a `Relaxed` push: the owner's read of a block's link or contents is then
/// a data race, which loom must report.
#[test]
#[should_panic(expected = "Causality violation")]
fn relaxed_push_is_caught() {
    model(Relaxed, [&[0], &[1]]);
}
