//! Loom model of RAW heap abandonment and adoption, and of the heap registry.
//!
//! Mirrors `src/raw_heap.rs`:
//! - `create`: a fresh heap (`os::map_aligned` here is taking the next unused slot), its fields
//!   written with plain stores, then pushed onto `REGISTRY` with a `compare_exchange_weak(head, h,
//!   Release, Relaxed)` loop that writes `next_in_registry` (a plain field) before each try;
//! - `acquire`: walk `REGISTRY` from `load(Acquire)` through `next_in_registry`; adopt the first
//!   heap whose `state.load(Relaxed) == ABANDONED` and whose `compare_exchange(ABANDONED, OWNED,
//!   Acquire, Relaxed)` succeeds; else `create(OWNED)`;
//! - `with_heap`: `busy.store(true, Relaxed)`, `fence(Release)`, the call, `busy.store(false,
//!   Release)`;
//! - `thread_exit` (the pthread key destructor): `heap::collect_remote(h)`, then
//!   `state.store(ABANDONED, Release)`;
//! - and `heap::push_remote` / `collect_remote` for blocks others free into the heap (as in
//!   remote_free.rs).
//!
//! Every step is preceded by `Sched::point` (src/lib.rs), a relaxed RMW on an atomic that only
//! serves as a scheduling point, so that loom's partial-order reduction does not skip
//! interleavings (see remote_free.rs and tokio-rs/loom#392); `relaxed_abandon_is_caught` is the
//! control.
//!
//! The heap's owner-only state (page queues, free lists, counters: everything but `remote`) is one
//! loom `UnsafeCell`, so loom reports a data race if an adopter could touch it without seeing the
//! previous owner's last writes, or if two threads could own a heap at once.

use loom::cell::UnsafeCell;
use loom::sync::atomic::{fence, AtomicBool, AtomicU8, AtomicUsize, Ordering, Ordering::*};
use loom::sync::Arc;
use loom::thread;
use rustmalloc_loom::Sched;

const OWNED: u8 = 0;
const ABANDONED: u8 = 1;
const MAX_HEAPS: usize = 4;
const NBLOCKS: usize = 2;

struct RawHeap {
    state: AtomicU8,
    busy: AtomicBool,
    /// Everything only the owner touches (queues, pages, counters): a count of owner calls.
    data: UnsafeCell<u64>,
    remote: AtomicUsize,
    next_in_registry: UnsafeCell<usize>,
}

struct World {
    /// `REGISTRY`: heap index + 1, 0 for none.
    registry: AtomicUsize,
    /// Slots "mapped" so far (models `os::map_aligned` handing out fresh memory).
    mapped: AtomicUsize,
    heaps: Vec<RawHeap>,
    /// Blocks of heap 0 that other threads free: link word and contents.
    block_next: Vec<UnsafeCell<usize>>,
    block_payload: Vec<UnsafeCell<u64>>,
    /// How the state store in `thread_exit` is ordered (`Release` in the real code).
    exit_order: Ordering,
    /// Scheduling points only; carries no data.
    sched: Sched,
}

impl World {
    fn new(exit_order: Ordering) -> World {
        World {
            registry: AtomicUsize::new(0),
            mapped: AtomicUsize::new(0),
            heaps: (0..MAX_HEAPS)
                .map(|_| RawHeap {
                    state: AtomicU8::new(OWNED),
                    busy: AtomicBool::new(false),
                    data: UnsafeCell::new(0),
                    remote: AtomicUsize::new(0),
                    next_in_registry: UnsafeCell::new(0),
                })
                .collect(),
            block_next: (0..NBLOCKS).map(|_| UnsafeCell::new(0)).collect(),
            block_payload: (0..NBLOCKS).map(|_| UnsafeCell::new(0)).collect(),
            exit_order,
            sched: Sched::new(),
        }
    }


    /// `raw_heap::create`.
    fn create(&self, state: u8) -> usize {
        self.sched.point();
        let h = self.mapped.fetch_add(1, Relaxed);
        assert!(h < MAX_HEAPS, "more heaps created than the model allows");
        let heap = &self.heaps[h];
        heap.state.store(state, Relaxed);
        heap.data.with_mut(|d| unsafe { *d = 0 });
        self.sched.point();
        let mut head = self.registry.load(Relaxed);
        loop {
            heap.next_in_registry.with_mut(|n| unsafe { *n = head });
            self.sched.point();
            match self.registry.compare_exchange_weak(head, h + 1, Release, Relaxed) {
                Ok(_) => break,
                Err(now) => head = now,
            }
        }
        h
    }

    /// `raw_heap::acquire`.
    fn acquire(&self) -> usize {
        self.sched.point();
        let mut p = self.registry.load(Acquire);
        while p != 0 {
            let h = &self.heaps[p - 1];
            self.sched.point();
            if h.state.load(Relaxed) == ABANDONED && {
                self.sched.point();
                h.state.compare_exchange(ABANDONED, OWNED, Acquire, Relaxed).is_ok()
            } {
                return p - 1;
            }
            self.sched.point();
            p = h.next_in_registry.with(|n| unsafe { *n });
        }
        self.create(OWNED)
    }

    /// `raw_heap::with_heap` around one allocator call that changes the heap (and, as a slow path
    /// does, collects the remote stack first).
    fn call(&self, h: usize, collected: &mut Vec<usize>) {
        let heap = &self.heaps[h];
        self.sched.point();
        heap.busy.store(true, Relaxed);
        fence(Release);
        self.collect_remote(h, collected);
        self.sched.point();
        heap.data.with_mut(|d| unsafe { *d += 1 });
        self.sched.point();
        heap.busy.store(false, Release);
    }

    /// `raw_heap::thread_exit`.
    fn thread_exit(&self, h: usize, collected: &mut Vec<usize>) {
        self.collect_remote(h, collected);
        self.sched.point();
        self.heaps[h].state.store(ABANDONED, self.exit_order);
    }

    /// `heap::push_remote` of block `b` (a block of heap `h`).
    fn push_remote(&self, h: usize, b: usize) {
        self.sched.point();
        self.block_payload[b].with_mut(|v| unsafe { *v = 0xF00 + b as u64 });
        let remote = &self.heaps[h].remote;
        self.sched.point();
        let mut head = remote.load(Relaxed);
        loop {
            self.block_next[b].with_mut(|n| unsafe { *n = head });
            self.sched.point();
            match remote.compare_exchange_weak(head, b + 1, Release, Relaxed) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// `heap::collect_remote`: the owner frees each block into its pages (here: touches the
    /// heap's owner-only state and the block).
    fn collect_remote(&self, h: usize, out: &mut Vec<usize>) {
        let heap = &self.heaps[h];
        self.sched.point();
        if heap.remote.load(Relaxed) == 0 {
            return;
        }
        self.sched.point();
        let mut p = heap.remote.swap(0, Acquire);
        while p != 0 {
            let b = p - 1;
            self.sched.point();
            let next = self.block_next[b].with(|n| unsafe { *n });
            assert_eq!(self.block_payload[b].with(|v| unsafe { *v }), 0xF00 + b as u64);
            heap.data.with_mut(|d| unsafe { *d += 0 });
            out.push(b);
            p = next;
        }
    }

    fn registry_len(&self) -> usize {
        let (mut n, mut p) = (0, self.registry.load(Acquire));
        while p != 0 {
            n += 1;
            assert!(n <= MAX_HEAPS, "registry cycle");
            p = self.heaps[p - 1].next_in_registry.with(|n| unsafe { *n });
        }
        n
    }
}

/// A thread exits while another starts (and adopts its heap, if it is abandoned by then, else
/// creates one) and a third frees a block of the exiting thread's heap. The adopter must see the
/// old owner's writes (no race on the heap's state), and the block must be collected once.
fn exit_adopt_remote_free(exit_order: Ordering) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(move || {
        let w = Arc::new(World::new(exit_order));
        let h0 = w.acquire(); // the exiting thread's heap, made before the threads start
        assert_eq!(h0, 0);
        let exiting = {
            let w = w.clone();
            thread::spawn(move || {
                let mut got = Vec::new();
                w.call(0, &mut got);
                w.thread_exit(0, &mut got);
                got
            })
        };
        let starting = {
            let w = w.clone();
            thread::spawn(move || {
                let mut got = Vec::new();
                let h = w.acquire();
                w.call(h, &mut got);
                (h, got)
            })
        };
        let freeing = {
            let w = w.clone();
            thread::spawn(move || w.push_remote(0, 0))
        };
        let mut got = exiting.join().unwrap();
        let (h, got2) = starting.join().unwrap();
        freeing.join().unwrap();
        got.extend(got2);
        let calls0 = w.heaps[0].data.with(|d| unsafe { *d });
        if h == 0 {
            assert_eq!(calls0, 2, "adopter did not continue from the old owner's state");
            assert_eq!(w.heaps[0].state.load(Relaxed), OWNED);
        } else {
            assert_eq!(h, 1);
            assert_eq!(calls0, 1);
            assert_eq!(w.heaps[0].state.load(Relaxed), ABANDONED);
            // The next thread to start adopts it.
            assert_eq!(w.acquire(), 0);
        }
        w.collect_remote(0, &mut got);
        assert_eq!(got, vec![0], "the remote-freed block was lost or collected twice");
        assert_eq!(w.registry_len(), w.mapped.load(Relaxed));
    });
}

#[test]
fn exit_adopt_and_remote_free() {
    exit_adopt_remote_free(Release);
}

/// With the abandoning store `Relaxed`, an adopter's access to the heap races with the old
/// owner's last writes: loom must report it.
#[test]
#[should_panic(expected = "Causality violation")]
fn relaxed_abandon_is_caught() {
    exit_adopt_remote_free(Relaxed);
}

/// Two threads start at once while one heap is abandoned and a third thread creates a heap
/// (pushing onto the registry they walk): exactly one of the two adopts the abandoned heap, no
/// heap gets two owners, and the registry holds every heap created.
#[test]
fn two_adopters_race_for_one_heap() {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(|| {
        let w = Arc::new(World::new(Release));
        let h0 = w.acquire();
        w.heaps[h0].data.with_mut(|d| unsafe { *d = 7 });
        w.thread_exit(h0, &mut Vec::new());
        let spawn_acquirer = |w: &Arc<World>| {
            let w = w.clone();
            thread::spawn(move || {
                let h = w.acquire();
                let before = w.heaps[h].data.with(|d| unsafe { *d });
                w.call(h, &mut Vec::new());
                (h, before)
            })
        };
        let a = spawn_acquirer(&w);
        let b = spawn_acquirer(&w);
        let c = {
            let w = w.clone();
            thread::spawn(move || w.create(OWNED))
        };
        let (ha, before_a) = a.join().unwrap();
        let (hb, before_b) = b.join().unwrap();
        let hc = c.join().unwrap();
        assert!(ha != hb && ha != hc && hb != hc, "a heap with two owners: {ha} {hb} {hc}");
        assert!(ha == 0 || hb == 0, "the abandoned heap was not adopted");
        let before_adopter = if ha == 0 { before_a } else { before_b };
        assert_eq!(before_adopter, 7, "adopter did not see the abandoned heap's state");
        assert_eq!(w.registry_len(), 3);
    });
}
