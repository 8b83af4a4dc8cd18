//! Fuzz target: the allocator core, driven by an arbitrary sequence of actions and checked
//! against a model after every one of them.
//!
//! Actions: malloc / calloc / realloc / free of arbitrary sizes (biased to class boundaries,
//! large spans and huge mappings), in the three domains, realloc and free through any domain's
//! function (ownership, not the function, decides where a block goes back), on "simulated
//! threads": RAW calls run on one of `WORKERS` worker threads (or on the fuzzing thread itself),
//! each a real std thread with its own RAW heap, reached over a channel. Calls are synchronous
//! (the fuzzing thread waits for each reply), so an input replays the same way every time; blocks
//! still cross threads (remote frees, frees of a GIL-heap block from a RAW thread and the
//! reverse), and `Exit` ends a worker's thread so that its heap is abandoned and adopted by the
//! next thread.
//!
//! The model checks, after each action: every live block is 16-byte aligned, ours (`owns`), does
//! not overlap any other live block (over its whole usable size), and holds the pattern written
//! into it (realloc keeps the common prefix); calloc returns zeros; usable sizes are what the
//! size classes say; and `domain_totals()` agrees with the model in every domain (blocks and
//! bytes in use, large blocks and bytes, calloc and realloc calls). `Check` also runs the heap
//! invariant walker on the GIL heap (`check_gil_heap`) and on a worker's RAW heap.
//!
//! MEM and OBJ (the GIL heap) are only ever called from the fuzzing thread: that is their contract.
//! Sizes stay below `MAX_SIZE` and live bytes below `MAX_LIVE_BYTES` (real memory is mapped).

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rustmalloc::segment::LARGE_MAX;
use rustmalloc::size_class::{SizeClass, BLOCK_SIZES, NUM_CLASSES, SMALL_MAX};
use rustmalloc::stats::DomainTotals;
use rustmalloc::{MEM, OBJ, RAW};
use std::collections::BTreeMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;

const WORKERS: usize = 3;
const MAX_SIZE: usize = 8 << 20;
const MAX_LIVE_BYTES: usize = 64 << 20;
const MAX_LIVE_BLOCKS: usize = 512;
/// Blocks up to this size are filled and checked in full; larger ones at sampled offsets.
const FULL_CHECK: usize = 64 << 10;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Size {
    Tiny(u8),
    Small(u16),
    /// A class boundary (or SMALL_MAX / LARGE_MAX), minus 1, exact, or plus 1.
    Edge(u8, u8),
    Large(u32),
    Huge(u32),
}

impl Size {
    fn get(self) -> usize {
        match self {
            Size::Tiny(n) => n as usize,
            Size::Small(n) => n as usize % (SMALL_MAX + 1),
            Size::Edge(i, d) => {
                let i = i as usize % (NUM_CLASSES + 3);
                let base = match i {
                    _ if i < NUM_CLASSES => BLOCK_SIZES[i] as usize,
                    _ if i == NUM_CLASSES => LARGE_MAX,
                    _ if i == NUM_CLASSES + 1 => 64 << 10,
                    _ => 0,
                };
                (base + (d % 3) as usize).saturating_sub(1)
            }
            Size::Large(n) => SMALL_MAX + 1 + n as usize % (LARGE_MAX - SMALL_MAX),
            Size::Huge(n) => LARGE_MAX + 1 + n as usize % (MAX_SIZE - LARGE_MAX),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Action {
    Malloc { domain: u8, size: Size, thread: u8 },
    /// calloc(n, size / n), n in 1..=16.
    Calloc { domain: u8, size: Size, n: u8, thread: u8 },
    /// calloc whose n * size overflows: must return null.
    CallocOverflow { domain: u8, thread: u8 },
    /// Realloc live block `idx` (mod the live count) through `via`'s function.
    Realloc { idx: u16, via: u8, size: Size, thread: u8 },
    Free { idx: u16, via: u8, thread: u8 },
    /// End a worker's thread (its heap is abandoned) and start a new one (which adopts a heap).
    Exit { thread: u8 },
    /// Run the invariant walkers (GIL heap, and the RAW heap of `thread`).
    Check { thread: u8 },
}

// ---- worker threads ------------------------------------------------------------------------

type Job = Box<dyn FnOnce() -> usize + Send>;

struct Worker {
    jobs: Sender<Option<Job>>,
    replies: Receiver<usize>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    fn start() -> Worker {
        let (jobs, jrx) = channel::<Option<Job>>();
        let (rtx, replies) = channel();
        let handle = std::thread::spawn(move || {
            while let Ok(Some(job)) = jrx.recv() {
                let r = job();
                rtx.send(r).unwrap();
            }
        });
        Worker { jobs, replies, handle: Some(handle) }
    }

    fn run(&self, job: Job) -> usize {
        self.jobs.send(Some(job)).unwrap();
        self.replies.recv().expect("worker thread died")
    }

    fn stop(&mut self) {
        let _ = self.jobs.send(None);
        if let Some(h) = self.handle.take() {
            h.join().expect("worker thread panicked");
        }
    }
}

/// The workers live across inputs (threads are not free to start); `Exit` replaces one.
static WORKER_POOL: Mutex<Vec<Worker>> = Mutex::new(Vec::new());

/// Run `f` on simulated thread `t`: 0 is the fuzzing thread, 1..=WORKERS the workers.
fn on_thread(workers: &[Worker], t: usize, f: impl FnOnce() -> usize + Send + 'static) -> usize {
    if t == 0 {
        f()
    } else {
        workers[t - 1].run(Box::new(f))
    }
}

/// Walk the calling thread's RAW heap (it is idle on every other thread: calls are synchronous).
fn check_own_raw_heap() -> usize {
    rustmalloc::raw_heap::with_heap(|h| unsafe {
        rustmalloc::heap::collect_remote(h);
        rustmalloc::heap::check_invariants(h);
    });
    0
}

// ---- the model ----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Block {
    /// Requested size (the bytes whose contents are kept).
    size: usize,
    /// Usable size (what the statistics count; the block's extent for the overlap check).
    usable: usize,
    domain: usize,
    seed: u64,
}

#[derive(Default)]
struct Model {
    live: BTreeMap<usize, Block>,
    live_bytes: usize,
    next_seed: u64,
    /// Expected changes since the input started, per domain.
    callocs: [u64; 3],
    reallocs: [u64; 3],
}

fn pattern(seed: u64, i: usize) -> u8 {
    let x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (x ^ (x >> 29) ^ (i as u64 >> 8)) as u8
}

/// Offsets that carry the pattern: every byte of a block up to FULL_CHECK, else the first and
/// last 4 KiB and 64 bytes of every 4 KiB.
fn for_offsets(size: usize, mut f: impl FnMut(usize)) {
    if size <= FULL_CHECK {
        (0..size).for_each(f);
    } else {
        (0..4096).for_each(&mut f);
        (4096..size - 4096).step_by(4096).for_each(|o| (o..o + 64).for_each(&mut f));
        (size - 4096..size).for_each(f);
    }
}

fn fill(p: usize, size: usize, seed: u64) {
    for_offsets(size, |i| unsafe { *((p + i) as *mut u8) = pattern(seed, i) });
}

fn check_contents(p: usize, size: usize, kept: usize, seed: u64, what: &str) {
    for_offsets(size, |i| {
        if i < kept {
            let got = unsafe { *((p + i) as *const u8) };
            assert_eq!(got, pattern(seed, i), "{what}: block {p:#x} (size {size}) byte {i} changed");
        }
    });
}

fn check_zero(p: usize, size: usize) {
    for_offsets(size, |i| {
        let got = unsafe { *((p + i) as *const u8) };
        assert_eq!(got, 0, "calloc block {p:#x} (size {size}) byte {i} is {got:#x}, not 0");
    });
}

/// What `usable_size` must be for a fresh block of `size` bytes.
fn expected_usable(size: usize) -> usize {
    if size <= SMALL_MAX {
        BLOCK_SIZES[SizeClass::of(size).index()] as usize
    } else {
        (size + 15) & !15
    }
}

impl Model {
    fn seed(&mut self) -> u64 {
        self.next_seed += 1;
        self.next_seed
    }

    /// A new block at `p`: checks alignment, ownership, usable size and overlap, then fills it.
    fn add(&mut self, p: usize, size: usize, domain: usize, zeroed: bool, fresh: bool) {
        assert!(p != 0, "allocation of {size} bytes returned null");
        assert_eq!(p % 16, 0, "block {p:#x} (size {size}) not 16-byte aligned");
        assert!(rustmalloc::owns(p as *const u8), "block {p:#x} (size {size}) not ours");
        let usable = unsafe { rustmalloc::usable_size(p as *mut u8) };
        if fresh {
            assert_eq!(usable, expected_usable(size), "usable size of a fresh {size}-byte block");
        } else {
            assert!(usable >= size, "usable size {usable} < requested {size}");
        }
        if let Some((&q, b)) = self.live.range(..=p).next_back() {
            assert!(q + b.usable <= p, "block {p:#x} (size {size}) overlaps live {q:#x} ({b:?})");
        }
        if let Some((&q, b)) = self.live.range(p..).next() {
            assert!(p + usable <= q, "block {p:#x} (usable {usable}) overlaps live {q:#x} ({b:?})");
        }
        if zeroed {
            check_zero(p, size);
        }
        let seed = self.seed();
        fill(p, size, seed);
        self.live.insert(p, Block { size, usable, domain, seed });
        self.live_bytes += usable;
    }

    fn take(&mut self, idx: u16) -> Option<(usize, Block)> {
        if self.live.is_empty() {
            return None;
        }
        let i = idx as usize % self.live.len();
        let (&p, &b) = self.live.iter().nth(i)?;
        check_contents(p, b.size, b.size, b.seed, "before free/realloc");
        self.live.remove(&p);
        self.live_bytes -= b.usable;
        Some((p, b))
    }

    fn room_for(&self, size: usize) -> bool {
        self.live.len() < MAX_LIVE_BLOCKS && self.live_bytes + size <= MAX_LIVE_BYTES
    }

    /// The statistics must agree with the model, relative to `base` (the input's start).
    fn check_totals(&self, base: &[DomainTotals; 3]) {
        // SAFETY: the fuzzing thread is the only user of the GIL heap.
        let now = unsafe { rustmalloc::domain_totals() };
        for d in 0..3 {
            let mine = self.live.values().filter(|b| b.domain == d);
            let (mut blocks, mut bytes, mut lblocks, mut lbytes) = (0u64, 0u64, 0u64, 0u64);
            for b in mine {
                blocks += 1;
                bytes += b.usable as u64;
                if b.usable > SMALL_MAX {
                    lblocks += 1;
                    lbytes += b.usable as u64;
                }
            }
            let (n, o) = (&now[d], &base[d]);
            let got = (
                n.blocks_in_use.wrapping_sub(o.blocks_in_use),
                n.bytes_in_use.wrapping_sub(o.bytes_in_use),
                n.large_blocks_in_use.wrapping_sub(o.large_blocks_in_use),
                n.large_bytes_in_use.wrapping_sub(o.large_bytes_in_use),
                n.callocs - o.callocs,
                n.reallocs - o.reallocs,
            );
            let want = (blocks, bytes, lblocks, lbytes, self.callocs[d], self.reallocs[d]);
            assert_eq!(
                got, want,
                "domain {d} totals (blocks, bytes, large blocks, large bytes, callocs, reallocs) \
                 disagree with the model"
            );
            assert_eq!(n.allocs - n.frees, n.blocks_in_use, "domain {d}: allocs - frees");
            assert!(n.peak_bytes_in_use >= n.bytes_in_use, "domain {d}: peak below in-use");
        }
    }
}

// ---- one input ---------------------------------------------------------------------------

fn domain_of(d: u8) -> usize {
    [RAW, MEM, OBJ][d as usize % 3]
}

fn thread_of(t: u8) -> usize {
    t as usize % (WORKERS + 1)
}

fn malloc_on(workers: &[Worker], domain: usize, t: usize, size: usize) -> usize {
    if domain == RAW {
        on_thread(workers, t, move || rustmalloc::raw_malloc(size) as usize)
    } else {
        // SAFETY: MEM/OBJ only ever run on this (the fuzzing) thread.
        unsafe { rustmalloc::gil_malloc(domain, size) as usize }
    }
}

fn calloc_on(workers: &[Worker], domain: usize, t: usize, n: usize, size: usize) -> usize {
    if domain == RAW {
        on_thread(workers, t, move || rustmalloc::raw_calloc(n, size) as usize)
    } else {
        // SAFETY: as in `malloc_on`.
        unsafe { rustmalloc::gil_calloc(domain, n, size) as usize }
    }
}

fn run(actions: &[Action]) {
    let mut pool = WORKER_POOL.lock().unwrap_or_else(|e| e.into_inner());
    while pool.len() < WORKERS {
        pool.push(Worker::start());
    }
    // SAFETY: this thread is the only user of the GIL heap.
    unsafe { rustmalloc::check_gil_heap() };
    // SAFETY: as above.
    let base = unsafe { rustmalloc::domain_totals() };
    let mut m = Model::default();

    for &a in actions {
        match a {
            Action::Malloc { domain, size, thread } => {
                let (d, t, size) = (domain_of(domain), thread_of(thread), size.get());
                if m.room_for(size) {
                    let p = malloc_on(&pool, d, t, size);
                    m.add(p, size, d, false, true);
                }
            }
            Action::Calloc { domain, size, n, thread } => {
                let (d, t, size) = (domain_of(domain), thread_of(thread), size.get());
                let n = 1 + n as usize % 16;
                let (elems, elsize) = (n, size / n);
                if m.room_for(size) {
                    let p = calloc_on(&pool, d, t, elems, elsize);
                    m.callocs[d] += 1;
                    m.add(p, elems * elsize, d, true, true);
                }
            }
            Action::CallocOverflow { domain, thread } => {
                let (d, t) = (domain_of(domain), thread_of(thread));
                let p = calloc_on(&pool, d, t, usize::MAX / 2 + 1, 2);
                m.callocs[d] += 1;
                assert_eq!(p, 0, "calloc(usize::MAX / 2 + 1, 2) did not return null");
            }
            Action::Realloc { idx, via, size, thread } => {
                let (d, t, size) = (domain_of(via), thread_of(thread), size.get());
                if !m.room_for(size) {
                    continue;
                }
                let Some((p, b)) = m.take(idx) else { continue };
                let q = if d == RAW {
                    // SAFETY: `p` is live and ours; this thread handed it over.
                    on_thread(&pool, t, move || unsafe { rustmalloc::raw_realloc(p as *mut u8, size) } as usize)
                } else {
                    // SAFETY: as in `malloc_on`, and `p` is live and ours.
                    unsafe { rustmalloc::gil_realloc(d, p as *mut u8, size) as usize }
                };
                m.reallocs[d] += 1;
                assert!(q != 0, "realloc({p:#x}, {size}) returned null");
                check_contents(q, b.size, b.size.min(size), b.seed, "after realloc");
                // The block keeps its domain when resized in place, or (huge to huge) remapped;
                // a moved block was allocated anew in the calling domain.
                let stays = q == p || (b.usable > LARGE_MAX && size > LARGE_MAX);
                let domain = if stays { b.domain } else { d };
                // Re-add it (checks alignment, overlap, usable size), keeping the old prefix
                // check above and writing a new pattern over the whole new size.
                m.add(q, size, domain, false, !stays);
            }
            Action::Free { idx, via, thread } => {
                let (d, t) = (domain_of(via), thread_of(thread));
                let Some((p, _)) = m.take(idx) else { continue };
                if d == RAW {
                    // SAFETY: `p` is live and ours.
                    on_thread(&pool, t, move || unsafe {
                        rustmalloc::raw_free(p as *mut u8);
                        0
                    });
                } else {
                    // SAFETY: as in `malloc_on`, and `p` is live and ours.
                    unsafe { rustmalloc::gil_free(d, p as *mut u8) };
                }
            }
            Action::Exit { thread } => {
                let t = thread_of(thread);
                if t != 0 {
                    pool[t - 1].stop();
                    pool[t - 1] = Worker::start();
                }
            }
            Action::Check { thread } => {
                // SAFETY: this thread is the only user of the GIL heap.
                unsafe { rustmalloc::check_gil_heap() };
                on_thread(&pool, thread_of(thread), check_own_raw_heap);
                for (&p, b) in &m.live {
                    check_contents(p, b.size, b.size, b.seed, "check");
                }
            }
        }
        m.check_totals(&base);
    }

    // Free everything (through its own domain, RAW on the fuzzing thread), then every total
    // must be back where it started and every heap consistent.
    while let Some((p, b)) = m.take(0) {
        if b.domain == RAW {
            // SAFETY: `p` is live and ours.
            unsafe { rustmalloc::raw_free(p as *mut u8) };
        } else {
            // SAFETY: as in `malloc_on`.
            unsafe { rustmalloc::gil_free(b.domain, p as *mut u8) };
        }
    }
    m.check_totals(&base);
    // SAFETY: as above.
    unsafe { rustmalloc::check_gil_heap() };
    check_own_raw_heap();
    for t in 1..=WORKERS {
        on_thread(&pool, t, check_own_raw_heap);
    }
}

fuzz_target!(|actions: Vec<Action>| {
    run(&actions);
});
