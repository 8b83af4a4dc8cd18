//! Native stress of the RAW domain through CPython's public API (`rustmalloc._rustmalloc`,
//! `_stress_*`; not public API, used by the tests and `scripts/stress.py`).
//!
//! `PyMem_RawMalloc` and friends may be called from any thread without the GIL, including
//! threads that have no Python thread state at all. These functions release the GIL and hammer
//! them from plain native threads in tight loops (far more contention than ctypes calls from
//! Python threads allow), with blocks handed between threads through mailboxes (so frees and
//! reallocs are cross-thread), worker threads that exit and are replaced while their blocks live
//! on elsewhere (heap abandonment and adoption), and short-lived threads whose pthread TLS
//! destructors allocate and free before and after the allocator's own thread-exit handling.
//! Every block carries a pattern derived from a unique id, verified before every free and
//! realloc, after every realloc (the kept prefix) and when it changes hands; calloc blocks are
//! checked for zeros.
//!
//! They call whatever allocator is installed (so they also run against pymalloc/libc), and
//! return `(operations, errors, first error message or None)`. The harness's own memory
//! (mailboxes, messages) comes from Rust's global allocator (libc), never from the domain under
//! test.

use core::ffi::c_void;
use pyo3::ffi;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_stress_raw, m)?)?;
    m.add_function(wrap_pyfunction!(_stress_thread_churn, m)?)?;
    m.add_function(wrap_pyfunction!(_stress_make_tls_key, m)?)?;
    Ok(())
}

// ---- blocks and their patterns ------------------------------------------------------------

/// A block under test: address, size, and the id its pattern derives from.
#[derive(Clone, Copy)]
struct Blk {
    p: usize,
    n: usize,
    id: u64,
}

fn pat(id: u64, i: usize) -> u8 {
    let (id32, i32) = (id as u32, i as u32);
    (id32.wrapping_mul(0x9E37_79B1) ^ i32.wrapping_mul(31) ^ (i32 >> 8) ^ (id >> 3) as u32) as u8
}

/// Visit the offsets below `upto` that carry the pattern of a block of `n` bytes: all of a block
/// up to 4 KiB; else the first and last 256 bytes and the first 8 of every 4 KiB.
fn for_marked(n: usize, upto: usize, mut f: impl FnMut(usize) -> bool) -> bool {
    let mut ok = true;
    let mut visit = |i: usize| {
        if i < upto && !f(i) {
            ok = false;
        }
    };
    if n <= 4096 {
        (0..n).for_each(&mut visit);
    } else {
        (0..256).for_each(&mut visit);
        let mut pg = 4096;
        while pg + 256 < n {
            (pg..pg + 8).for_each(&mut visit);
            pg += 4096;
        }
        (n - 256..n).for_each(&mut visit);
    }
    ok
}

fn fill(b: Blk) {
    let p = b.p as *mut u8;
    // SAFETY: `b` is a live block of at least `b.n` bytes that this thread holds.
    for_marked(b.n, b.n, |i| unsafe {
        *p.add(i) = pat(b.id, i);
        true
    });
    if b.n >= 8 {
        // SAFETY: as above; 8 bytes fit.
        unsafe { (p as *mut [u8; 8]).write_unaligned(b.id.to_le_bytes()) };
    }
}

/// Check the first `upto` bytes of a block `fill` wrote; the first bad offset on failure.
fn check(b: Blk, upto: usize) -> Result<(), usize> {
    let p = b.p as *const u8;
    if b.n >= 8 && upto >= 8 {
        // SAFETY: `b` is live, at least 8 bytes, held by this thread.
        let id = u64::from_le_bytes(unsafe { (p as *const [u8; 8]).read_unaligned() });
        if id != b.id {
            return Err(0);
        }
    }
    let mut bad = None;
    for_marked(b.n, upto, |i| {
        // SAFETY: as above; `i < b.n`.
        let ok = (b.n >= 8 && i < 8) || unsafe { *p.add(i) } == pat(b.id, i);
        if !ok && bad.is_none() {
            bad = Some(i);
        }
        ok
    });
    bad.map_or(Ok(()), Err)
}

fn check_zero(p: usize, n: usize) -> Result<(), usize> {
    let mut bad = None;
    for_marked(n, n, |i| {
        // SAFETY: a live block of `n` bytes held by this thread.
        let ok = unsafe { *(p as *const u8).add(i) } == 0;
        if !ok && bad.is_none() {
            bad = Some(i);
        }
        ok
    });
    bad.map_or(Ok(()), Err)
}

/// xorshift64: seeded, so a run's sequence of requests is reproducible per thread.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Mostly small, a quarter medium, a few large spans, rarely huge mappings.
    fn size(&mut self) -> usize {
        (match self.below(1000) {
            0..=699 => self.below(513),
            700..=949 => 513 + self.below(16_000),
            950..=995 => 16_513 + self.below(250_000),
            _ => 300_000 + self.below(2 << 20),
        }) as usize
    }
}

// ---- errors --------------------------------------------------------------------------------

struct Errors {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Errors {
    fn new() -> Errors {
        Errors {
            count: AtomicU64::new(0),
            first: Mutex::new(None),
        }
    }
    fn report(&self, msg: impl FnOnce() -> String) {
        if self.count.fetch_add(1, Relaxed) == 0 {
            *self.first.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg());
        }
    }
    fn result(&self) -> (u64, Option<String>) {
        (
            self.count.load(Relaxed),
            self.first.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        )
    }
}

// ---- the RAW calls, checked ------------------------------------------------------------------

fn raw_malloc(n: usize) -> usize {
    // SAFETY: PyMem_RawMalloc may be called from any thread without the GIL.
    unsafe { ffi::PyMem_RawMalloc(n) as usize }
}

fn raw_calloc(n: usize) -> usize {
    // SAFETY: as for PyMem_RawMalloc.
    unsafe { ffi::PyMem_RawCalloc(1, n) as usize }
}

fn raw_free(p: usize) {
    // SAFETY: `p` is a live RAW block this thread holds (or null).
    unsafe { ffi::PyMem_RawFree(p as *mut c_void) }
}

/// Verify and free a block.
fn release(e: &Errors, b: Blk, what: &str) {
    if let Err(at) = check(b, b.n) {
        e.report(|| {
            format!(
                "{what}: block {:#x} id {} size {} corrupted at offset {at}",
                b.p, b.id, b.n
            )
        });
    }
    raw_free(b.p);
}

/// A new block of `n` bytes (malloc or calloc), checked and filled.
fn alloc(e: &Errors, n: usize, zeroed: bool, id: u64) -> Option<Blk> {
    let p = if zeroed { raw_calloc(n) } else { raw_malloc(n) };
    if p == 0 {
        e.report(|| {
            format!(
                "{} returned NULL (size {n})",
                if zeroed { "calloc" } else { "malloc" }
            )
        });
        return None;
    }
    if p % 16 != 0 {
        e.report(|| format!("block {p:#x} (size {n}) not 16-byte aligned"));
    }
    if zeroed {
        if let Err(at) = check_zero(p, n) {
            e.report(|| format!("calloc block {p:#x} (size {n}) not zeroed at offset {at}"));
        }
    }
    let b = Blk { p, n, id };
    fill(b);
    Some(b)
}

/// Realloc a block to `m` bytes: verify it, realloc, verify the kept prefix, refill. On NULL the
/// block stays as it was.
fn resize(e: &Errors, b: &mut Blk, m: usize) -> bool {
    if let Err(at) = check(*b, b.n) {
        e.report(|| {
            format!(
                "before realloc: block {:#x} id {} size {} corrupted at offset {at}",
                b.p, b.id, b.n
            )
        });
    }
    // SAFETY: `b.p` is a live RAW block this thread holds.
    let q = unsafe { ffi::PyMem_RawRealloc(b.p as *mut c_void, m) } as usize;
    if q == 0 {
        e.report(|| format!("realloc returned NULL (size {} -> {m})", b.n));
        return false;
    }
    if q % 16 != 0 {
        e.report(|| format!("realloc result {q:#x} (size {m}) not 16-byte aligned"));
    }
    let moved = Blk {
        p: q,
        n: b.n,
        id: b.id,
    };
    if let Err(at) = check(moved, b.n.min(m)) {
        e.report(|| {
            format!(
                "realloc {:#x} -> {q:#x} (size {} -> {m}) lost contents at offset {at}",
                b.p, b.n
            )
        });
    }
    *b = Blk {
        p: q,
        n: m,
        id: b.id,
    };
    fill(*b);
    true
}

// ---- many threads, cross-thread frees and reallocs, threads replaced --------------------------

const LIVE: usize = 256;
const MAILBOX: usize = 512;

struct Stress {
    errors: Errors,
    boxes: Vec<Mutex<Vec<Blk>>>,
    ops: AtomicU64,
    /// Work left, in iterations (shared by all slots), when running by count.
    left: AtomicU64,
    deadline: Option<Instant>,
}

impl Stress {
    fn more(&self) -> bool {
        match self.deadline {
            Some(d) => Instant::now() < d,
            None => self
                .left
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }

    fn send(&self, to: usize, b: Blk) -> Result<(), Blk> {
        let mut mb = self.boxes[to].lock().unwrap_or_else(|e| e.into_inner());
        if mb.len() < MAILBOX {
            mb.push(b);
            Ok(())
        } else {
            Err(b)
        }
    }

    fn take_mail(&self, t: usize) -> Vec<Blk> {
        std::mem::take(&mut *self.boxes[t].lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// One worker thread of slot `t`: `lifetime` iterations (0: until the work is done), then it
/// hands its live blocks to other slots and exits.
fn worker(s: &Stress, t: usize, nslots: usize, lifetime: u64, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut live: Vec<Blk> = Vec::with_capacity(LIVE);
    let mut next_id = seed << 20;
    let mut id = || {
        next_id += 1;
        next_id
    };
    let other = |rng: &mut Rng| {
        if nslots == 1 {
            t
        } else {
            (t + 1 + rng.below(nslots as u64 - 1) as usize) % nslots
        }
    };
    let e = &s.errors;
    let mut done = 0u64;
    while (lifetime == 0 || done < lifetime) && s.more() {
        done += 1;
        let r = rng.below(100);
        if r < 45 || live.is_empty() {
            if live.len() == LIVE {
                release(e, live.pop().unwrap(), "before free");
            }
            let n = rng.size();
            if let Some(b) = alloc(e, n, rng.below(5) == 0, id()) {
                live.push(b);
            }
        } else if r < 65 {
            let b = live.swap_remove(rng.below(live.len() as u64) as usize);
            release(e, b, "before free");
        } else if r < 82 {
            let i = rng.below(live.len() as u64) as usize;
            let m = rng.size();
            if !resize(e, &mut live[i], m) {
                let b = live.swap_remove(i);
                release(e, b, "before free");
            }
        } else {
            let b = live.swap_remove(rng.below(live.len() as u64) as usize);
            if let Err(b) = s.send(other(&mut rng), b) {
                release(e, b, "before free");
            }
        }
        for b in s.take_mail(t) {
            match rng.below(3) {
                0 => release(e, b, "received block"),
                _ if live.len() == LIVE => release(e, b, "received block"),
                1 => {
                    let mut b = b;
                    if resize(e, &mut b, rng.size()) {
                        live.push(b);
                    } else {
                        release(e, b, "received block");
                    }
                }
                _ => {
                    if let Err(at) = check(b, b.n) {
                        e.report(|| {
                            format!(
                                "received block {:#x} id {} size {} corrupted at offset {at}",
                                b.p, b.id, b.n
                            )
                        });
                    }
                    live.push(b);
                }
            }
        }
    }
    s.ops.fetch_add(done, Relaxed);
    // Exit: most blocks outlive this thread in other slots (freed there, or at the end).
    for b in live {
        if rng.below(4) == 0 {
            release(e, b, "at thread exit");
        } else if let Err(b) = s.send(other(&mut rng), b) {
            release(e, b, "at thread exit");
        }
    }
}

fn run_stress(
    threads: usize,
    iters: u64,
    lifetime: u64,
    seed: u64,
    seconds: f64,
) -> (u64, u64, Option<String>) {
    let s = Arc::new(Stress {
        errors: Errors::new(),
        boxes: (0..threads).map(|_| Mutex::new(Vec::new())).collect(),
        ops: AtomicU64::new(0),
        left: AtomicU64::new(iters.saturating_mul(threads as u64)),
        deadline: (seconds > 0.0).then(|| Instant::now() + Duration::from_secs_f64(seconds)),
    });
    let spawn = |t: usize, generation: u64| {
        let s = s.clone();
        let seed = seed.wrapping_mul(1_000_003) ^ ((t as u64) << 32) ^ generation;
        thread::Builder::new()
            .name(format!("rm-stress-{t}"))
            .spawn(move || worker(&s, t, threads, lifetime, seed))
    };
    let mut slots: Vec<Option<thread::JoinHandle<()>>> = Vec::with_capacity(threads);
    for t in 0..threads {
        match spawn(t, 0) {
            Ok(h) => slots.push(Some(h)),
            Err(err) => {
                s.errors
                    .report(|| format!("could not start a thread: {err}"));
                slots.push(None);
            }
        }
    }
    // Replace every thread that exits while there is work left; its blocks live on.
    let mut generation = 1u64;
    loop {
        let mut running = 0;
        for t in 0..threads {
            let Some(h) = &slots[t] else { continue };
            if !h.is_finished() {
                running += 1;
                continue;
            }
            if slots[t].take().unwrap().join().is_err() {
                s.errors.report(|| "a stress thread panicked".to_string());
            }
            if lifetime != 0 && s.more_peek() {
                generation += 1;
                if let Ok(h) = spawn(t, generation) {
                    slots[t] = Some(h);
                    running += 1;
                }
            }
        }
        if running == 0 {
            break;
        }
        thread::sleep(Duration::from_micros(500));
    }
    // Whatever is still in a mailbox is freed here, by yet another thread.
    for t in 0..threads {
        for b in s.take_mail(t) {
            release(&s.errors, b, "left in a mailbox");
        }
    }
    let (n, first) = s.errors.result();
    (s.ops.load(Relaxed), n, first)
}

impl Stress {
    /// Whether work is left, without taking any.
    fn more_peek(&self) -> bool {
        match self.deadline {
            Some(d) => Instant::now() < d,
            None => self.left.load(Relaxed) > 0,
        }
    }
}

/// Hammer RAW from `threads` native threads, without the GIL, for `iters` iterations per thread
/// (or for `seconds`, when given). With `lifetime > 0`, each thread exits after that many
/// iterations and a new one takes its slot (its blocks live on in other threads' hands).
/// Returns (iterations done, errors, first error).
#[pyfunction]
#[pyo3(signature = (threads=8, iters=30_000, lifetime=0, seed=1, seconds=0.0))]
fn _stress_raw(
    py: Python<'_>,
    threads: usize,
    iters: u64,
    lifetime: u64,
    seed: u64,
    seconds: f64,
) -> PyResult<(u64, u64, Option<String>)> {
    if threads == 0 || threads > 256 {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "threads must be in 1..=256",
        ));
    }
    Ok(py.detach(move || run_stress(threads, iters, lifetime, seed, seconds)))
}

// ---- short-lived threads with allocating TLS destructors -------------------------------------

/// pthread keys whose destructor frees and allocates RAW blocks (`_stress_make_tls_key`), each
/// stored + 1 (0: none).
static KEYS: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
/// The churn run's errors, for the destructors (which get only their value). One run at a time
/// (`CHURN_RUNNING`): a second, concurrent run would replace the first's sink.
static TLS_ERRORS: Mutex<Option<Arc<Errors>>> = Mutex::new(None);
static CHURN_RUNNING: AtomicBool = AtomicBool::new(false);

fn tls_report(msg: impl FnOnce() -> String) {
    if let Some(e) = TLS_ERRORS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        e.report(msg);
    }
}

/// A TLS destructor: the value is a RAW block holding a `Blk`; verify and free that block and the
/// holder, then allocate, realloc and free once more.
extern "C" fn tls_destructor(value: *mut c_void) {
    // SAFETY: the value was set by `short_worker` to a live RAW block holding a `Blk`.
    let b = unsafe { (value as *const Blk).read() };
    if let Err(at) = check(b, b.n) {
        tls_report(|| {
            format!(
                "block {:#x} (size {}) corrupted at offset {at} at thread exit",
                b.p, b.n
            )
        });
    }
    raw_free(b.p);
    let p = raw_malloc(200);
    if p == 0 {
        tls_report(|| "malloc in a TLS destructor returned NULL".to_string());
    } else {
        // SAFETY: a fresh 200-byte block.
        unsafe { core::ptr::write_bytes(p as *mut u8, 0x5A, 200) };
        // SAFETY: `p` is live.
        let q = unsafe { ffi::PyMem_RawRealloc(p as *mut c_void, 5000) } as usize;
        if q == 0 {
            tls_report(|| "realloc in a TLS destructor returned NULL".to_string());
            raw_free(p);
        } else {
            // SAFETY: 5000 bytes, the first 200 kept.
            if unsafe { core::slice::from_raw_parts(q as *const u8, 200) }
                .iter()
                .any(|&x| x != 0x5A)
            {
                tls_report(|| "realloc in a TLS destructor lost contents".to_string());
            }
            raw_free(q);
        }
    }
    raw_free(value as usize);
}

/// Create a pthread key whose destructor frees and allocates RAW blocks in every thread
/// `_stress_thread_churn` starts. Created before `install()`, its destructor runs before
/// rustmalloc's thread-exit handling; after, it runs after it (keys' destructors run in creation
/// order). Returns False if no key could be made.
#[pyfunction]
fn _stress_make_tls_key() -> bool {
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: a plain libc call; the destructor is an `extern "C"` fn valid for the process.
    if unsafe { libc::pthread_key_create(&mut key, Some(tls_destructor)) } != 0 {
        return false;
    }
    KEYS.iter().any(|k| {
        k.compare_exchange(0, key as usize + 1, AcqRel, Relaxed)
            .is_ok()
    })
}

fn short_worker(e: &Errors, i: u64, handed: &Mutex<Vec<Option<Blk>>>) {
    let mut rng = Rng::new(0xD1B5_4A32 ^ i);
    let mut live = Vec::with_capacity(32);
    for k in 0..32 {
        let n = rng.size() % 20_000;
        match alloc(e, n, k % 7 == 0, (i << 20) | k) {
            Some(b) => live.push(b),
            None => return,
        }
    }
    for b in live {
        release(e, b, "before free");
    }
    // One block for the calling thread to free after this thread is gone.
    let b = alloc(e, 64 + (i % 1000) as usize, false, (i << 20) | 999);
    handed.lock().unwrap_or_else(|e| e.into_inner())[(i % 4096) as usize] = b;
    // Blocks for the TLS destructors to free at thread exit.
    for k in &KEYS {
        let key = k.load(Acquire);
        if key == 0 {
            continue;
        }
        let holder = raw_malloc(core::mem::size_of::<Blk>());
        if holder == 0 {
            e.report(|| "malloc returned NULL (TLS holder)".to_string());
            continue;
        }
        let Some(b) = alloc(e, 100 + (i % 3000) as usize, false, (i << 20) | 1000) else {
            raw_free(holder); // the failure is reported; the holder goes back
            continue;
        };
        // SAFETY: `holder` is a fresh block large enough for a `Blk`; RAW blocks are 16-aligned.
        unsafe {
            (holder as *mut Blk).write(b);
            libc::pthread_setspecific((key - 1) as libc::pthread_key_t, holder as *const c_void);
        }
    }
}

/// Start `total` short-lived native threads, `batch` at a time: each allocates, frees, leaves a
/// block for the caller to free once it has exited, and leaves blocks for the TLS destructors
/// (`_stress_make_tls_key`). Returns (threads run, errors, first error).
#[pyfunction]
#[pyo3(signature = (total=1500, batch=32, seed=1))]
fn _stress_thread_churn(
    py: Python<'_>,
    total: u64,
    batch: usize,
    seed: u64,
) -> PyResult<(u64, u64, Option<String>)> {
    if batch == 0 || batch > 4096 {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "batch must be in 1..=4096",
        ));
    }
    if CHURN_RUNNING.swap(true, AcqRel) {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(
            "_stress_thread_churn is already running on another thread; run one at a time",
        ));
    }
    Ok(py.detach(move || {
        let e = Arc::new(Errors::new());
        *TLS_ERRORS.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
        let handed = Arc::new(Mutex::new(vec![None; 4096]));
        let mut start = 0u64;
        while start < total {
            let n = (total - start).min(batch as u64);
            let hs: Vec<_> = (start..start + n)
                .map(|i| {
                    let (e, handed) = (e.clone(), handed.clone());
                    let i = i ^ (seed << 40);
                    thread::Builder::new().spawn(move || short_worker(&e, i, &handed))
                })
                .collect();
            for h in hs {
                match h {
                    Ok(h) => {
                        if h.join().is_err() {
                            e.report(|| "a short-lived thread panicked".to_string());
                        }
                    }
                    Err(err) => e.report(|| format!("could not start a thread: {err}")),
                }
            }
            // pthread_join returns after the threads' TLS destructors ran.
            for slot in handed.lock().unwrap_or_else(|e| e.into_inner()).iter_mut() {
                if let Some(b) = slot.take() {
                    release(&e, b, "handed block");
                }
            }
            start += n;
        }
        *TLS_ERRORS.lock().unwrap_or_else(|e| e.into_inner()) = None;
        CHURN_RUNNING.store(false, Release);
        let (n, first) = e.result();
        (total, n, first)
    }))
}
