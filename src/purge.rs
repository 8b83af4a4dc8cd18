//! Giving memory back to the OS: the policy and its knobs.
//!
//! Free memory is returned with `madvise(MADV_DONTNEED)` (it then reads as zeros and leaves the
//! process's RSS at once; `MADV_FREE` pages would stay in RSS until the kernel is short of
//! memory). Segments are mapped `MADV_NOHUGEPAGE`, so transparent huge pages never refill a
//! purged range behind our back (the price: no THP for our pages).
//!
//! What is returned, by a *purge pass* over one heap (`heap::purge`):
//! - free OS pages inside partly used pages: a page's free list is walked, the OS pages whose
//!   blocks are all free are cut out of it and decommitted (see `segment::purge_page`);
//! - empty pages and the pages of empty segments, beyond `retain_bytes` kept for reuse; empty
//!   segments beyond a few are unmapped.
//!
//! When: a pass runs on a heap's slow path (never on the free fast path) at most once every
//! `purge_delay_ms`, and decommits free pages (and unmaps empty segments) only once they have
//! been free for `purge_delay_ms` (`segment::TouchTimes`). So a program
//! that frees and reallocates in quick rounds keeps its pages whenever a pass falls (mimalloc's
//! purge delay works the same way, jemalloc's decay similarly); a program that goes on
//! allocating after dropping a large structure gets its memory back within one to two delays. A
//! page is only rescanned once enough new blocks were freed in it. `trim()` runs passes now, retaining
//! nothing, on the GIL heap and on abandoned RAW heaps, and asks every live RAW heap to run one
//! on its next slow path.
//!
//! When idle: a program that drops a large structure and then waits (a service between
//! requests, a pipeline between batches) takes no slow path, so no pass would run and its free
//! memory would stay resident until its next allocation burst. So while `IDLE_PURGE` is on, the
//! Python layer runs an *idle purger*: a thread (started by `install()`, and again in the child
//! of a fork) that takes the GIL now and then for a tick (`crate::idle_tick`). A tick looks at the
//! MEM/OBJ heap and at the abandoned RAW heaps of exited threads (`heap::idle_look`) and runs the
//! pass a slow path would run if one came: only when one is due by the heap's own delay, and only
//! while the heap freed something whose memory its last pass could not yet give back. A heap with
//! nothing more to give back costs a look of a few hundred loads about once a second; live RAW
//! heaps of other threads are theirs alone and purge on their own slow paths.
//!
//! The delay adapts, per heap (`adapt_delay`): `purge_delay_ms` is the shortest. Memory given
//! back and then taken into use again soon after (a *refault*: a purged page or OS page reused)
//! cost an `madvise` call and a page fault per OS page for nothing; a program that does that
//! works in rounds longer than the delay (a batch job's iterations, a server's bursts). When at
//! least half of what a heap's recent passes gave back was refaulted, its delay doubles, up to
//! `MAX_DELAY_FACTOR` times `purge_delay_ms`; when almost none of it was, the delay halves, back
//! to `purge_delay_ms`. A program that drops a large structure once and does not come back for
//! the memory keeps the short delay.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Minimum time between automatic purge passes of a heap, in milliseconds.
pub static PURGE_DELAY_MS: AtomicU64 = AtomicU64::new(250);
/// Free memory (empty pages) a heap keeps committed for reuse after an automatic pass.
pub static RETAIN_BYTES: AtomicU64 = AtomicU64::new(4 << 20);
/// Automatic purging on or off (`trim()` works either way).
pub static ENABLED: AtomicBool = AtomicBool::new(true);
/// The idle purger on or off (see the module doc; `configure(idle_purge=...)`).
pub static IDLE_PURGE: AtomicBool = AtomicBool::new(true);
/// Bumped by `trim()`, and by an allocation the OS refused: a heap that sees a new value purges
/// on its next slow path.
pub static TRIM_EPOCH: AtomicU64 = AtomicU64::new(0);
/// The last `TRIM_EPOCH` a `trim()` of the program's set (the others are a refused allocation's
/// `Mode::Release`): a heap that has not seen it makes a `Mode::Trim` pass, else `Mode::Release`.
pub static USER_TRIM_EPOCH: AtomicU64 = AtomicU64::new(0);
/// Bytes given back by purge passes (decommitted or unmapped), for the statistics.
pub static PURGED_BYTES: AtomicU64 = AtomicU64::new(0);
/// Bytes of purged memory taken into use again (see `adapt_delay`), for the statistics.
pub static REFAULTED_BYTES: AtomicU64 = AtomicU64::new(0);

/// A heap's purge delay grows up to this many times `PURGE_DELAY_MS` (see `adapt_delay`).
pub const MAX_DELAY_FACTOR: u64 = 16;
/// Less than this refaulted is too little to lengthen the delay for.
pub const REFAULT_MIN_BYTES: u64 = 1 << 20;

/// A heap's next purge delay, judged at an automatic pass from the delay in force (`current`),
/// the configured shortest one (`base`), the bytes the heap's passes gave back (`purged`) and
/// the bytes of purged memory it has taken into use again (`refaulted`), both since the last
/// judgement. Returns the delay, and whether the sums decided it: the caller then starts them
/// afresh (each refault counts in one judgement), else halves them, so a refault that comes a
/// pass after its purge still counts against it. Refaults count only within
/// `MAX_DELAY_FACTOR * base` of their purge (see `heap::count_refault`): later ones no delay
/// would have saved.
///
/// Doubles (up to `MAX_DELAY_FACTOR * base`) when at least half of what was given back came
/// back; halves (down to `base`) when less than an eighth did. A program that works in rounds
/// then settles at a delay that outlasts its gaps, where its passes find nothing to give back
/// and the delay stays.
pub fn adapt_delay(current: u64, base: u64, purged: u64, refaulted: u64) -> (u64, bool) {
    let max = base.saturating_mul(MAX_DELAY_FACTOR);
    let (next, decided) = if refaulted >= REFAULT_MIN_BYTES && refaulted.saturating_mul(2) >= purged
    {
        (current.saturating_mul(2), true)
    } else if purged >= REFAULT_MIN_BYTES && refaulted.saturating_mul(8) < purged {
        (current / 2, true)
    } else {
        (current, false)
    };
    (next.clamp(base, max), decided)
}

/// The longest purge delay a heap can reach now: `MAX_DELAY_FACTOR * PURGE_DELAY_MS`.
pub fn longest_delay() -> u64 {
    PURGE_DELAY_MS
        .load(Relaxed)
        .saturating_mul(MAX_DELAY_FACTOR)
}

/// The delay a heap whose adapted delay is `current` works with now: within the configured
/// delay and `longest_delay()` (0, before a heap's first pass, reads as the configured delay).
pub fn delay_in_force(current: u64) -> u64 {
    // The setting read once: `configure` may change it at any moment (RAW heaps purge without
    // the GIL), and with two reads the bounds could cross, which `clamp` panics on.
    let base = PURGE_DELAY_MS.load(Relaxed);
    current.clamp(base, base.saturating_mul(MAX_DELAY_FACTOR))
}

/// The sooner of two "look again in so many ms" answers (`None`: no need to look again).
pub fn sooner(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Milliseconds on a coarse monotonic clock (a vDSO read, no system call).
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// How a pass treats what it finds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Keep `RETAIN_BYTES` of empty pages and a few empty segments.
    Auto,
    /// Return everything that can be returned now (`trim()`).
    Trim,
    /// `Trim`, but each queue keeps its empty page (the one allocation goes on from): the pass
    /// an allocation the OS refused makes before it tries once more, and asks every heap for.
    /// Giving those pages back there let the failing request take their room, and the program
    /// could then not allocate even a small object of its other classes (to handle the
    /// MemoryError).
    Release,
}

/// The policy's settings: (automatic purging on, delay in ms, bytes retained per heap).
pub fn settings() -> (bool, u64, u64) {
    (
        ENABLED.load(Relaxed),
        PURGE_DELAY_MS.load(Relaxed),
        RETAIN_BYTES.load(Relaxed),
    )
}

/// Change the policy's settings (validated by the caller).
pub fn configure(enabled: bool, delay_ms: u64, retain_bytes: u64) {
    ENABLED.store(enabled, Relaxed);
    PURGE_DELAY_MS.store(delay_ms, Relaxed);
    RETAIN_BYTES.store(retain_bytes, Relaxed);
}
