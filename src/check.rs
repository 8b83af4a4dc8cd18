//! The checking mode: catch C-extension memory bugs in a running process.
//!
//! CPython's debug hooks need a header before every block, so they cannot be added to a live
//! heap; this mode needs none. It is chosen at the first install and then wraps every call:
//!
//! ```text
//!  block (a class 16 bytes larger than asked)
//!  +---------------------------+-----------------------+----------------+
//!  | user bytes (n)            | canary 0xCC ...       | n (8 bytes)    |
//!  +---------------------------+-----------------------+----------------+
//! ```
//! - fresh blocks are filled with `FRESH` (0xCB; calloc gives zeros), so reads of uninitialised
//!   memory show; freed blocks with `FREED` (0xDF), and the size slot gets `FREED_MARK`;
//! - free or realloc: a `FREED_MARK` in the size slot is a double free; a size that does not fit
//!   the block means its end was overwritten; a changed canary byte is a write past the end;
//! - freed blocks wait in a quarantine (FIFO, bounded in blocks and bytes) before they are really
//!   freed; a byte that is no longer `FREED` when a block leaves it is a write after free.
//!
//! A finding is reported as one line on stderr starting `rustmalloc:` that names the bug, the
//! address, the size class and the domain; then the process aborts (as glibc does on a double
//! free) unless the mode is "warn". Reporting allocates nothing. Blocks larger than
//! `QUARANTINE_MAX_BLOCK` are checked but not quarantined. Purging never touches quarantined
//! blocks (they are on no free list), so it cannot erase what the checks rely on.
//!
//! Under valgrind memcheck (the `valgrind` feature) a checked block is a memcheck block of the
//! `n` bytes asked for: the heap's record of the padded block is cut down on allocation, the
//! canary and size slot are unaddressable except while the checks read or write them, and a
//! block in the quarantine is freed as far as memcheck knows (so it reports a use after free at
//! once). Before a block really goes back to the heap it is registered again (empty), since the
//! heap's free ends that record.

use crate::usable_size;
use crate::valgrind as vg;
use core::fmt::Write;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering::*};

pub const OFF: u8 = 0;
pub const ABORT: u8 = 1;
pub const WARN: u8 = 2;
/// The checking mode in force (fixed before the hooks go in).
pub static MODE: AtomicU8 = AtomicU8::new(OFF);

const FRESH: u8 = 0xCB;
const FREED: u8 = 0xDF;
const CANARY: u8 = 0xCC;
const FREED_MARK: u64 = 0xDFDF_DFDF_DFDF_DF01;
/// Extra bytes per block: at least 8 of canary, and the size slot.
const EXTRA: usize = 16;

const QUARANTINE_LEN: usize = 4096;
const QUARANTINE_BYTES: usize = 16 << 20;
const QUARANTINE_MAX_BLOCK: usize = 64 << 10;

static QUARANTINE: [AtomicPtr<u8>; QUARANTINE_LEN] =
    [const { AtomicPtr::new(null_mut()) }; QUARANTINE_LEN];
static Q_HEAD: AtomicUsize = AtomicUsize::new(0);
static Q_BYTES: AtomicUsize = AtomicUsize::new(0);
static Q_LOCK: AtomicBool = AtomicBool::new(false);

/// The last huge blocks freed (their pointers, oldest overwritten first): once a huge block's
/// mapping is gone its pointer is no longer ours, and a second free of it would otherwise be
/// handed to the allocator before us as a foreign pointer (`freed_huge_lately`).
const RECENT_HUGE_LEN: usize = 64;
static RECENT_HUGE: [AtomicUsize; RECENT_HUGE_LEN] =
    [const { AtomicUsize::new(0) }; RECENT_HUGE_LEN];
static RECENT_HUGE_NEXT: AtomicUsize = AtomicUsize::new(0);

/// Set by the Python layer at install: a function that writes the calling thread's Python stack
/// to stderr without allocating or running Python code (CPython's faulthandler writer), or 0.
/// A report of a bug found in the call that made it (a double free, a write past the end, MEM
/// or OBJ without the GIL) adds it: it shows the Python code that called into the extension.
pub static STACK_WRITER: AtomicUsize = AtomicUsize::new(0);

/// What a report says about the Python stack.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// The bug was found in the call that made it: the stack shows where.
    Here,
    /// Found later (a write after free, when the block leaves the quarantine): the stack would
    /// show an unrelated call, so none is written.
    Elsewhere,
}

/// The call that hands a block to the checks (its function is named in reports).
pub struct Call {
    pub function: &'static str,
}

fn lock() {
    while Q_LOCK
        .compare_exchange_weak(false, true, Acquire, Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
}

fn unlock() {
    Q_LOCK.store(false, Release);
}

/// Fork handlers (called from `raw_heap`'s): the quarantine lock must not be held across fork.
pub fn fork_prepare() {
    lock();
}

pub fn fork_release() {
    unlock();
}

/// A fixed buffer that `write!` fills without allocating.
struct Line {
    buf: [u8; 320],
    len: usize,
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Report a finding on stderr, then abort unless in "warn" mode.
pub fn report(args: core::fmt::Arguments<'_>, stack: Stack) {
    let mut line = Line {
        buf: [0; 320],
        len: 0,
    };
    let _ = line.write_str("rustmalloc: ");
    let _ = line.write_fmt(args);
    let _ = line.write_str("\n");
    // SAFETY: writing our own buffer to fd 2.
    unsafe { libc::write(2, line.buf.as_ptr() as *const libc::c_void, line.len) };
    let writer = STACK_WRITER.load(Relaxed);
    if stack == Stack::Here && writer != 0 {
        // SAFETY: only ever set to an `extern "C" fn()` (see `STACK_WRITER`).
        let writer: extern "C" fn() = unsafe { core::mem::transmute(writer) };
        writer();
    }
    if MODE.load(Relaxed) != WARN {
        // SAFETY: abort has no preconditions; like glibc on a double free.
        unsafe { libc::abort() };
    }
}

fn domain_name(d: usize) -> &'static str {
    crate::DOMAIN_NAMES.get(d).copied().unwrap_or("?")
}

/// Lay out a fresh block of `n` user bytes (see the module doc).
///
/// # Safety
/// `p` is a live block of ours of at least `n + EXTRA` usable bytes.
unsafe fn prepare(p: *mut u8, n: usize, zeroed: bool) {
    let bs = usable_size(p);
    vg::resized_in_place(p, bs, n); // memcheck's record: the n bytes asked for
    vg::undefined(p.add(n), bs - n);
    core::ptr::write_bytes(p, if zeroed { 0 } else { FRESH }, n);
    core::ptr::write_bytes(p.add(n), CANARY, bs - 8 - n);
    (p.add(bs - 8) as *mut u64).write_unaligned(n as u64);
    vg::noaccess(p.add(n), bs - n);
    if !zeroed {
        vg::undefined(p, n); // to memcheck, FRESH bytes are uninitialised, as they are
    }
}

/// The user size of a checked block, after checking it is live and its canary intact; None if
/// a bug was reported (in warn mode the caller then leaves the block alone).
unsafe fn verify_live(p: *mut u8, call: &Call) -> Option<usize> {
    let bs = usable_size(p);
    let domain = crate::heap::block_domain(p);
    vg::defined(p.add(bs - 8), 8);
    let n = (p.add(bs - 8) as *const u64).read_unaligned();
    vg::noaccess(p.add(bs - 8), 8);
    if n == FREED_MARK {
        report(
            format_args!(
                "double free of block {:p} (size class {} bytes, {} domain) by {}",
                p,
                bs,
                domain_name(domain),
                call.function
            ),
            Stack::Here,
        );
        return None;
    }
    if n == 0 && body_is_zero(p, bs - 8) {
        // A live block of 0 bytes holds its canary; this one reads as zeros, as a freed block
        // whose OS page a purge gave back does.
        report(
            format_args!(
                "double free of block {:p} (size class {} bytes, {} domain) by {}: it was freed \
                 before and its memory given back to the OS",
                p,
                bs,
                domain_name(domain),
                call.function
            ),
            Stack::Here,
        );
        return None;
    }
    if n as usize > bs - EXTRA {
        report(
            format_args!(
            "block {:p} (size class {} bytes, {} domain) was overwritten past its end, over its \
             size record, found by {}",
            p,
            bs,
            domain_name(domain),
            call.function
        ),
            Stack::Here,
        );
        return None;
    }
    let n = n as usize;
    vg::defined(p.add(n), bs - 8 - n);
    let canary = core::slice::from_raw_parts(p.add(n), bs - 8 - n);
    let changed = canary.iter().position(|&b| b != CANARY);
    vg::noaccess(p.add(n), bs - 8 - n);
    if let Some(off) = changed {
        report(
            format_args!(
                "write past the end of block {:p} ({} bytes requested, size class {} bytes, {} \
             domain): byte {} after the end was changed, found by {}",
                p,
                n,
                bs,
                domain_name(domain),
                off,
                call.function
            ),
            Stack::Here,
        );
        return None;
    }
    Some(n)
}

/// Whether the `len` bytes at `p`, a block of ours, are all zero.
///
/// # Safety
/// `p` is a block of ours of at least `len` bytes.
unsafe fn body_is_zero(p: *mut u8, len: usize) -> bool {
    vg::defined(p, len);
    let zero = core::slice::from_raw_parts(p, len).iter().all(|&b| b == 0);
    vg::noaccess(p, len);
    zero
}

/// Whether `p` is one of the last huge blocks freed (`RECENT_HUGE`). Asked only of a pointer
/// that is not ours now: the allocator before us could hand out that very address since (its
/// blocks never start 256 bytes into a 4 MiB-aligned page as ours do, unless glibc's heap
/// happens to put one there), so a match is a double free, barring that coincidence.
pub fn freed_huge_lately(p: *const u8) -> bool {
    p as usize != 0 && RECENT_HUGE.iter().any(|e| e.load(Relaxed) == p as usize)
}

/// Report a pointer handed to `call` (a free or realloc hook) that is not a live block and not
/// the allocator before us's either: inside our segments but not where a block starts (a block
/// freed before, whose page went back to its segment, or a pointer into a block), or a huge
/// block freed lately (`freed_huge_lately`). Handed to the allocator before us instead, such a
/// pointer goes into its free lists: glibc aborts or crashes, or puts it in its tcache and
/// hands out memory of a live segment of ours to its next `malloc`. In warn mode the caller
/// then does nothing with it.
pub fn not_a_block(p: *mut u8, call: &Call) {
    if crate::owns(p) {
        report(
            format_args!(
                "{} of {:p}, inside rustmalloc's memory but not at a live block: a double free of \
                 a block already given back, or a pointer into a block",
                call.function, p
            ),
            Stack::Here,
        );
    } else {
        report(
            format_args!(
                "double free of huge block {:p} by {}: it was freed before and its memory \
                 given back to the OS",
                p, call.function
            ),
            Stack::Here,
        );
    }
}

/// Allocate `n` bytes through `alloc` (which takes the padded size), laid out for checking.
pub fn malloc(n: usize, zeroed: bool, alloc: impl FnOnce(usize) -> *mut u8) -> *mut u8 {
    let Some(padded) = n.checked_add(EXTRA) else {
        return null_mut();
    };
    let p = alloc(padded);
    if !p.is_null() {
        // SAFETY: a fresh block of ours with at least `padded` bytes.
        unsafe { prepare(p, n, zeroed) };
    }
    p
}

/// Check and free a block of ours, through the quarantine; `free` really frees one.
///
/// # Safety
/// `p` is a pointer of ours handed to a free hook.
pub unsafe fn free(p: *mut u8, call: &Call, free: impl Fn(*mut u8)) {
    if verify_live(p, call).is_none() {
        return; // warn mode: leave a suspicious block alone rather than free it twice
    }
    let bs = usable_size(p);
    vg::free_like(p);
    vg::undefined(p, bs);
    core::ptr::write_bytes(p, FREED, bs - 8);
    (p.add(bs - 8) as *mut u64).write_unaligned(FREED_MARK);
    vg::noaccess(p, bs);
    if bs > QUARANTINE_MAX_BLOCK {
        if bs > crate::segment::LARGE_MAX {
            let i = RECENT_HUGE_NEXT.fetch_add(1, Relaxed) % RECENT_HUGE_LEN;
            RECENT_HUGE[i].store(p as usize, Relaxed);
        }
        free_now(p, &free);
        return;
    }
    lock();
    let slot = Q_HEAD.load(Relaxed);
    Q_HEAD.store((slot + 1) % QUARANTINE_LEN, Relaxed);
    let old = QUARANTINE[slot].swap(p, Relaxed);
    let mut bytes = Q_BYTES.load(Relaxed) + bs;
    if !old.is_null() {
        bytes -= usable_size(old);
    }
    Q_BYTES.store(bytes, Relaxed);
    unlock();
    if !old.is_null() {
        release(old, &free);
    }
    // Keep the quarantine's bytes bounded too: release from the oldest end.
    while Q_BYTES.load(Relaxed) > QUARANTINE_BYTES {
        lock();
        let tail = (Q_HEAD.load(Relaxed) + 1) % QUARANTINE_LEN;
        let mut victim = null_mut();
        for k in 0..QUARANTINE_LEN {
            let slot = (tail + k) % QUARANTINE_LEN;
            victim = QUARANTINE[slot].swap(null_mut(), Relaxed);
            if !victim.is_null() {
                Q_BYTES.fetch_sub(usable_size(victim), Relaxed);
                break;
            }
        }
        unlock();
        if victim.is_null() {
            break;
        }
        release(victim, &free);
    }
}

/// A block leaves the quarantine: check nobody wrote to it since it was freed, then free it.
///
/// # Safety
/// `p` is a live block of ours that was taken out of the quarantine; `free` frees a block of ours.
unsafe fn release(p: *mut u8, free: &impl Fn(*mut u8)) {
    let bs = usable_size(p);
    vg::defined(p, bs - 8);
    let body = core::slice::from_raw_parts(p, bs - 8);
    let changed = body.iter().position(|&b| b != FREED);
    vg::noaccess(p, bs - 8);
    if let Some(off) = changed {
        report(
            format_args!(
                "write to freed block {:p} (size class {} bytes, {} domain): byte {} was changed \
             after the block was freed, found when it left the quarantine",
                p,
                bs,
                domain_name(crate::heap::block_domain(p)),
                off
            ),
            Stack::Elsewhere,
        );
        if MODE.load(Relaxed) == WARN {
            return; // leak it: it is still being written to
        }
    }
    free_now(p, free);
}

/// Really free a checked block that memcheck already saw freed (see the module doc).
///
/// # Safety
/// `p` is a block of ours out of the quarantine (or never in it); `free` frees a block of ours.
unsafe fn free_now(p: *mut u8, free: &impl Fn(*mut u8)) {
    vg::malloc_like(p, 0, false);
    free(p);
}

/// Check a block being reallocated and move it to a fresh checked block of `n` bytes.
///
/// # Safety
/// `p` is a pointer of ours handed to a realloc hook.
pub unsafe fn realloc(
    p: *mut u8,
    n: usize,
    call: &Call,
    alloc: impl FnOnce(usize) -> *mut u8,
    free_fn: impl Fn(*mut u8),
) -> *mut u8 {
    let Some(old) = verify_live(p, call) else {
        return null_mut();
    };
    let q = malloc(n, false, alloc);
    if q.is_null() {
        return null_mut();
    }
    core::ptr::copy_nonoverlapping(p, q, old.min(n));
    free(p, call, free_fn);
    q
}
