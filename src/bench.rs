//! Native benchmark loops (`rustmalloc._rustmalloc._bench`, not public API): they call CPython's
//! public allocator functions (`PyObject_*`, `PyMem_*`, `PyMem_Raw*`), so the same loop measures
//! whichever allocator is installed — pymalloc, libc malloc (or an `LD_PRELOAD`ed one), or
//! rustmalloc. `benches/run.py` drives them; see the README's "Benchmarks" section.
//!
//! One call of `_bench.run(...)` builds its tables (sizes, free orders, churn indices) and its
//! pointer arrays outside the measured region, runs the pattern once unmeasured (pages carved,
//! memory faulted in), then runs it measured and returns `(elapsed_ns, ops, errors)`:
//! - `ops` counts allocator calls (each malloc, realloc and free is one);
//! - `errors` counts blocks whose contents did not survive (every block is tagged in its first
//!   word with the slot it is kept in, checked before it is freed; a realloc'ed list checks its
//!   items) and NULL returns. It must be 0.
//!
//! The measured region is the function `rmbench_measure` (unmangled, never inlined), and the
//! unmeasured warm-up runs the same code through `rmbench_warmup`: `valgrind --tool=callgrind
//! --collect-atstart=no --toggle-collect=rmbench_measure` counts exactly the measured loop, the
//! allocator calls included.
//!
//! Patterns (`pattern`):
//! - `pairs`: malloc, write, check, free — the block is freed at once;
//! - `batch` / `batch_random`: `batch` blocks allocated, then freed in allocation order or in a
//!   random order (the permutation is precomputed), repeated;
//! - `churn`: a live window of `window` blocks; each step frees a random one and allocates a
//!   block of a new size in its place (indices precomputed);
//! - `realloc`: lists grown one item (8 bytes) at a time with `list.append`'s over-allocation
//!   rule, starting from `realloc(NULL, ...)`, to lengths drawn from a small-biased
//!   distribution, then freed.
//!
//! Sizes (`sizes`): `mix` (like CPython's own traffic, see `MIX`), `to2k` (uniform 16..2048),
//! or `fixedN` (always N bytes).
//!
//! RAW runs (`domain="raw"`) release the GIL and run on `threads` new threads (1 included, so
//! every thread count starts alike); `cross=True` makes the batch patterns free, in each round,
//! the batch the next thread in a ring allocated. MEM and OBJ run on the calling thread with the
//! GIL held, as their contract requires.
//!
//! `_bench.measure_call(f)` calls `f()` inside `rmbench_workload`, the measured region of the
//! Python workloads under callgrind (`--toggle-collect=rmbench_workload`).

use core::ffi::c_void;
use std::hint::black_box;
use std::sync::Barrier;
use std::time::Instant;

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;

type Malloc = unsafe extern "C" fn(usize) -> *mut c_void;
type Realloc = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;
type Free = unsafe extern "C" fn(*mut c_void);

/// One domain's public entry points.
#[derive(Clone, Copy)]
struct Api {
    malloc: Malloc,
    realloc: Realloc,
    free: Free,
}

fn api(domain: &str) -> PyResult<(Api, bool)> {
    let (a, raw) = match domain {
        "raw" => (
            Api {
                malloc: ffi::PyMem_RawMalloc,
                realloc: ffi::PyMem_RawRealloc,
                free: ffi::PyMem_RawFree,
            },
            true,
        ),
        "mem" => (
            Api {
                malloc: ffi::PyMem_Malloc,
                realloc: ffi::PyMem_Realloc,
                free: ffi::PyMem_Free,
            },
            false,
        ),
        "obj" => (
            Api {
                malloc: ffi::PyObject_Malloc,
                realloc: ffi::PyObject_Realloc,
                free: ffi::PyObject_Free,
            },
            false,
        ),
        _ => {
            return Err(PyValueError::new_err(format!(
                "unknown domain {domain:?}: raw, mem or obj"
            )))
        }
    };
    Ok((a, raw))
}

/// Tables are this long and read cyclically (index `& TABLE_MASK`).
const TABLE_LEN: usize = 1 << 16;
const TABLE_MASK: usize = TABLE_LEN - 1;
/// Churn index tables are longer, so the sequence of victims does not repeat too soon.
const CHURN_LEN: usize = 1 << 18;
/// The smallest size a table holds (every block holds its tag word).
const MIN_SIZE: usize = 16;
const TAG_KEY: usize = 0x9E37_79B9_7F4A_7C15;
/// The most blocks a batch or a churn window keeps live (their tables index with `u32`).
const MAX_LIVE: usize = 1 << 24;

/// SplitMix64: a small, good, seedable generator for the tables (never used while measuring).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.range(0, i));
        }
    }
}

#[derive(Clone, Copy)]
enum Sizes {
    Mix,
    To2k,
    Fixed(usize),
}

fn parse_sizes(s: &str) -> PyResult<Sizes> {
    match s {
        "mix" => Ok(Sizes::Mix),
        "to2k" => Ok(Sizes::To2k),
        _ => match s
            .strip_prefix("fixed")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) if (MIN_SIZE..=1 << 20).contains(&n) => Ok(Sizes::Fixed(n)),
            _ => Err(PyValueError::new_err(format!(
                "unknown sizes {s:?}: mix, to2k or fixedN with 16 <= N <= 1 MiB"
            ))),
        },
    }
}

/// A distribution in buckets `(percent up to, lo, hi)`: a uniform draw in `lo..=hi` from the
/// first bucket whose cumulative percentage exceeds a uniform draw in `0..100`.
type Buckets = [(usize, usize, usize)];

/// Sizes like CPython's own traffic: 55% 16..64 bytes, 30% 65..128, 10% 129..512, 5% 513..2048.
const MIX: &Buckets = &[
    (55, 16, 64),
    (85, 65, 128),
    (95, 129, 512),
    (100, 513, 2048),
];
/// List lengths for `realloc`: half up to 8 items, most of the rest up to 512.
const LIST_LENGTHS: &Buckets = &[(50, 1, 8), (80, 9, 64), (95, 65, 512), (100, 513, 4096)];

impl Rng {
    fn draw(&mut self, buckets: &Buckets) -> usize {
        let r = self.range(0, 99);
        let &(_, lo, hi) = buckets
            .iter()
            .find(|b| r < b.0)
            .unwrap_or(&buckets[buckets.len() - 1]);
        self.range(lo, hi)
    }
}

fn size_table(sizes: Sizes, rng: &mut Rng) -> Vec<u32> {
    (0..TABLE_LEN)
        .map(|_| match sizes {
            Sizes::Fixed(n) => n,
            Sizes::To2k => rng.range(MIN_SIZE, 2048),
            Sizes::Mix => rng.draw(MIX),
        } as u32)
        .collect()
}

fn list_length_table(rng: &mut Rng) -> Vec<u32> {
    (0..TABLE_LEN)
        .map(|_| rng.draw(LIST_LENGTHS) as u32)
        .collect()
}

/// Tag a block with the slot it is kept in: its first word holds `slot ^ TAG_KEY`. A block
/// handed out twice while live, or a live block the allocator writes its own metadata into,
/// fails the check before its free. (One store and one load: the loop stays light, since its
/// cost is in every figure.)
/// # Safety
/// `p` is a live block of at least 8 bytes that the benchmark owns.
#[inline(always)]
unsafe fn tag(p: *mut u8, slot: usize) {
    (p as *mut usize).write(slot ^ TAG_KEY);
}

/// # Safety
/// As for `tag`.
#[inline(always)]
unsafe fn tag_ok(p: *mut u8, slot: usize) -> bool {
    (p as *mut usize).read() == slot ^ TAG_KEY
}

/// Everything one measured run needs, built before it starts.
struct Job {
    api: Api,
    pattern: Pattern,
    /// Pairs / churn steps, batch rounds, or realloc calls to reach.
    count: usize,
    sizes: Vec<u32>,
    /// Batch free order (identity or a permutation of `0..batch`), churn victim indices, or
    /// list lengths.
    order: Vec<u32>,
    /// Live blocks (batch, churn window).
    slots: Vec<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pattern {
    Pairs,
    Batch,
    BatchRandom,
    Churn,
    Realloc,
}

fn parse_pattern(s: &str) -> PyResult<Pattern> {
    Ok(match s {
        "pairs" => Pattern::Pairs,
        "batch" => Pattern::Batch,
        "batch_random" => Pattern::BatchRandom,
        "churn" => Pattern::Churn,
        "realloc" => Pattern::Realloc,
        _ => {
            return Err(PyValueError::new_err(format!(
                "unknown pattern {s:?}: pairs, batch, batch_random, churn or realloc"
            )))
        }
    })
}

/// What a run did: allocator calls made, and blocks found damaged or NULL returns.
#[derive(Default, Clone, Copy)]
struct Outcome {
    ops: u64,
    errors: u64,
}

impl Job {
    fn new(
        api: Api,
        pattern: Pattern,
        sizes: Sizes,
        ops: usize,
        batch: usize,
        window: usize,
        seed: u64,
    ) -> Job {
        let mut rng = Rng(seed);
        let sizes = size_table(sizes, &mut rng);
        let (count, order, slots) = match pattern {
            Pattern::Pairs => (ops / 2, Vec::new(), Vec::new()),
            Pattern::Batch | Pattern::BatchRandom => {
                let mut order: Vec<u32> = (0..batch as u32).collect();
                if pattern == Pattern::BatchRandom {
                    rng.shuffle(&mut order);
                }
                ((ops / (2 * batch)).max(1), order, vec![0; batch])
            }
            Pattern::Churn => {
                let order = (0..CHURN_LEN)
                    .map(|_| rng.range(0, window - 1) as u32)
                    .collect();
                (ops / 2, order, vec![0; window])
            }
            Pattern::Realloc => (ops, list_length_table(&mut rng), Vec::new()),
        };
        Job {
            api,
            pattern,
            count,
            sizes,
            order,
            slots,
        }
    }

    /// Fill the churn window (unmeasured).
    ///
    /// # Safety
    /// Called with the GIL held for MEM/OBJ jobs (the allocator functions' contract).
    unsafe fn prefill(&mut self, out: &mut Outcome) {
        if self.pattern == Pattern::Churn {
            for i in 0..self.slots.len() {
                self.slots[i] = self.alloc(self.sizes[i & TABLE_MASK] as usize, i, out) as usize;
            }
        }
    }

    /// Free what `prefill` and the churn left live (unmeasured).
    ///
    /// # Safety
    /// As for `prefill`; the live blocks are the ones `prefill` and `run` left.
    unsafe fn drain(&mut self, out: &mut Outcome) {
        if self.pattern == Pattern::Churn {
            for i in 0..self.slots.len() {
                self.release(self.slots[i] as *mut u8, i, out);
            }
        }
    }

    /// Allocate a block for `slot` and tag it.
    ///
    /// # Safety
    /// As for `prefill`.
    #[inline(always)]
    unsafe fn alloc(&self, size: usize, slot: usize, out: &mut Outcome) -> *mut u8 {
        let p = (self.api.malloc)(size) as *mut u8;
        if p.is_null() {
            out.errors += 1;
        } else {
            tag(p, slot);
        }
        p
    }

    /// Check the tag of the block kept in `slot` and free it.
    ///
    /// # Safety
    /// As for `prefill`; `p` is the live block this job keeps in `slot`.
    #[inline(always)]
    unsafe fn release(&self, p: *mut u8, slot: usize, out: &mut Outcome) {
        if !p.is_null() && !tag_ok(p, slot) {
            out.errors += 1;
        }
        (self.api.free)(p as *mut c_void);
    }

    /// The pattern's loop, `count` pairs / rounds / steps / calls; adds the allocator calls it
    /// made to `out.ops`. Inlined into both `rmbench_warmup` and `rmbench_measure`.
    ///
    /// # Safety
    /// As for `prefill`.
    #[inline(always)]
    unsafe fn run(&mut self, count: usize, out: &mut Outcome) {
        match self.pattern {
            Pattern::Pairs => {
                for i in 0..count {
                    let p = self.alloc(self.sizes[i & TABLE_MASK] as usize, i, out);
                    self.release(black_box(p), i, out);
                }
                out.ops += 2 * count as u64;
            }
            Pattern::Batch | Pattern::BatchRandom => {
                let n = self.slots.len();
                let mut k = 0usize;
                for _ in 0..count {
                    for j in 0..n {
                        self.slots[j] =
                            self.alloc(self.sizes[k & TABLE_MASK] as usize, j, out) as usize;
                        k += 1;
                    }
                    for j in 0..n {
                        let slot = self.order[j] as usize;
                        self.release(self.slots[slot] as *mut u8, slot, out);
                    }
                }
                out.ops += (2 * n * count) as u64;
            }
            Pattern::Churn => {
                for i in 0..count {
                    let victim = self.order[i & (CHURN_LEN - 1)] as usize;
                    self.release(self.slots[victim] as *mut u8, victim, out);
                    self.slots[victim] =
                        self.alloc(self.sizes[i & TABLE_MASK] as usize, victim, out) as usize;
                }
                out.ops += 2 * count as u64;
            }
            Pattern::Realloc => {
                let goal = out.ops + count as u64;
                let mut i = 0;
                while out.ops < goal {
                    self.grow_list(self.order[i & TABLE_MASK] as usize, out);
                    i += 1;
                }
            }
        }
    }

    /// Append `len` items to an empty list the way CPython's `list_resize` grows its item array
    /// (`PyMem_Realloc` to `(n + n/8 + 6) & ~3` items, the first from NULL), checking that the
    /// items survive each move; then free it.
    ///
    /// # Safety
    /// As for `prefill`.
    #[inline(always)]
    unsafe fn grow_list(&self, len: usize, out: &mut Outcome) {
        let mut items: *mut usize = core::ptr::null_mut();
        let mut allocated = 0usize;
        for n in 0..len {
            if n == allocated {
                let want = (n + 1 + ((n + 1) >> 3) + 6) & !3;
                let q = (self.api.realloc)(items as *mut c_void, want * 8) as *mut usize;
                out.ops += 1;
                if q.is_null() {
                    out.errors += 1;
                    break;
                }
                if n > 0 && (q.read() != 0 || q.add(n - 1).read() != n - 1) {
                    out.errors += 1;
                }
                items = q;
                allocated = want;
            }
            items.add(n).write(n);
        }
        (self.api.free)(black_box(items) as *mut c_void);
        out.ops += 1;
    }
}

/// The measured region (see the module doc: callgrind toggles collection on this name).
#[no_mangle]
#[inline(never)]
fn rmbench_measure(job: &mut Job, out: &mut Outcome) {
    // SAFETY: the job's API is one domain's public functions, called as their contract says
    // (MEM/OBJ with the GIL held, RAW from any thread); every block freed is one it allocated.
    unsafe { job.run(job.count, out) }
}

/// The unmeasured warm-up: the same loop, shorter.
#[no_mangle]
#[inline(never)]
fn rmbench_warmup(job: &mut Job, out: &mut Outcome) {
    let count = match job.pattern {
        Pattern::Batch | Pattern::BatchRandom => 1,
        Pattern::Churn => job.slots.len(),
        Pattern::Pairs => job.count.min(10_000),
        Pattern::Realloc => job.count.min(10_000),
    };
    // SAFETY: as in `rmbench_measure`.
    unsafe { job.run(count, out) }
}

/// Warm up, measure, drain: `(elapsed_ns, measured outcome, errors of the whole job)`.
fn run_one(job: &mut Job, warmup: bool) -> (u64, Outcome, u64) {
    let mut side = Outcome::default();
    // SAFETY: as in `rmbench_measure`.
    unsafe { job.prefill(&mut side) };
    if warmup {
        rmbench_warmup(job, &mut side);
    }
    let mut out = Outcome::default();
    let t0 = Instant::now();
    rmbench_measure(job, &mut out);
    let ns = t0.elapsed().as_nanos() as u64;
    // SAFETY: as above.
    unsafe { job.drain(&mut side) };
    (ns, out, out.errors + side.errors)
}

/// Slots shared by the threads of a cross-thread run: thread `i` fills `slots[i]` while the
/// others wait at a barrier, then thread `i - 1` frees them.
struct Ring(Vec<core::cell::UnsafeCell<Vec<usize>>>);
// SAFETY: the barriers order every access: a slot vector is written by one thread in one phase
// and read by one other thread in the next.
unsafe impl Sync for Ring {}

/// RAW: `threads` new threads, started together, each running its own job; cross-thread batch
/// frees when `cross`. Returns (wall ns from the first start to the last end, total ops, errors).
fn run_threads(jobs: Vec<Job>, cross: bool, warmup: bool) -> (u64, u64, u64) {
    let threads = jobs.len();
    let start = Barrier::new(threads);
    let phase = Barrier::new(threads);
    let ring = Ring(
        jobs.iter()
            .map(|j| core::cell::UnsafeCell::new(vec![0usize; j.slots.len()]))
            .collect(),
    );
    let results: Vec<(Instant, Instant, u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .enumerate()
            .map(|(i, mut job)| {
                let (start, phase, ring) = (&start, &phase, &ring);
                s.spawn(move || {
                    let mut side = Outcome::default();
                    // SAFETY: RAW functions may be called from any thread without the GIL.
                    unsafe { job.prefill(&mut side) };
                    if warmup {
                        rmbench_warmup(&mut job, &mut side);
                    }
                    let mut out = Outcome::default();
                    start.wait();
                    let t0 = Instant::now();
                    if cross {
                        rmbench_measure_cross(&mut job, i, ring, phase, &mut out);
                    } else {
                        rmbench_measure(&mut job, &mut out);
                    }
                    let t1 = Instant::now();
                    // SAFETY: as above.
                    unsafe { job.drain(&mut side) };
                    (t0, t1, out.ops, out.errors + side.errors)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("benchmark thread panicked"))
            .collect()
    });
    let first = results
        .iter()
        .map(|r| r.0)
        .min()
        .expect("at least one thread");
    let last = results
        .iter()
        .map(|r| r.1)
        .max()
        .expect("at least one thread");
    let ops = results.iter().map(|r| r.2).sum();
    let errors = results.iter().map(|r| r.3).sum();
    ((last - first).as_nanos() as u64, ops, errors)
}

/// The measured loop of a cross-thread batch run: each round, thread `me` allocates a batch into
/// its ring slot, then frees the batch of the next thread (in `job.order`'s order).
#[no_mangle]
#[inline(never)]
fn rmbench_measure_cross(
    job: &mut Job,
    me: usize,
    ring: &Ring,
    phase: &Barrier,
    out: &mut Outcome,
) {
    let threads = ring.0.len();
    let n = job.slots.len();
    let mut k = 0usize;
    for _ in 0..job.count {
        // SAFETY: between barriers only this thread touches its own slot vector, then only the
        // previous thread in the ring reads it; RAW calls need no GIL.
        unsafe {
            let mine = &mut *ring.0[me].get();
            for (j, slot) in mine.iter_mut().enumerate() {
                *slot = job.alloc(job.sizes[k & TABLE_MASK] as usize, j, out) as usize;
                k += 1;
            }
            phase.wait();
            let theirs = &*ring.0[(me + 1) % threads].get();
            for j in 0..n {
                let slot = job.order[j] as usize;
                job.release(theirs[slot] as *mut u8, slot, out);
            }
            phase.wait();
        }
    }
    out.ops += (2 * n * job.count) as u64;
}

/// Run one benchmark; returns `(elapsed_ns, ops, errors)`. See the module doc.
#[pyfunction]
#[pyo3(signature = (pattern, domain, sizes, ops, *, batch = 100_000, window = 200_000, threads = 1,
                    cross = false, seed = 0x5EED, warmup = true))]
#[allow(clippy::too_many_arguments)]
fn run(
    py: Python<'_>,
    pattern: &str,
    domain: &str,
    sizes: &str,
    ops: usize,
    batch: usize,
    window: usize,
    threads: usize,
    cross: bool,
    seed: u64,
    warmup: bool,
) -> PyResult<(u64, u64, u64)> {
    let pattern = parse_pattern(pattern)?;
    let (api, raw) = api(domain)?;
    let sizes = parse_sizes(sizes)?;
    if !(1..=MAX_LIVE).contains(&batch) || !(1..=MAX_LIVE).contains(&window) {
        return Err(PyValueError::new_err(format!(
            "batch and window must be in 1..={MAX_LIVE} (the blocks a run keeps live)"
        )));
    }
    if ops == 0 || !(1..=64).contains(&threads) {
        return Err(PyValueError::new_err(
            "ops must be positive and threads in 1..=64",
        ));
    }
    if !raw && threads != 1 {
        return Err(PyValueError::new_err(
            "MEM and OBJ need the GIL: only RAW runs on several threads",
        ));
    }
    if cross && !matches!(pattern, Pattern::Batch | Pattern::BatchRandom) {
        return Err(PyValueError::new_err(
            "cross-thread frees apply to the batch patterns only",
        ));
    }
    let job = |i: usize| {
        Job::new(
            api,
            pattern,
            sizes,
            ops,
            batch,
            window,
            seed.wrapping_add(i as u64),
        )
    };
    if raw {
        let jobs: Vec<Job> = (0..threads).map(job).collect();
        Ok(py.detach(move || run_threads(jobs, cross, warmup)))
    } else {
        let (ns, out, errors) = run_one(&mut job(0), warmup);
        Ok((ns, out.ops, errors))
    }
}

/// Call `f()` inside `rmbench_workload`, the measured region of the Python workloads under
/// callgrind (`--toggle-collect=rmbench_workload`): everything the interpreter does for `f`,
/// its allocator calls included, is counted, and nothing before or after. Returns `f()`.
#[pyfunction]
fn measure_call(f: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    rmbench_workload(f)
}

#[no_mangle]
#[inline(never)]
fn rmbench_workload(f: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    f.call0().map(Bound::unbind)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let bench = PyModule::new(m.py(), "_bench")?;
    bench.add_function(wrap_pyfunction!(run, &bench)?)?;
    bench.add_function(wrap_pyfunction!(measure_call, &bench)?)?;
    // Lets the suite refuse to measure a debug build by accident.
    bench.add("DEBUG_BUILD", cfg!(debug_assertions))?;
    m.add_submodule(&bench)?;
    Ok(())
}
