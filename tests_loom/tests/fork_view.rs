//! Loom model of what the fork child handler sees.
//!
//! Mirrors `src/raw_heap.rs`: `with_heap` (the `busy` flag around each call), `thread_exit`
//! (`collect_remote`, then `state = ABANDONED`), `with_fallback` (the fallback heap behind
//! `FALLBACK_LOCK`), and the `pthread_atfork` handlers: `fork_prepare` takes `FALLBACK_LOCK`,
//! `fork_parent` releases it, and `fork_child`, in the child, marks every heap that is `OWNED` by
//! another thread `POISONED` if its `busy` flag is set and `ABANDONED` (adoptable) otherwise, then
//! releases the lock.
//!
//! How fork is modelled: `fork()` copies the address space at one instant, and in the child only
//! the forking thread exists. Every step a thread takes on shared allocator state runs here as one
//! critical section of a `World` mutex, and the fork takes a copy of the whole `World` inside one
//! such section; loom then runs the fork between every pair of steps of the other threads. The
//! child handler runs on the copy, and the property checked is the one the design relies on:
//! **no heap that the child may adopt (ABANDONED) or use (the fallback heap) is half-updated.**
//! (A "half-updated" heap is one whose two halves of an update disagree: `a != b`.) The snapshot
//! is sequentially consistent (as a fork's copy is on x86-64, whose stores become visible in
//! program order); whether the
//! `fence(Release)` after `busy = true` orders the stores as seen by a fork on weaker hardware is
//! outside what loom (or the C++ memory model) can express.
//!
//! Finding: `thread_exit` drains the remote stack (`heap::collect_remote`, which changes pages,
//! page queues and segments) without setting `busy`. A fork at that moment leaves the heap
//! `OWNED` and not busy in the child, so `fork_child` marks it ABANDONED and the child's next
//! thread adopts a half-updated heap. `fork_during_thread_exit_before_fix` shows it (it expects
//! the model's assertion to fire); `fork_during_thread_exit_with_busy` shows that setting `busy`
//! around that drain (as `with_heap` does) removes it. `raw_heap.rs` now does exactly that (the
//! fix followed this finding); the before-fix model stays as a control that loom must catch. The
//! same bug on the real allocator before the fix: `scripts/repro_fork_during_thread_exit/` (a
//! child's thread hung on a corrupted segment list about once in 1,000-3,000 timed forks).

use loom::sync::{Arc, Mutex};
use loom::thread;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Owned,
    Abandoned,
    Poisoned,
}

#[derive(Clone, Debug)]
struct Heap {
    state: State,
    busy: bool,
    /// An update of the heap's structures (free list, page queue, segment list...) is two
    /// steps, `a += 1` then `b += 1`; in between the heap is half-updated.
    a: u32,
    b: u32,
    /// Blocks on its remote stack.
    remote: u32,
}

impl Heap {
    fn owned() -> Heap {
        Heap { state: State::Owned, busy: false, a: 0, b: 0, remote: 0 }
    }
    fn consistent(&self) -> bool {
        self.a == self.b
    }
}

#[derive(Clone, Debug)]
struct World {
    /// heaps[0]: the other thread's heap; heaps[1]: the forking thread's own heap.
    heaps: Vec<Heap>,
    /// The fallback heap (`FALLBACK`), updated only under `FALLBACK_LOCK`.
    fallback: Heap,
}

/// The shared state: memory (each step under the `world` mutex), and `FALLBACK_LOCK` (a spin
/// lock in `raw_heap.rs`; a blocking mutex here, so that loom need not explore spinning).
#[derive(Clone)]
struct Shared {
    world: Arc<Mutex<World>>,
    fallback_lock: Arc<Mutex<()>>,
}

/// One atomic step on the shared state.
fn step(w: &Shared, f: impl FnOnce(&mut World)) {
    f(&mut w.world.lock().unwrap());
}

/// `with_heap` around one call that updates heap `h` (two steps, under `busy`).
fn call(w: &Shared, h: usize) {
    step(w, |w| w.heaps[h].busy = true);
    step(w, |w| w.heaps[h].a += 1);
    step(w, |w| w.heaps[h].b += 1);
    step(w, |w| w.heaps[h].busy = false);
}

/// `collect_remote` of one block: one update of the heap.
fn collect_one(w: &Shared, h: usize) {
    step(w, |w| {
        w.heaps[h].remote -= 1;
        w.heaps[h].a += 1;
    });
    step(w, |w| w.heaps[h].b += 1);
}

/// `thread_exit` as `raw_heap.rs` had it before the fix: drain the remote stack, then abandon.
fn thread_exit_before_fix(w: &Shared, h: usize) {
    collect_one(w, h);
    step(w, |w| w.heaps[h].state = State::Abandoned);
}

/// `thread_exit` with the drain under `busy`, as `with_heap` does for every call: what
/// `raw_heap::hand_over` does now.
fn thread_exit_with_busy(w: &Shared, h: usize) {
    step(w, |w| w.heaps[h].busy = true);
    collect_one(w, h);
    step(w, |w| w.heaps[h].busy = false);
    step(w, |w| w.heaps[h].state = State::Abandoned);
}

/// A thread past its heap's hand-over, in `with_fallback`.
fn use_fallback(w: &Shared) {
    let _lock = w.fallback_lock.lock().unwrap(); // lock_fallback()
    step(w, |w| w.fallback.a += 1);
    step(w, |w| w.fallback.b += 1);
} // FALLBACK_LOCK released

/// The handlers as `raw_heap.rs` has them, or with one of their two safeguards removed (the
/// controls: the model must then find a half-updated heap in the child).
#[derive(Clone, Copy, PartialEq)]
enum Handlers {
    AsWritten,
    /// `fork_prepare` does not take `FALLBACK_LOCK`.
    NoPrepareLock,
    /// `fork_child` abandons busy heaps too.
    IgnoreBusy,
}

/// The forking thread: prepare, the fork itself (the copy), parent; returns the child's memory
/// after `fork_child`.
fn fork(w: &Shared, mine: usize, handlers: Handlers) -> World {
    let prepare = (handlers != Handlers::NoPrepareLock).then(|| w.fallback_lock.lock().unwrap());
    let mut child = w.world.lock().unwrap().clone(); // fork(): the child's copy of memory
    drop(prepare); // fork_parent: FALLBACK_LOCK released
    // fork_child, in the child (one thread; FALLBACK_LOCK released there too):
    for (i, h) in child.heaps.iter_mut().enumerate() {
        if i != mine && h.state == State::Owned {
            let poison = h.busy && handlers != Handlers::IgnoreBusy;
            h.state = if poison { State::Poisoned } else { State::Abandoned };
            h.busy = false;
        }
    }
    child
}

/// What the child may touch must be consistent.
fn check_child(child: &World) {
    for (i, h) in child.heaps.iter().enumerate() {
        if h.state == State::Abandoned {
            assert!(h.consistent(), "half-updated heap adopted in the child: heap {i} {h:?}");
        }
    }
    assert!(child.fallback.consistent(), "half-updated fallback heap in the child");
}

fn world(remote_on_heap0: u32) -> Shared {
    let mut h0 = Heap::owned();
    h0.remote = remote_on_heap0;
    Shared {
        world: Arc::new(Mutex::new(World { heaps: vec![h0, Heap::owned()], fallback: Heap::owned() })),
        fallback_lock: Arc::new(Mutex::new(())),
    }
}

/// A thread mid-call and one on the fallback heap while another forks.
fn fork_while_threads_call(handlers: Handlers) {
    loom::model(move || {
        let w = world(0);
        let t1 = {
            let w = w.clone();
            thread::spawn(move || call(&w, 0))
        };
        let t2 = {
            let w = w.clone();
            thread::spawn(move || use_fallback(&w))
        };
        let child = fork(&w, 1, handlers);
        check_child(&child);
        t1.join().unwrap();
        t2.join().unwrap();
        let parent = w.world.lock().unwrap();
        assert!(parent.heaps[0].consistent() && parent.fallback.consistent());
    });
}

/// The busy heap is poisoned, never adopted; the fallback heap is never mid-update at the fork.
#[test]
fn fork_while_threads_call_as_written() {
    fork_while_threads_call(Handlers::AsWritten);
}

/// Control: without the prepare handler's lock, the child can get a half-updated fallback heap.
#[test]
#[should_panic(expected = "half-updated fallback heap in the child")]
fn control_fork_without_prepare_lock() {
    fork_while_threads_call(Handlers::NoPrepareLock);
}

/// Control: without the busy check, the child can adopt a heap in the middle of a call.
#[test]
#[should_panic(expected = "half-updated heap adopted in the child")]
fn control_fork_child_ignoring_busy() {
    fork_while_threads_call(Handlers::IgnoreBusy);
}

/// A thread exits (draining a remote-freed block) while another forks: with the drain under
/// `busy`, nothing half-updated can be adopted in the child.
#[test]
fn fork_during_thread_exit_with_busy() {
    loom::model(|| {
        let w = world(1);
        let t1 = {
            let w = w.clone();
            thread::spawn(move || thread_exit_with_busy(&w, 0))
        };
        let child = fork(&w, 1, Handlers::AsWritten);
        check_child(&child);
        t1.join().unwrap();
    });
}

/// The same with `thread_exit` as `raw_heap.rs` had it before the fix (no `busy` around its
/// drain): a fork in the middle of the drain hands a half-updated heap to the child. A control:
/// loom must catch it (see the module doc).
#[test]
#[should_panic(expected = "half-updated heap adopted in the child")]
fn fork_during_thread_exit_before_fix() {
    loom::model(|| {
        let w = world(1);
        let t1 = {
            let w = w.clone();
            thread::spawn(move || thread_exit_before_fix(&w, 0))
        };
        let child = fork(&w, 1, Handlers::AsWritten);
        check_child(&child);
        t1.join().unwrap();
    });
}
