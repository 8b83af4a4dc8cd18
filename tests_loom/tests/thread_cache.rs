//! Loom model of the RAW heap cache keyed by thread pointer (`HEAP_CACHE` and `Heap::owner_tp`).
//!
//! Mirrors `src/raw_heap.rs`:
//! - `with_heap`: load the cache slot of the thread pointer (`Relaxed`); use the heap if its
//!   `owner_tp.load(Relaxed)` equals the caller's thread pointer; else `with_heap_uncached`: the
//!   thread's `THREAD_HEAP` (a thread-local; here a local variable), storing it into the slot
//!   (`Relaxed`), or, if there is none, `acquire` (adopt an abandoned heap with a
//!   `compare_exchange(ABANDONED, OWNED, Acquire, Relaxed)`, else create one) and then
//!   `owner_tp.store(tp, Relaxed)`;
//! - `hand_over` (thread exit): `owner_tp.store(0, Relaxed)`, then `state.store(ABANDONED,
//!   Release)`.
//!
//! Every model uses one cache slot, so all threads collide on it (the worst case of the
//! direct-mapped cache). Thread pointers are numbers; a thread started after another was joined
//! may get the same one, as glibc hands a dead thread's cached stack (and so its thread pointer)
//! to a new thread; the join stands for the happens-before that glibc's stack cache lock gives.
//!
//! A heap's owner-only state is a loom `UnsafeCell`: if two threads could use a heap at once, or
//! a user could miss the previous user's writes, loom reports it. `stale_cache_is_caught` is the
//! control: without the clearing store in `hand_over`, a new thread with the dead thread's
//! pointer keeps using the abandoned heap while another thread adopts it.

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU8, AtomicUsize, Ordering::*};
use loom::sync::Arc;
use loom::thread;

const OWNED: u8 = 0;
const ABANDONED: u8 = 1;
const MAX_HEAPS: usize = 4;

struct Heap {
    state: AtomicU8,
    owner_tp: AtomicUsize,
    /// Everything only the user touches: a count of calls.
    data: UnsafeCell<u64>,
}

struct World {
    heaps: Vec<Heap>,
    /// Heaps created so far (heap i exists iff i < created); acquire walks them as the registry.
    created: AtomicUsize,
    /// The one cache slot: heap index + 1, 0 for none.
    slot: AtomicUsize,
    /// Whether `hand_over` clears `owner_tp` (it does in the real code).
    clear_on_exit: bool,
}

/// One thread's view: its thread pointer and its `THREAD_HEAP`.
struct Thread {
    tp: usize,
    heap: Option<usize>,
}

impl World {
    fn new(clear_on_exit: bool) -> World {
        World {
            heaps: (0..MAX_HEAPS)
                .map(|_| Heap {
                    state: AtomicU8::new(OWNED),
                    owner_tp: AtomicUsize::new(0),
                    data: UnsafeCell::new(0),
                })
                .collect(),
            created: AtomicUsize::new(0),
            slot: AtomicUsize::new(0),
            clear_on_exit,
        }
    }

    /// `raw_heap::acquire` (the registry is the first `created` heaps; `create` publishes with
    /// `Release`, as the registry push does).
    fn acquire(&self) -> usize {
        let n = self.created.load(Acquire);
        for h in 0..n {
            let heap = &self.heaps[h];
            if heap.state.load(Relaxed) == ABANDONED
                && heap.state.compare_exchange(ABANDONED, OWNED, Acquire, Relaxed).is_ok()
            {
                return h;
            }
        }
        let h = self.created.fetch_add(1, Release);
        assert!(h < MAX_HEAPS, "more heaps than the model allows");
        h
    }

    /// `raw_heap::with_heap` around one call that changes the heap; returns the heap used.
    fn call(&self, t: &mut Thread) -> usize {
        let cached = self.slot.load(Relaxed);
        let h = if cached != 0 && self.heaps[cached - 1].owner_tp.load(Relaxed) == t.tp {
            cached - 1
        } else {
            match t.heap {
                Some(h) => {
                    self.slot.store(h + 1, Relaxed);
                    h
                }
                None => {
                    let h = self.acquire();
                    self.heaps[h].owner_tp.store(t.tp, Relaxed);
                    t.heap = Some(h);
                    self.slot.store(h + 1, Relaxed);
                    h
                }
            }
        };
        self.heaps[h].data.with_mut(|d| unsafe { *d += 1 });
        h
    }

    /// `raw_heap::hand_over`.
    fn exit(&self, t: &Thread) {
        if let Some(h) = t.heap {
            if self.clear_on_exit {
                self.heaps[h].owner_tp.store(0, Relaxed);
            }
            self.heaps[h].state.store(ABANDONED, Release);
        }
    }
}

/// Thread A (pointer 1) makes a call and exits while thread C (pointer 2) makes one on the same
/// cache slot;
/// then thread B gets A's thread pointer and thread D (pointer 3) starts, and each makes a call,
/// both at once: one of them adopts A's heap. No heap may be used by two threads at once.
fn reuse_and_adopt(clear_on_exit: bool) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    b.check(move || {
        let w = Arc::new(World::new(clear_on_exit));
        let spawn = |w: &Arc<World>, tp: usize, calls: usize, exit: bool| {
            let w = w.clone();
            thread::spawn(move || {
                let mut t = Thread { tp, heap: None };
                let mut used = Vec::new();
                for _ in 0..calls {
                    used.push(w.call(&mut t));
                }
                if exit {
                    w.exit(&t);
                }
                used
            })
        };
        let a = spawn(&w, 1, 1, true);
        let c = spawn(&w, 2, 1, false);
        let used_a = a.join().unwrap();
        let used_b_d = {
            let b = spawn(&w, 1, 1, false);
            let d = spawn(&w, 3, 1, false);
            let (ub, ud) = (b.join().unwrap(), d.join().unwrap());
            (ub, ud)
        };
        let used_c = c.join().unwrap();
        // Each thread stays on one heap, and live threads never share one.
        for used in [&used_a, &used_c, &used_b_d.0, &used_b_d.1] {
            assert!(used.windows(2).all(|p| p[0] == p[1]), "a thread changed heaps: {used:?}");
        }
        assert_ne!(used_c[0], used_b_d.0[0]);
        assert_ne!(used_c[0], used_b_d.1[0]);
        assert_ne!(used_b_d.0[0], used_b_d.1[0]);
        // Every call was counted on the heap it used, with nothing lost to a race.
        let total: u64 = (0..w.created.load(Relaxed))
            .map(|h| w.heaps[h].data.with(|d| unsafe { *d }))
            .sum();
        assert_eq!(total, 4);
    });
}

#[test]
fn thread_pointer_reuse_and_adoption() {
    reuse_and_adopt(true);
}

/// Without clearing `owner_tp` at thread exit, the thread that gets the dead thread's pointer
/// keeps using its heap through the cache while another thread adopts it: loom must catch it.
#[test]
#[should_panic(expected = "Causality violation")]
fn stale_cache_is_caught() {
    reuse_and_adopt(false);
}
