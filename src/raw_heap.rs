//! RAW-domain heaps: one per thread, handed over when the thread exits.
//!
//! `PyMem_RawMalloc` is called without the GIL from any thread, so each thread allocates from a
//! `RawHeap` of its own with no lock and no atomic on the fast path; a block freed by another
//! thread goes back to its owner as a remote free (`heap::push_remote_small`: onto its page's
//! remote-free list).
//!
//! Life of a heap:
//! ```text
//!   created (mmap) --> OWNED by a thread --thread exits--> ABANDONED --a new thread adopts--> OWNED
//!                                  \--fork while mid-call (child only)--> POISONED (never reused)
//! ```
//! Heaps are never freed: an abandoned heap keeps its live blocks (others free them later as remote
//! frees) and is adopted, whole, by the next thread that needs a heap. So the number of
//! heaps is bounded by the most threads ever alive at once (plus one: a thread looking for a heap
//! skips one that `trim()` or the idle purger holds for the moment), not by how many were ever
//! started.
//! All heaps are on `REGISTRY`, a push-only lock-free list, which the stats and fork code walk.
//!
//! Thread-exit is seen through a pthread key destructor (libc's, not Rust's thread-local
//! destructors, which may run after ours or allocate). After it, the thread's slot holds `DEAD`
//! and any late call (another library's destructor) uses `FALLBACK`, a heap behind a spin lock.
//!
//! Fork: the only lock is `FALLBACK_LOCK`, taken by the `pthread_atfork` prepare handler and
//! released in both processes. In the child, every heap owned by a thread other than the forking
//! one is abandoned (its thread does not exist there); one that was mid-call (its `busy` flag set)
//! may be inconsistent and is poisoned instead: leaked, never adopted. The child also rebuilds
//! each usable heap's stack of pages with remote frees (a freeing thread may have stopped between
//! its two pushes; see `heap::relink_remote_pages_after_fork`).

use crate::heap::{self, Heap};
use crate::os;
use crate::segment::Page;
use crate::stats::{Counters, Summary};
use core::cell::Cell;
use core::ptr::null_mut;
use core::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering::*};
use std::sync::Once;

const OWNED: u8 = 0;
const ABANDONED: u8 = 1;
const POISONED: u8 = 2;
const SHARED: u8 = 3;

#[repr(C)]
pub struct RawHeap {
    /// First field: a `*mut RawHeap` is a `*mut Heap`.
    pub heap: Heap,
    state: AtomicU8,
    /// Set by the owner for the duration of each call (read only by the fork child handler).
    busy: AtomicBool,
    next_in_registry: *mut RawHeap,
}

static REGISTRY: AtomicPtr<RawHeap> = AtomicPtr::new(null_mut());
static HEAPS_CREATED: AtomicUsize = AtomicUsize::new(0);
static FALLBACK: AtomicPtr<RawHeap> = AtomicPtr::new(null_mut());
static FALLBACK_LOCK: AtomicBool = AtomicBool::new(false);
static INIT: Once = Once::new();
static KEY: AtomicUsize = AtomicUsize::new(0);

/// The `owner_tp` of no heap: 0, no thread's thread pointer (see `free_own`). Read by every
/// thread's frees of blocks of full pages: on a line of its own, away from written statics.
static NO_OWNER_TP: heap::CacheLine<AtomicUsize> = heap::CacheLine(AtomicUsize::new(0));

/// The thread's slot after its heap was handed over at thread exit.
const DEAD: *mut RawHeap = 1 as *mut RawHeap;

thread_local! {
    static THREAD_HEAP: Cell<*mut RawHeap> = const { Cell::new(null_mut()) };
}

/// A direct-mapped cache from thread pointer to heap, in front of `THREAD_HEAP`: in an
/// extension module (loaded with dlopen) a `thread_local!` costs a call to `__tls_get_addr`,
/// which was a fifth of a RAW call; the thread pointer is one instruction. An entry is only a
/// hint: it is used when the heap's `owner_tp` equals the caller's thread pointer, which only
/// the owner can make true. Threads that collide on a slot fall back to `THREAD_HEAP`.
static HEAP_CACHE: HeapCache = HeapCache([const { AtomicPtr::new(null_mut()) }; CACHE_SLOTS]);
/// Read on every RAW call by every thread: on cache lines of its own, away from statics that
/// are written (the linker put the segment counters next to it).
#[repr(C, align(64))]
struct HeapCache([AtomicPtr<RawHeap>; CACHE_SLOTS]);
const CACHE_SLOTS: usize = 64;

/// The calling thread's thread pointer: unique among live threads, fixed for a thread's life.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[inline(always)]
fn thread_pointer() -> Option<usize> {
    let tp: usize;
    // SAFETY: reads the first word of the thread control block (its own address, by the x86_64
    // TLS ABI); no memory is written, no flag changed.
    unsafe {
        core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp,
            options(nostack, readonly, preserves_flags, pure));
    }
    Some(tp)
}

#[cfg(all(target_arch = "aarch64", target_os = "linux"))]
#[inline(always)]
fn thread_pointer() -> Option<usize> {
    let tp: usize;
    // SAFETY: reads the thread pointer register; no memory is touched.
    unsafe {
        core::arch::asm!("mrs {}, tpidr_el0", out(reg) tp,
            options(nostack, nomem, preserves_flags, pure));
    }
    Some(tp)
}

#[cfg(not(any(
    all(target_arch = "x86_64", target_os = "linux"),
    all(target_arch = "aarch64", target_os = "linux")
)))]
#[inline(always)]
fn thread_pointer() -> Option<usize> {
    None
}

#[inline(always)]
fn cache_slot(tp: usize) -> &'static AtomicPtr<RawHeap> {
    let i = tp.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (usize::BITS - CACHE_SLOTS.trailing_zeros());
    // SAFETY: the shift leaves log2(CACHE_SLOTS) bits.
    unsafe { HEAP_CACHE.0.get_unchecked(i) }
}

#[inline(always)]
fn thread_heap() -> *mut RawHeap {
    THREAD_HEAP.try_with(|c| c.get()).unwrap_or(DEAD)
}

fn set_thread_heap(h: *mut RawHeap) {
    let _ = THREAD_HEAP.try_with(|c| c.set(h));
}

/// Create the thread-exit key and the fork handlers. Idempotent; `install()` calls it before
/// setting any hook, so no hook ever waits on it.
pub fn init() {
    INIT.call_once(|| {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: plain libc calls with valid arguments; the destructor is an `extern "C"` fn.
        unsafe {
            if libc::pthread_key_create(&mut key, Some(thread_exit)) == 0 {
                KEY.store(key as usize + 1, Release);
            }
            libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
        }
    });
}

/// Run `f` on the calling thread's heap (acquiring one on first use), or on the fallback heap
/// after the thread's heap was handed over. Returns `None` only if no heap could be had (no
/// memory for one).
#[inline(always)]
pub fn with_heap<R>(f: impl FnOnce(*mut Heap) -> R) -> Option<R> {
    let h = cached_heap();
    if !h.is_null() {
        // SAFETY: `cached_heap` returns only a heap this thread owns.
        return Some(unsafe { while_busy(h, f) });
    }
    with_heap_uncached(f)
}

/// `with_heap`, with `or` standing for "no heap": the hooks' form, which keeps the `Option` off
/// their fast path.
#[inline(always)]
pub fn with_heap_or<R>(or: R, f: impl FnOnce(*mut Heap) -> R) -> R {
    let h = cached_heap();
    if !h.is_null() {
        // SAFETY: as in `with_heap`.
        return unsafe { while_busy(h, f) };
    }
    with_heap_uncached(f).unwrap_or(or)
}

/// The RAW malloc fast path: a block from the calling thread's heap if the cache has the heap
/// (`HEAP_CACHE`) and the first page of the request's class has a free block (`heap::alloc_fast`),
/// else null, and the caller takes `with_heap`.
#[inline(always)]
pub fn alloc_fast(size: usize) -> *mut u8 {
    let h = cached_heap();
    if h.is_null() {
        return null_mut();
    }
    // SAFETY: `cached_heap` returns only a heap this thread owns.
    unsafe { while_busy(h, |h| heap::alloc_fast(h, size, crate::RAW)) }
}

/// The calling thread's heap if the cache has it (`HEAP_CACHE`), else null.
#[inline(always)]
fn cached_heap() -> *mut RawHeap {
    let Some(tp) = thread_pointer() else {
        return null_mut();
    };
    // Acquire, paired with the Release store that filled the slot: the heap's fields, written
    // when it was created (plain writes), come before the read of its `owner_tp` below. (Free
    // on x86; the read could otherwise only see 0 or the creator's thread pointer, never ours.)
    let h = cache_slot(tp).load(Acquire);
    // SAFETY: cached heaps are registry entries, never freed; `owner_tp == tp` means this
    // thread owns `h` (see `Heap::owner_tp`).
    if !h.is_null() && unsafe { (*h).heap.owner_tp.load(Relaxed) } == tp {
        h
    } else {
        null_mut()
    }
}

/// `with_heap` when the cache has no entry for this thread: through `THREAD_HEAP`, refilling
/// the cache.
#[inline(never)]
fn with_heap_uncached<R>(f: impl FnOnce(*mut Heap) -> R) -> Option<R> {
    let h = thread_heap();
    if h as usize > DEAD as usize {
        if let Some(tp) = thread_pointer() {
            cache_slot(tp).store(h, Release);
        }
        // SAFETY: a heap in the thread slot is OWNED by this thread.
        return Some(unsafe { while_busy(h, f) });
    }
    with_heap_slow(h, f)
}

/// Free `p` if it is a block of a not-full small page of the calling thread's own heap: the
/// RAW free fast path, which finds the heap from the block's page (`Page::local`) and needs no
/// cache lookup. False if it is not such a block (the caller then takes `with_heap`).
///
/// # Safety
/// `p` is a live block of ours.
#[inline(always)]
pub unsafe fn free_own(p: *mut u8) -> bool {
    let Some(tp) = thread_pointer() else {
        return false;
    };
    let page = crate::segment::page_of(p);
    // Untagged (`heap::local_tag`): a MEM/OBJ page then reads as the GIL heap, whose
    // `owner_tp` is 0.
    let h = (*page).local.load(Relaxed).map_addr(|a| a & !3);
    // Only RAW heaps have an `owner_tp`, and only their owner's thread pointer is found there.
    // A null `h` (a full page, a large span, a huge block) reads `NO_OWNER_TP` instead, chosen
    // by a conditional move: one branch, on "mine or not". Whether another heap's page is full
    // changes from page to page, and as a branch of its own it was mispredicted on 37% of
    // cross-thread frees (callgrind's branch simulation of `cross_raw_mix_t2`); with the
    // branch gone, the cross-thread frees benchmark runs 1.09x faster
    // (`benches/results/micro_pingpong/`).
    let owner_tp: *const AtomicUsize = if h.is_null() {
        &NO_OWNER_TP.0
    } else {
        &(*h).owner_tp.0
    };
    if (*owner_tp).load(Relaxed) != tp {
        return false;
    }
    // As `heap::free` does.
    crate::valgrind::free_like(p);
    // SAFETY: `h` is this thread's own RAW heap (a `RawHeap` starts with its `Heap`), and
    // `page.local == h`, `local_tag(h, RAW)`.
    let h = h as *mut RawHeap;
    if while_busy(h, |h| {
        heap::free_to_local_page_deferred::<true>(h, page, p, crate::RAW)
    }) {
        page_emptied(h, page);
    }
    true
}

/// The page's bookkeeping after `free_own` freed its last live block.
///
/// # Safety
/// As after `free_own`'s free: the caller owns `h`, `page` is its small page with no live block.
#[cold]
#[inline(never)]
unsafe fn page_emptied(h: *mut RawHeap, page: *mut Page) {
    // SAFETY: the caller owns `h`, and `page` is its small page with no live block, which is
    // what `page_became_free_or_unfull` takes.
    while_busy(h, |h| heap::page_became_free_or_unfull(h, page));
}

/// Free `p` if it is a block of a small page of another heap and the calling thread's heap is
/// in the cache: the RAW cross-thread free path. As in `heap::free`, the free is counted on the
/// caller's heap and `p` goes onto its page's remote-free list; this only skips `heap::free`'s tests
/// for the caller's own pages, which a block of another heap fails (two cold calls: 108
/// instructions per cross-thread free under callgrind, 75 without them). False, with nothing
/// done, if `p` is not such a block; a declined free then pays this test on top of the general
/// path, which is rare: the commonest case, a block of a full page of the caller's own heap,
/// happens once per page before the page rejoins its queue (RAW batches: the same instructions
/// per call as before this path, under callgrind).
///
/// # Safety
/// `p` is a live block of ours.
#[inline(always)]
pub unsafe fn free_remote(p: *mut u8) -> bool {
    let me = cached_heap();
    if me.is_null() {
        return false;
    }
    let page = crate::segment::page_of(p);
    // Null for a huge segment (whose `page_of` slot is zeroed too: kind `Free`).
    let owner = (*crate::segment::segment_of(p)).owner;
    if owner.is_null()
        || owner == me as *mut Heap
        || (*page).kind != crate::segment::PageKind::Small
    {
        return false;
    }
    crate::valgrind::free_like(p);
    // SAFETY: `me` is this thread's own heap (`cached_heap`); `page` is the small page of `p`,
    // a live block of `owner`'s.
    while_busy(me, |h| heap::free_to_other_heap(h, owner, page, p));
    true
}

/// Run `f` on heap `h` with its `busy` flag set: every change to a heap happens inside this,
/// so the child of a fork poisons a heap caught mid-change instead of handing it out.
///
/// # Safety
/// The caller owns `h` (it is OWNED by this thread, or taken by `take_abandoned`).
#[inline(always)]
unsafe fn while_busy<R>(h: *mut RawHeap, f: impl FnOnce(*mut Heap) -> R) -> R {
    (*h).busy.store(true, Relaxed);
    fence(Release); // the child of a fork must never see our writes without `busy`
    let r = f(h as *mut Heap);
    (*h).busy.store(false, Release);
    r
}

#[cold]
#[inline(never)]
fn with_heap_slow<R>(h: *mut RawHeap, f: impl FnOnce(*mut Heap) -> R) -> Option<R> {
    if h.is_null() {
        let h = crate::no_unwind(null_mut(), acquire);
        if !h.is_null() {
            // SAFETY: `acquire` made `h` ours; registry entries are never freed.
            unsafe {
                (*h).heap
                    .owner_tp
                    .store(thread_pointer().unwrap_or(0), Relaxed)
            };
            set_thread_heap(h);
            if let Some(key) = key() {
                // SAFETY: `key` was created by `init`; the value is only read by `thread_exit`.
                unsafe { libc::pthread_setspecific(key, h as *const libc::c_void) };
            }
            return with_heap(f);
        }
    }
    with_fallback(f)
}

fn key() -> Option<libc::pthread_key_t> {
    match KEY.load(Acquire) {
        0 => None,
        k => Some((k - 1) as libc::pthread_key_t),
    }
}

/// Run `f` on the shared fallback heap, under its lock.
fn with_fallback<R>(f: impl FnOnce(*mut Heap) -> R) -> Option<R> {
    lock_fallback();
    let mut h = FALLBACK.load(Relaxed);
    if h.is_null() {
        h = create(SHARED);
        FALLBACK.store(h, Relaxed);
    }
    let r = if h.is_null() {
        None
    } else {
        Some(f(h as *mut Heap))
    };
    FALLBACK_LOCK.store(false, Release);
    r
}

fn lock_fallback() {
    while FALLBACK_LOCK
        .compare_exchange_weak(false, true, Acquire, Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
}

/// Make `h` ours if it is abandoned (ABANDONED -> OWNED); false if it is not, or another thread
/// took it first.
fn take_abandoned(h: *mut RawHeap) -> bool {
    // SAFETY: `h` is a registry entry, never freed; its state is an atomic.
    let state = unsafe { &(*h).state };
    state.load(Relaxed) == ABANDONED
        && state
            .compare_exchange(ABANDONED, OWNED, Acquire, Relaxed)
            .is_ok()
}

/// Adopt an abandoned heap, or create one.
fn acquire() -> *mut RawHeap {
    init();
    let mut h = REGISTRY.load(Acquire);
    while !h.is_null() {
        if take_abandoned(h) {
            return h;
        }
        // SAFETY: registry entries are never freed.
        h = unsafe { (*h).next_in_registry };
    }
    create(OWNED)
}

/// What `create` copies into a new heap's mapping: a `RawHeap` built at compile time, so the
/// 18 KB struct never passes through the stack. Built in place with `write`, it did (the
/// compiler made it on the stack and copied it): a thread with a 16 KiB stack
/// (`PTHREAD_STACK_MIN`) crashed on its first RAW call when no heap was there to adopt.
struct NewHeap(RawHeap);
// SAFETY: never written, only copied from.
unsafe impl Sync for NewHeap {}
static NEW_HEAP: NewHeap = NewHeap(RawHeap {
    heap: Heap::new(),
    state: AtomicU8::new(OWNED),
    busy: AtomicBool::new(false),
    next_in_registry: null_mut(),
});

/// Map a new heap and put it on the registry.
fn create(state: u8) -> *mut RawHeap {
    let size = os::round_up(core::mem::size_of::<RawHeap>(), os::page_size()).unwrap_or(0);
    let h = os::map_aligned(size, os::page_size(), 0) as *mut RawHeap;
    if h.is_null() {
        return null_mut();
    }
    // SAFETY: a fresh writable mapping large enough for a RawHeap; `NEW_HEAP` is a RawHeap
    // no one uses (a plain value, copied bit for bit).
    unsafe {
        core::ptr::copy_nonoverlapping(&NEW_HEAP.0, h, 1);
        (*h).state.store(state, Relaxed);
        let mut head = REGISTRY.load(Relaxed);
        loop {
            (*h).next_in_registry = head;
            match REGISTRY.compare_exchange_weak(head, h, Release, Relaxed) {
                Ok(_) => break,
                Err(now) => head = now,
            }
        }
    }
    HEAPS_CREATED.fetch_add(1, Relaxed);
    h
}

/// Hand the thread's heap over for adoption (pthread key destructor).
extern "C" fn thread_exit(value: *mut libc::c_void) {
    crate::no_unwind((), || hand_over(value as *mut RawHeap))
}

fn hand_over(h: *mut RawHeap) {
    if h.is_null() || h == DEAD {
        return;
    }
    // SAFETY: our heap; from here on the cache sends this thread to `THREAD_HEAP` (DEAD).
    unsafe { (*h).heap.owner_tp.store(0, Relaxed) };
    set_thread_heap(DEAD);
    // SAFETY: `h` is this thread's heap; after the store below another thread may adopt it,
    // so nothing touches it after that. Draining changes the heap like any call, so it runs
    // busy: a fork meanwhile must poison the heap in the child, not hand it out half-updated
    // (found by the loom model of the fork handler's view).
    unsafe {
        while_busy(h, |h| heap::collect_remote(h));
        (*h).state.store(ABANDONED, Release);
    }
}

extern "C" fn fork_prepare() {
    lock_fallback();
    crate::check::fork_prepare();
}

extern "C" fn fork_parent() {
    crate::check::fork_release();
    FALLBACK_LOCK.store(false, Release);
}

extern "C" fn fork_child() {
    let mine = thread_heap();
    let mut h = REGISTRY.load(Acquire);
    while !h.is_null() {
        // SAFETY: registry entries are never freed; only this thread exists in the child.
        unsafe {
            if h != mine {
                // Its owner does not exist here; a thread started in the child may get the
                // same thread pointer.
                (*h).heap.owner_tp.store(0, Relaxed);
            }
            if h != mine && (*h).state.load(Relaxed) == OWNED {
                let s = if (*h).busy.load(Relaxed) {
                    POISONED
                } else {
                    ABANDONED
                };
                (*h).busy.store(false, Relaxed);
                (*h).state.store(s, Relaxed);
            }
            // A heap no thread was changing: see `relink_remote_pages_after_fork`. Not a
            // poisoned one, which may be mid-change. The shared fallback heap is one: its lock
            // was taken by `fork_prepare` and is held across the fork. (The GIL heap, not on
            // the registry, is relinked by the Python layer's at-fork hook, which holds the
            // GIL: `crate::gil_heap_after_fork_in_child`.)
            let st = (*h).state.load(Relaxed);
            if h == mine || st == ABANDONED || st == SHARED {
                heap::relink_remote_pages_after_fork(h as *mut Heap);
            }
            h = (*h).next_in_registry;
        }
    }
    crate::check::fork_release();
    FALLBACK_LOCK.store(false, Release);
}

/// Add the counters of every RAW heap to `sum`.
pub fn add_counters(sum: &mut Summary) {
    for_each_counters(|c| sum.add(c));
}

/// Visit the counters of every RAW heap.
pub fn for_each_counters(mut f: impl FnMut(&Counters)) {
    let mut h = REGISTRY.load(Acquire);
    while !h.is_null() {
        // SAFETY: registry entries are never freed; counters are atomics.
        unsafe {
            f(&(*h).heap.counters);
            h = (*h).next_in_registry;
        }
    }
}

/// Purge every abandoned heap now (adopting each for the duration), the fallback heap, and the
/// calling thread's own; ask every other live heap to purge on its next slow path. Returns the
/// bytes given back by the heaps purged here.
pub fn trim() -> usize {
    trim_as(crate::purge::Mode::Trim)
}

/// `trim`, with the calling thread's own heap purged in `own` mode (`Mode::Release` when
/// an allocation of this thread is about to fail: see there).
pub fn trim_as(own: crate::purge::Mode) -> usize {
    use crate::purge::TRIM_EPOCH;
    // Bumps the epoch first (our own heap is purged below); a trim of the program's own asks
    // every heap for a `Mode::Trim` pass.
    let mut bytes = trim_abandoned(true, own == crate::purge::Mode::Trim);
    let mine = thread_heap();
    if mine as usize > DEAD as usize {
        // SAFETY: our own heap; `with_heap` marks it busy for fork safety.
        bytes += with_heap(|h| unsafe {
            (*h).trim_epoch_seen = TRIM_EPOCH.load(Relaxed);
            heap::purge(h, own)
        })
        .unwrap_or(0);
    }
    bytes
}

/// Purge every abandoned heap now (adopting each for the duration), and the fallback heap if
/// `with_fallback_heap` (never from inside the fallback heap: its lock is not reentrant); ask
/// every live heap to purge on its next slow path. Returns the bytes given back.
pub fn trim_abandoned(with_fallback_heap: bool, asked_by_program: bool) -> usize {
    use crate::purge::{Mode, TRIM_EPOCH, USER_TRIM_EPOCH};
    let epoch = TRIM_EPOCH.fetch_add(1, Relaxed) + 1;
    if asked_by_program {
        USER_TRIM_EPOCH.fetch_max(epoch, Relaxed);
    }
    let mut bytes = 0;
    // SAFETY: an adopted heap is ours for the call.
    for_each_abandoned(|h| bytes += unsafe { heap::purge(h, Mode::Trim) });
    if with_fallback_heap && !FALLBACK.load(Acquire).is_null() {
        // SAFETY: under the fallback lock.
        bytes += with_fallback(|h| unsafe { heap::purge(h, Mode::Trim) }).unwrap_or(0);
    }
    bytes
}

/// The idle purger's look (`heap::idle_look`) at every abandoned heap, each adopted for the
/// moment: an exited thread's heap takes no slow path until a thread adopts it, yet its free
/// memory, and what others free into it, should go back like any other. Returns the soonest
/// time, in ms from now, that one of them wants another look.
pub fn idle_look_abandoned() -> Option<u64> {
    let mut soonest: Option<u64> = None;
    for_each_abandoned(|h| {
        // Read per heap: a pass over the one before may be long.
        let now = crate::purge::now_ms();
        // SAFETY: an adopted heap is ours for the call.
        let wait = unsafe { heap::idle_look(h, now) };
        soonest = crate::purge::sooner(soonest, wait);
    });
    soonest
}

/// Run `f` on every abandoned heap, each adopted for the moment (ABANDONED -> OWNED, busy, back
/// to ABANDONED): `trim()` and the idle purger give back what exited threads' heaps hold. A
/// panic in `f` (a bug) is caught inside, so the heap is handed back either way, never left
/// taken and busy.
fn for_each_abandoned(mut f: impl FnMut(*mut Heap)) {
    let mut h = REGISTRY.load(Acquire);
    while !h.is_null() {
        // SAFETY: registry entries are never freed; a heap `take_abandoned` gives us is ours
        // alone until we hand it back.
        unsafe {
            if take_abandoned(h) {
                while_busy(h, |h| crate::no_unwind((), || f(h)));
                (*h).state.store(ABANDONED, Release);
            }
            h = (*h).next_in_registry;
        }
    }
}

/// (heaps created, heaps abandoned now)
pub fn heap_counts() -> (usize, usize) {
    let mut abandoned = 0;
    let mut h = REGISTRY.load(Acquire);
    while !h.is_null() {
        // SAFETY: as above.
        unsafe {
            if (*h).state.load(Relaxed) == ABANDONED {
                abandoned += 1;
            }
            h = (*h).next_in_registry;
        }
    }
    (HEAPS_CREATED.load(Relaxed), abandoned)
}
