//! A heap: the segments one owner carves pages from, a queue of pages per (domain, class), and
//! the owner's counters. The owner is one thread (a RAW heap) or whoever holds the GIL (the GIL
//! heap, serving MEM and OBJ); only the owner touches anything but `remote` (both stacks) and
//! the pages' remote-free slots (other threads push onto them) and `owner_tp` (other threads
//! read it).
//!
//! A block of a small page freed by anyone else is pushed onto that page's remote-free list
//! (`segment::RemoteSlot`), and the page onto the heap's `remote.pages` when its list was empty;
//! on its next slow path the owner takes the pages with one swap and splices each page's list
//! onto its free list whole, touching only the list's last block, so the blocks' cache lines move
//! back to the owner only when it allocates them again. Large blocks (and the rare free that
//! found no heap of its own) go onto `remote.blocks`, a lock-free stack of blocks taken the same
//! way.
//! The fast paths below are a free-list pop or push, a `used` count and one counter; everything
//! else is `#[cold]`.
//!
//! Page queue invariant: a small page is in the queue of its (domain, class) iff `!full`; the
//! first page of a queue is where allocation happens, and pages that were full and got a block
//! back join at the back (as in mimalloc, unlike pymalloc's used pools): allocation works through
//! the queue in order, so a page it reaches again has gathered the frees of a whole pass, and a
//! churn over a large live set makes a page go full and back once per pass instead of on most
//! frees (78 instructions per call on the churn benchmark at the front, 51 at the back; the same
//! pages and RSS). A purged page at the front waits while the last page has free blocks in
//! memory (see `alloc_small_slower`). A page whose last block is freed goes back
//! to its segment unless it is the only page of its queue (kept, so a malloc/free pair at an
//! empty class does not map and unmap a page each time).

use crate::purge::{self, Mode};
use crate::segment::{
    self, extend_free_list, free_blocks, huge_alloc, huge_resize, init_small_page, page_of,
    page_start, purge_page, segment_of, unpurge_page, Page, PageKind, RemoteSlot, SegmentHeader,
    SegmentKind, SegmentLinks, LARGE_MAX, PAGE_SHIFT, PAGE_SIZE, SEGMENT_SIZE,
};
use crate::size_class::{SizeClass, NUM_CLASSES, SMALL_MAX};
use crate::stats::{Counters, DOMAINS, LARGE_SLOT};
use crate::valgrind as vg;
use core::ptr::{self, null_mut};
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::*};

/// Empty segments a heap keeps mapped (decommitted) after an automatic purge pass.
pub const EMPTY_SEGMENTS_KEPT: u32 = 4;
/// Slow paths between two looks at the clock for the automatic purge.
const PURGE_CHECK_EVERY: u32 = 64;

/// The pages of one (domain, class), doubly linked through `Page::next`/`prev`: a handle on the
/// queue's two ends, which live in the heap's `first` and `last` arrays (separate, so the
/// allocation fast path indexes `first` by class with a scaled load and no multiply). `*first` is
/// never null: an empty queue's is `empty_page()`, a page with no free block, so the allocation
/// fast path reads `first.free` without testing `first` (and never writes to it). Walks start at
/// `first_page`, which turns the sentinel into null.
#[derive(Clone, Copy)]
pub struct PageQueue {
    pub first: *mut *mut Page,
    pub last: *mut *mut Page,
}

/// The sentinel of empty queues: never linked, never written. It has no free block, so the fast
/// path goes to the slow path on reading it, and room to carve (`capacity < reserved`), so the
/// slow path's first loop stops at it and hands over to `alloc_small_slower`, which walks
/// through `first_page`.
struct EmptyPage(core::cell::UnsafeCell<Page>);
// SAFETY: nothing ever writes to it; readers read its fields (`free` null, `capacity <
// reserved`, an empty `next`), all constant.
unsafe impl Sync for EmptyPage {}
static EMPTY_PAGE: EmptyPage = EmptyPage(core::cell::UnsafeCell::new(Page {
    reserved: 1,
    ..Page::free_page()
}));

#[inline(always)]
const fn empty_page() -> *mut Page {
    EMPTY_PAGE.0.get()
}

/// The first page of queue `q`, or null if it is empty.
///
/// # Safety
/// `q` is a live queue.
#[inline(always)]
unsafe fn first_page(q: PageQueue) -> *mut Page {
    let first = *q.first;
    if first == empty_page() {
        null_mut()
    } else {
        first
    }
}

#[repr(C)]
pub struct Heap {
    /// The two ends of the page queues (see `PageQueue`), indexed `domain * QUEUE_STRIDE + class`
    /// (the last of each domain's `QUEUE_STRIDE` is unused): the same index as `Page::counter`,
    /// so the free fast path finds a page's queue from the page alone.
    pub first: [*mut Page; DOMAINS * QUEUE_STRIDE],
    pub last: [*mut Page; DOMAINS * QUEUE_STRIDE],
    /// Segments that have at least one free page (linked through `SegmentHeader::with_free`).
    pub segments: *mut SegmentHeader,
    /// Every segment of this heap (linked through `SegmentHeader::all`): what `local_frees`
    /// walks. (The segment map cannot say whose a segment is without reading its header, and
    /// another thread may unmap its own segments meanwhile.)
    pub all_segments: *mut SegmentHeader,
    /// How many segments of `segments` are entirely empty.
    pub empty_segments: u32,
    pub counters: Counters,
    /// When the next automatic purge pass may run (`purge::now_ms` clock), the last `trim()`
    /// request this heap has honoured, and slow paths left before the next look at the clock.
    pub next_purge_ms: u64,
    pub trim_epoch_seen: u64,
    pub purge_countdown: u32,
    /// The automatic purge delay in force for this heap, in ms (`purge::adapt_delay`; 0 until
    /// the first pass), and the sums it is judged on: bytes given back by recent automatic
    /// passes and bytes of purged memory taken into use again.
    pub purge_delay_ms: u64,
    pub recent_purged: u64,
    pub recent_refaulted: u64,
    /// Resident bytes of segments this heap's automatic passes unmapped and not yet mapped
    /// again, and when the last was: a segment mapped soon after takes them back (its pages
    /// count as refaults as they are taken, see `take_pages`).
    pub unmapped_bytes: u64,
    pub unmapped_ms: u64,
    /// What the last purge pass could give back: memory freed before this time (an automatic
    /// pass's time less its delay; a trim's time). For the idle purger (`idle_look`), with the
    /// heap's frees and collected remote frees at its last look, and when a look last saw
    /// them move.
    pub purged_before_ms: u64,
    pub idle_frees_seen: u64,
    pub idle_active_ms: u64,
    /// Blocks collected from `remote`'s two stacks (`collect_remote`): frees of this heap's
    /// blocks by others, which count on the freeing heap, not here.
    pub remote_collected: u64,
    /// Where others leave the blocks of this heap they free (`RemoteHeads`). Written by other
    /// threads (see `CacheLine`).
    pub remote: CacheLine<RemoteHeads>,
    /// For a RAW heap (`raw_heap`), the owning thread's thread pointer, 0 when no thread owns it
    /// (always 0 for the GIL heap). A thread stores only its own value here, on taking the heap,
    /// and clears it before handing the heap over; the fork child handler clears it for every
    /// heap of a thread that did not survive the fork. So a thread that reads its own thread
    /// pointer here is the heap's only user: its owner, or — if the owner exited without handing
    /// it over (no thread-exit key, or a first RAW call from the last pass of thread-exit
    /// destructors) — the one new thread that got the dead owner's stack, and with it its thread
    /// pointer, which then keeps using the heap, alone.
    /// Read by the owner on every RAW call and by other threads' frees, written rarely.
    pub owner_tp: CacheLine<AtomicUsize>,
}

impl Heap {
    pub const fn new() -> Heap {
        Heap {
            first: [empty_page(); DOMAINS * QUEUE_STRIDE],
            last: [null_mut(); DOMAINS * QUEUE_STRIDE],
            segments: null_mut(),
            all_segments: null_mut(),
            empty_segments: 0,
            counters: Counters::new(),
            next_purge_ms: 0,
            trim_epoch_seen: 0,
            purge_countdown: 0,
            purge_delay_ms: 0,
            recent_purged: 0,
            recent_refaulted: 0,
            unmapped_bytes: 0,
            unmapped_ms: 0,
            purged_before_ms: 0,
            idle_frees_seen: 0,
            idle_active_ms: 0,
            remote_collected: 0,
            remote: CacheLine(RemoteHeads {
                blocks: AtomicPtr::new(null_mut()),
                pages: AtomicPtr::new(null_mut()),
            }),
            owner_tp: CacheLine(AtomicUsize::new(0)),
        }
    }
}

/// Where other threads leave a heap's blocks they free (on one line, see `CacheLine`).
pub struct RemoteHeads {
    /// Large blocks (and frees that found no heap of their own): a stack linked through each
    /// block's first word.
    pub blocks: AtomicPtr<u8>,
    /// Small pages with blocks waiting on their remote-free lists (`segment::RemoteSlot`): a
    /// stack linked through the slots' `next_page`.
    pub pages: AtomicPtr<Page>,
}

/// A value alone on its cache line(s). The fields of a heap that other threads use are kept
/// away from those its owner writes on every call (counters, page queues, a RAW heap's busy
/// flag) and from each other: otherwise a thread freeing one of the heap's blocks would write (a
/// CAS on `remote`) or read a line the owner writes, and every call on either side would move
/// the line between their caches.
#[repr(C, align(64))]
pub struct CacheLine<T>(pub T);

impl<T> core::ops::Deref for CacheLine<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}

/// # Safety
/// `h` is a live heap, `domain < DOMAINS` and `class < NUM_CLASSES`.
#[inline(always)]
unsafe fn queue(h: *mut Heap, domain: usize, class: usize) -> PageQueue {
    queue_at(h, domain * QUEUE_STRIDE + class)
}

/// The queue at index `i` of `h`'s `first` and `last`.
///
/// # Safety
/// `h` is a live heap and `i < DOMAINS * QUEUE_STRIDE`.
#[inline(always)]
unsafe fn queue_at(h: *mut Heap, i: usize) -> PageQueue {
    // SAFETY: in bounds by the contract above.
    PageQueue {
        first: (ptr::addr_of_mut!((*h).first) as *mut *mut Page).add(i),
        last: (ptr::addr_of_mut!((*h).last) as *mut *mut Page).add(i),
    }
}

/// Queues per domain in `Heap::first` and `Heap::last`: one per class, and one unused (see there).
pub const QUEUE_STRIDE: usize = NUM_CLASSES + 1;
// `Page::counter` indexes both the queues and the per-class counters.
const _: () = assert!(QUEUE_STRIDE == crate::stats::SLOTS);

/// Whether `page` is the only page of its queue (a page the free fast path keeps when its last
/// block is freed: a malloc/free pair at an otherwise empty class does not give it back and
/// take it again each time).
///
/// A page in its queue is alone there iff it has no neighbour (the queue functions null the
/// links at both ends): two loads from the page's own cache line, instead of finding the queue
/// (5 instructions fewer per free that empties a page, e.g. a malloc/free pair at a class with
/// nothing else live: 48.0 to 45.5 instructions per call on 128-byte OBJ pairs under callgrind).
///
/// # Safety
/// `page` is a small page of `h` that is not full (so it is in its queue).
#[inline(always)]
unsafe fn sole_page(h: *mut Heap, page: *mut Page) -> bool {
    let sole = ((*page).prev as usize | (*page).next as usize) == 0;
    debug_assert!(!(*page).full);
    debug_assert_eq!(sole, {
        let q = page_queue(h, page);
        *q.first == page && *q.last == page
    });
    sole
}

/// The queue of small page `page` of `h` (whether or not the page is in it now).
///
/// # Safety
/// `page` is a small page of `h`.
#[inline(always)]
unsafe fn page_queue(h: *mut Heap, page: *mut Page) -> PageQueue {
    // SAFETY: `counter` is `domain * QUEUE_STRIDE + class` (`init_small_page`), in bounds.
    queue_at(h, (*page).counter as usize)
}

/// A full page of `h` that just got a block back leaves the full state and joins the back of
/// its queue (see the module doc). Its block counts as made available (see `pop`): the fast
/// path may allocate it without a slow path if the page becomes first.
///
/// # Safety
/// The caller is `h`'s owner; `page` is a full small page of `h`.
#[inline(always)]
unsafe fn rejoin_queue(h: *mut Heap, page: *mut Page) {
    (*page).full = false;
    (*page)
        .local
        .store(local_tag(h, (*page).domain as usize), Relaxed);
    queue_push_back(page_queue(h, page), page);
    (*h).counters.note_available((*page).block_size as u64);
}

/// Allocate `size` bytes for `domain` from heap `h`. Null if the OS refuses memory.
///
/// # Safety
/// The caller is `h`'s owner (see the module doc) and `domain < DOMAINS`.
#[inline(always)]
pub unsafe fn alloc(h: *mut Heap, size: usize, domain: usize) -> *mut u8 {
    let p = alloc_counted::<true>(h, size, domain);
    vg::malloc_like(p, size, false);
    p
}

/// `alloc`, with the fast path's statistics compiled in or out (`STATS = false` exists only
/// to measure what the counters cost; slow paths always count).
///
/// # Safety
/// As for `alloc`.
#[inline(always)]
pub unsafe fn alloc_counted<const STATS: bool>(
    h: *mut Heap,
    size: usize,
    domain: usize,
) -> *mut u8 {
    let Some(class) = small_class(size) else {
        return alloc_large(h, size, domain);
    };
    let block = pop_block::<STATS>(h, class, domain);
    if !block.is_null() {
        return block;
    }
    alloc_small_slow(h, class, domain)
}

/// The malloc fast path alone: a block from the first page of its class's queue, or null if
/// the request needs more (an empty page, a large or huge request; the caller then calls
/// `alloc`). For a caller that has work to undo before the slow path (the RAW heaps' `busy`
/// flag), so that its common path makes no call.
///
/// # Safety
/// As for `alloc`.
#[inline(always)]
pub unsafe fn alloc_fast(h: *mut Heap, size: usize, domain: usize) -> *mut u8 {
    let Some(class) = small_class(size) else {
        return null_mut();
    };
    let block = pop_block::<true>(h, class, domain);
    if !block.is_null() {
        vg::malloc_like(block, size, false);
    }
    block
}

/// The small class serving `size` bytes, or `None` for a large or huge request.
#[inline(always)]
fn small_class(size: usize) -> Option<usize> {
    // The 16-byte-step classes first, by arithmetic: most requests are there, and the tests for
    // the rest then cost them nothing.
    if let Some(class) = SizeClass::fine(size) {
        Some(class.index())
    } else {
        unlikely();
        if size <= SMALL_MAX {
            Some(SizeClass::of(size).index())
        } else {
            None
        }
    }
}

/// Take a block from the first page of `class`'s queue, or null if that page has none free.
///
/// # Safety
/// As for `alloc`; `class < NUM_CLASSES`.
#[inline(always)]
unsafe fn pop_block<const STATS: bool>(h: *mut Heap, class: usize, domain: usize) -> *mut u8 {
    // SAFETY (for the unchecked indices below): `domain < DOMAINS` by the caller's contract,
    // `class < NUM_CLASSES` as a `SizeClass`.
    let page = *queue(h, domain, class).first; // never null (see `PageQueue`)
    let block = (*page).free;
    if !block.is_null() {
        // A page whose last block this takes stays first in its queue: frees into it stay on
        // the fast path, and the next allocation's slow path moves on if none came. (Taking it
        // out at once made a malloc/free pair at such a page requeue it each time.)
        let next = vg::read_link(block);
        (*page).free = next;
        prefetch(next);
        (*page).used += 1;
        if STATS {
            // SAFETY: `domain < DOMAINS` (callers' contract), `class < NUM_CLASSES`.
            (*h).counters
                .allocs
                .get_unchecked(domain)
                .get_unchecked(class)
                .add(1);
        }
    }
    block
}

/// Marks the branch that calls it as the unlikely one, so the compiler lays the other out as
/// the straight line (a call to a `#[cold]` function is how LLVM learns it: stable Rust has no
/// `likely`); the call itself is inlined away.
#[cold]
#[inline(always)]
fn unlikely() {}

/// Start loading the cache line of `p`, the block the next allocation from this page returns.
/// Where frees come in random order (a churn over a large live set), a page's free list
/// points all over it, and reading the popped block's link was a cache miss on the malloc
/// path (callgrind's cache simulation of churn: 0.21 of rustmalloc's 1.16 misses of a 1 MiB
/// L2 per call; tcmalloc's LIFO caches hand back recently freed, cached blocks). Loaded ahead,
/// the line is there when the next malloc of the class comes. One instruction per malloc.
/// A prefetch never faults, so `p` may be null or in a decommitted page.
#[inline(always)]
fn prefetch(p: *mut u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch hint reads nothing the program can observe and never faults.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `alloc` of `n * size` zeroed bytes; null on overflow.
///
/// # Safety
/// As for `alloc`.
pub unsafe fn alloc_zeroed(h: *mut Heap, n: usize, size: usize, domain: usize) -> *mut u8 {
    crate::no_unwind(null_mut(), || {
        (*h).counters.callocs[domain].add(1);
        let Some(total) = n.checked_mul(size) else {
            return null_mut();
        };
        if total > LARGE_MAX {
            let p = alloc_huge(h, total, domain); // a fresh mapping reads as zeros
            vg::malloc_like(p, total, true);
            return p;
        }
        let p = alloc(h, total, domain);
        if !p.is_null() {
            ptr::write_bytes(p, 0, total);
        }
        p
    })
}

/// The slow paths are `extern "C"`: they never unwind (their bodies run under `no_unwind`), and
/// saying so lets the fast paths call them without a landing pad, as tail calls, with no stack
/// frame of their own.
///
/// Where most slow allocations end: the queue's first page ran out and a page behind it has
/// free blocks, or room left to carve. Pages that ran out leave the queue (marked full) until
/// this finds one to pop from; anything else (remote frees to collect, a purge or trim due,
/// purged blocks, a new page) is `alloc_small_slower`'s. Nothing here can panic.
///
/// # Safety
/// The caller is `h`'s owner; `class < NUM_CLASSES`, `domain < DOMAINS`.
#[cold]
#[inline(never)]
unsafe extern "C" fn alloc_small_slow(h: *mut Heap, class: usize, domain: usize) -> *mut u8 {
    if (*h).purge_countdown > 0
        && !has_remote(h)
        && purge::TRIM_EPOCH.load(Relaxed) == (*h).trim_epoch_seen
    {
        (*h).purge_countdown -= 1;
        let q = queue(h, domain, class);
        let mut page = *q.first;
        loop {
            if !(*page).free.is_null() {
                return pop(h, page, class, domain);
            }
            if (*page).purged != 0 {
                break;
            }
            // A page with uncarved room is carved here: a batch of in-order allocations then runs
            // fast path, carve, fast path, with no queue walk, collection or purge check between.
            // The empty queue's sentinel has "room" (see `EMPTY_PAGE`) and ends the walk.
            if (*page).capacity < (*page).reserved {
                if page != empty_page() && carve(h, page) {
                    return pop(h, page, class, domain);
                }
                break;
            }
            leave_queue_full(q, page);
            page = *q.first;
        }
    }
    alloc_small_slower(h, class, domain)
}

/// # Safety
/// As for `alloc_small_slow`.
#[cold]
#[inline(never)]
unsafe extern "C" fn alloc_small_slower(h: *mut Heap, class: usize, domain: usize) -> *mut u8 {
    crate::no_unwind(null_mut(), || {
        collect_remote(h);
        maybe_purge(h);
        let q = queue(h, domain, class);
        loop {
            let page = first_page(q);
            if page.is_null() {
                break;
            }
            if !(*page).free.is_null() {
                return pop(h, page, class, domain);
            }
            if (*page).purged != 0 {
                // Its free blocks were given back to the OS: before faulting them in again, use
                // the last page of the queue if it has free blocks in memory. Pages that were full
                // and got blocks back join there (see the module doc), so after a large structure
                // is dropped and purged, a program that goes on allocating a little reuses the
                // pages it frees into instead of walking through the sparse purged ones, faulting
                // each in (to be purged again).
                let last = *q.last;
                if last != page && !(*last).free.is_null() {
                    queue_remove(q, last);
                    queue_push_front(q, last);
                    return pop(h, last, class, domain);
                }
                let os_pages = (*page).purged.count_ones() as usize;
                if unpurge_page(page) {
                    count_page_refault(h, page, os_pages * crate::os::page_size());
                    return pop(h, page, class, domain);
                }
            }
            if (*page).capacity < (*page).reserved && carve(h, page) {
                return pop(h, page, class, domain);
            }
            leave_queue_full(q, page);
        }
        let page = take_pages(h, 1, PageKind::Small);
        if page.is_null() {
            return null_mut();
        }
        init_small_page(page, SizeClass(class as u8), domain as u8);
        (*h).counters.pages[domain][class].add(1);
        queue_push_front(q, page);
        carve(h, page);
        pop(h, page, class, domain)
    })
}

/// The first page of queue `q` ran out of blocks: it leaves the queue, full, until a block of it is
/// freed (which takes the slow path, `local` being null, and requeues it).
///
/// # Safety
/// `page` is the first page of `q`, with no free block to hand out; the caller owns its heap.
#[inline(always)]
unsafe fn leave_queue_full(q: PageQueue, page: *mut Page) {
    queue_remove(q, page);
    (*page).full = true;
    (*page).local.store(null_mut(), Relaxed);
}

/// Carve more blocks into an empty free list; false if the page is all carved.
///
/// # Safety
/// The caller is `h`'s owner and `page` a small page of `h` with an empty free list.
unsafe fn carve(h: *mut Heap, page: *mut Page) -> bool {
    let before = (*page).capacity;
    let n = extend_free_list(page);
    (*h).counters.carved[(*page).domain as usize][(*page).class as usize].add(n as u64);
    count_page_refault(h, page, segment::rest_carved(page, before));
    n != 0
}

/// Count `bytes` of `page` (a small page or large span in use) that a pass gave back (its OS
/// pages of free blocks, `purge_page`, or its rest, `segment::purge_rest`), taken into use
/// again; the pass's time is the page's (see `segment::TouchTimes`).
///
/// # Safety
/// The caller is `h`'s owner; `page` starts a small page or span of `h`.
unsafe fn count_page_refault(h: *mut Heap, page: *mut Page, bytes: usize) {
    if bytes != 0 {
        let t = segment::touch_times(segment_of(page as *const u8));
        let purged_ms = (*t).page[segment::page_index(page)];
        count_refault(h, bytes, purged_ms, purge::now_ms());
    }
}

/// # Safety
/// The caller is `h`'s owner; `page` is a small page of `h` for (`domain`, `class`) with a non-empty free list.
#[inline(always)]
unsafe fn pop(h: *mut Heap, page: *mut Page, class: usize, domain: usize) -> *mut u8 {
    let block = (*page).free;
    (*page).free = vg::read_link(block);
    // The page's free blocks are now where allocation happens: they count towards the peak
    // sampling throttle (see `Counters::note_available`).
    let bs = (*page).block_size as u64;
    let available = ((*page).capacity - (*page).used) as u64 * bs;
    (*page).used += 1;
    let c = &(*h).counters;
    // SAFETY: `domain < DOMAINS` and `class < NUM_CLASSES` by the caller's contract.
    c.allocs.get_unchecked(domain).get_unchecked(class).add(1);
    c.note_available(available);
    block
}

/// # Safety
/// The caller is `h`'s owner; `size > SMALL_MAX`, `domain < DOMAINS`.
#[cold]
#[inline(never)]
unsafe extern "C" fn alloc_large(h: *mut Heap, size: usize, domain: usize) -> *mut u8 {
    crate::no_unwind(null_mut(), || {
        if size > LARGE_MAX {
            return alloc_huge(h, size, domain);
        }
        collect_remote(h);
        maybe_purge(h);
        let count = (size + PAGE_SIZE - 1) >> PAGE_SHIFT;
        let page = take_pages(h, count, PageKind::Large);
        if page.is_null() {
            return null_mut();
        }
        let rounded = segment::huge_rounded(size);
        (*page).kind = PageKind::Large;
        (*page).block_size = rounded as u32;
        (*page).used = 1;
        (*page).domain = domain as u8;
        (*page).class = 0;
        (*page).full = false;
        (*page).local.store(null_mut(), Relaxed);
        count_large_alloc(h, domain, rounded);
        page_start(page)
    })
}

/// # Safety
/// The caller is `h`'s user (counters are single-writer); `domain < DOMAINS`.
unsafe fn count_large_alloc(h: *mut Heap, domain: usize, rounded: usize) {
    let c = &(*h).counters;
    c.allocs[domain][LARGE_SLOT].add(1);
    c.large_bytes_allocated[domain].add(rounded as u64);
    c.note_available(rounded as u64);
}

/// # Safety
/// As for `count_large_alloc`.
unsafe fn count_large_free(h: *mut Heap, domain: usize, rounded: usize) {
    let c = &(*h).counters;
    c.frees[domain][LARGE_SLOT].add(1);
    c.large_bytes_freed[domain].add(rounded as u64);
}

/// A large or huge block resized in place from `old` to `new` bytes (16-byte rounded).
///
/// # Safety
/// As for `count_large_alloc`.
unsafe fn count_large_resize(h: *mut Heap, domain: usize, old: usize, new: usize) {
    let c = &(*h).counters;
    c.large_bytes_freed[domain].add(old as u64);
    c.large_bytes_allocated[domain].add(new as u64);
    c.note_available(new.saturating_sub(old) as u64);
}

/// # Safety
/// As for `count_large_alloc` (the mapping itself needs no owner).
unsafe fn alloc_huge(h: *mut Heap, size: usize, domain: usize) -> *mut u8 {
    if size > isize::MAX as usize {
        return null_mut();
    }
    let mut p = huge_alloc(size, domain as u8);
    if p.is_null() && release_before_failing(h, size) {
        p = huge_alloc(size, domain as u8);
    }
    if !p.is_null() {
        (*segment_of(p)).huge_heap = h;
        count_large_alloc(h, domain, segment::huge_rounded(size));
    }
    p
}

/// For the peaks (`stats::Counters::held`): `h` has just counted a free (or a resize) of huge
/// block `seg`, `size` bytes as `from`, the block's heap, counted it. If `from` is another heap,
/// it is told (`huge_taken`) and `h` counts the bytes as given, so the block leaves `from`'s
/// peak figure. `h` becomes the block's heap (after a resize its new size is counted on `h`).
///
/// # Safety
/// The caller is `h`'s user and the block's; `seg` is its live huge segment.
unsafe fn take_huge_over(h: *mut Heap, seg: *mut SegmentHeader, from: *mut Heap, size: usize) {
    if from != h {
        let d = (*seg).huge_domain as usize;
        (*h).counters.given_bytes[d].add(size as u64);
        if !from.is_null() {
            (*from).counters.huge_taken[d].fetch_add(size as u64, Relaxed);
        }
        (*seg).huge_heap = h;
    }
}

/// The OS refused a mapping of `size` bytes (out of memory, or `RLIMIT_AS`): before failing,
/// give back what can be given — this heap's empty segments and free pages, and what
/// `crate::release_elsewhere` reaches — and say whether anything was, so the caller retries
/// once. Empty segments stay mapped between purge passes, so after a large structure is freed
/// in one heap, another heap may find the address space taken by them. Nothing is given back
/// for a request no release could make fit (`os::could_ever_map`).
///
/// # Safety
/// The caller is `h`'s owner, at a point where `h` is consistent (no page half set up).
#[cold]
unsafe fn release_before_failing(h: *mut Heap, size: usize) -> bool {
    if !crate::os::could_ever_map(size) {
        return false;
    }
    let here = purge(h, Mode::Release);
    let elsewhere = crate::release_elsewhere(h);
    // The pass just made is this heap's share of the trim `release_elsewhere` asked every heap
    // for: it must not make a `Mode::Trim` pass of its own on its next slow path.
    (*h).trim_epoch_seen = purge::TRIM_EPOCH.load(core::sync::atomic::Ordering::Relaxed);
    here + elsewhere > 0
}

/// Take `count` contiguous free pages for a page of `kind` from one of the heap's segments,
/// mapping a new segment if none has room (see `segment::take_pages`).
///
/// # Safety
/// The caller is `h`'s owner; `1 <= count <= LARGE_MAX / PAGE_SIZE`, 1 for a small page.
unsafe fn take_pages(h: *mut Heap, count: usize, kind: PageKind) -> *mut Page {
    let mut seg = (*h).segments;
    while !seg.is_null() {
        let was_empty = (*seg).used_pages == 0;
        let page = take_pages_from(h, seg, count, kind);
        if !page.is_null() {
            if was_empty {
                (*h).empty_segments -= 1;
            }
            if (*seg).free_pages == 0 {
                segment_list_remove(h, seg);
            }
            return page;
        }
        seg = (*seg).with_free.next;
    }
    let mut seg = segment::new_segment(h);
    if seg.is_null() && release_before_failing(h, SEGMENT_SIZE) {
        seg = segment::new_segment(h);
    }
    if seg.is_null() {
        return null_mut();
    }
    if (*h).unmapped_bytes != 0 {
        // Mapped soon after a pass unmapped segments: taking its pages takes that memory back,
        // as much of it as was resident (`unmapped_bytes`): beyond that it is growth. Pages are
        // marked from both ends, where small pages (top) and large spans (bottom) are taken.
        if refault_window(purge::now_ms(), (*h).unmapped_ms) {
            let resident = (*h).unmapped_bytes.min(SEGMENT_SIZE as u64) as usize;
            (*seg).purged_pages =
                pages_from_both_ends((*seg).free_pages, resident.div_ceil(PAGE_SIZE));
            (*segment::touch_times(seg)).page = [(*h).unmapped_ms; segment::PAGES_PER_SEGMENT];
        }
        (*h).unmapped_bytes = (*h).unmapped_bytes.saturating_sub(SEGMENT_SIZE as u64);
    }
    segment_list_push(h, seg);
    all_segments_push(h, seg);
    let page = take_pages_from(h, seg, count, kind);
    debug_assert!(!page.is_null());
    page
}

/// `n` of the pages in the mask `pages`, taken from its highest and lowest ends in turn.
fn pages_from_both_ends(pages: u64, n: usize) -> u64 {
    let (mut rest, mut marked) = (pages, 0u64);
    for i in 0..n {
        if rest == 0 {
            break;
        }
        let bit = if i % 2 == 0 {
            1u64 << (63 - rest.leading_zeros())
        } else {
            rest & rest.wrapping_neg()
        };
        marked |= bit;
        rest &= !bit;
    }
    marked
}

/// `segment::take_pages` from `seg`, counting the purged pages it takes as refaults.
///
/// # Safety
/// As for `take_pages`; `seg` is a live `Pages` segment of `h`.
unsafe fn take_pages_from(
    h: *mut Heap,
    seg: *mut SegmentHeader,
    count: usize,
    kind: PageKind,
) -> *mut Page {
    let purged = (*seg).purged_pages;
    let page = segment::take_pages(seg, count, kind);
    count_refaulted_pages(h, seg, purged & !(*seg).purged_pages);
    page
}

/// `Page::local` of a small, not-full page of `h` in `domain`: `h`'s address plus the domain
/// (heaps are 64-byte aligned, so the tag never reaches the next heap). RAW pages' tag is 0.
#[inline(always)]
pub fn local_tag(h: *mut Heap, domain: usize) -> *mut Heap {
    debug_assert!(domain < DOMAINS);
    (h as *mut u8).wrapping_add(domain) as *mut Heap
}

const _: () = assert!(core::mem::align_of::<Heap>() >= 4 && DOMAINS <= 4);

/// Free a block of ours, whatever its domain, counting it on `h`, the caller's heap: locally if
/// `h` owns it, else back to its owner as a remote free. (The hooks use `free_in`, which knows the
/// domain as a constant.)
///
/// # Safety
/// `p` is a live block of ours (`segment_map::owns(p)`), and the caller is `h`'s owner.
#[inline(always)]
pub unsafe fn free(h: *mut Heap, p: *mut u8) {
    // A huge block's `page_of` slot is zeroed: domain 0, `local` null (the slow path).
    free_in(h, p, (*page_of(p)).domain as usize)
}

/// Free a block of ours through `domain`'s free function (the block may be of another domain:
/// then it takes the slow path), counting it on `h` as `free` does.
///
/// # Safety
/// As for `free`, and `domain < DOMAINS`.
#[inline(always)]
pub unsafe fn free_in(h: *mut Heap, p: *mut u8, domain: usize) {
    vg::free_like(p);
    free_counted::<true>(h, p, domain)
}

/// `free_in`, with the fast path's statistics compiled in or out (see `alloc_counted`).
///
/// # Safety
/// As for `free_in`.
#[inline(always)]
pub unsafe fn free_counted<const STATS: bool>(h: *mut Heap, p: *mut u8, domain: usize) {
    // For a huge block, `page_of` is a zeroed slot of its segment's header (see `HUGE_OFFSET`).
    let page = page_of(p);
    // A small page of `h` in `domain`, not full (see `Page::local`).
    if (*page).local.load(Relaxed) == local_tag(h, domain) {
        free_to_local_page::<STATS>(h, page, p, domain);
        return;
    }
    free_slow(h, page, p);
}

/// The free fast path proper: `p` goes back on `page`'s free list.
///
/// # Safety
/// The caller is `h`'s owner; `p` is a live block of `page`, and
/// `(*page).local == local_tag(h, domain)`.
#[inline(always)]
unsafe fn free_to_local_page<const STATS: bool>(
    h: *mut Heap,
    page: *mut Page,
    p: *mut u8,
    domain: usize,
) {
    if free_to_local_page_deferred::<STATS>(h, page, p, domain) {
        page_became_free_or_unfull(h, page);
    }
}

/// `free_to_local_page` but for the page's own bookkeeping: true if `page` has just lost its
/// last live block and the caller must call `page_became_free_or_unfull(h, page)`. Lets the RAW
/// fast path make that rare call outside its `while_busy`, as a tail call, so its common path
/// keeps no register across a call (2 instructions per RAW free, under callgrind).
///
/// # Safety
/// As for `free_to_local_page`.
#[inline(always)]
pub unsafe fn free_to_local_page_deferred<const STATS: bool>(
    h: *mut Heap,
    page: *mut Page,
    p: *mut u8,
    domain: usize,
) -> bool {
    if STATS {
        count_local_free(h, page, domain);
    }
    link_free(page, p);
    (*page).used == 0 && !sole_page(h, page)
}

/// Count a free by `h` of a block of its own small page `page` of `domain` (see the stats
/// module doc): a RAW block in its class's counter, a MEM or OBJ block as bytes in a counter at
/// a fixed address (`domain` is a constant on the fast paths), its class derived on reading.
///
/// # Safety
/// The caller is `h`'s owner; `page` is a small page of `h` in `domain`.
#[inline(always)]
unsafe fn count_local_free(h: *mut Heap, page: *mut Page, domain: usize) {
    debug_assert_eq!((*page).domain as usize, domain);
    let c = &(*h).counters;
    if domain == crate::RAW {
        // SAFETY: `counter` is set by `init_small_page` from a valid domain and class, so it
        // indexes the flattened `frees` array in bounds.
        c.free_counter((*page).counter as usize).add(1);
    } else {
        // SAFETY: `domain < DOMAINS` (callers' contract).
        c.local_bytes
            .get_unchecked(domain)
            .add((*page).block_size as u64);
    }
}

/// Push block `p` onto `page`'s free list (the one place that links a freed block in).
///
/// # Safety
/// The caller owns `page`'s heap; `p` is a live block of `page`, a small page.
#[inline(always)]
unsafe fn link_free(page: *mut Page, p: *mut u8) {
    vg::write_link(p, (*page).free);
    (*page).free = p;
    (*page).used -= 1;
}

/// Put block `p` back on its small page's free list: the page
/// leaves the "full" state, or goes back to its segment when its last block is freed.
///
/// # Safety
/// The caller is `h`'s owner; `p` is a live block of `page`, a small page of `h`.
#[inline(always)]
unsafe fn push_free(h: *mut Heap, page: *mut Page, p: *mut u8) {
    link_free(page, p);
    if (*page).used == 0 || (*page).full {
        page_became_free_or_unfull(h, page);
    }
}

/// A free the fast path turned away: a huge or large block, a block of a full page, one of
/// another domain's page (freed through the wrong domain's function), or one of another heap.
///
/// # Safety
/// As for `free`; `page` is `page_of(p)`.
#[cold]
#[inline(never)]
unsafe extern "C" fn free_slow(h: *mut Heap, page: *mut Page, p: *mut u8) {
    let seg = segment_of(p);
    if (*seg).owner == h && (*page).kind == PageKind::Small {
        // A small page of ours: full (the commonest case here: it gets the block and rejoins its
        // queue at the back, see the module doc) or of the other GIL domain. Nothing on this
        // path can panic.
        count_local_free(h, page, (*page).domain as usize);
        push_free(h, page, p);
        return;
    }
    free_slower(h, seg, page, p);
}

/// # Safety
/// As for `free`; `seg` and `page` are `segment_of(p)` and `page_of(p)`, and `p` is not a block
/// of a small page of `h`.
#[cold]
#[inline(never)]
unsafe fn free_slower(h: *mut Heap, seg: *mut SegmentHeader, page: *mut Page, p: *mut u8) {
    crate::no_unwind((), || {
        if (*seg).kind == SegmentKind::Huge {
            count_large_free(h, (*seg).huge_domain as usize, (*seg).huge_size);
            take_huge_over(h, seg, (*seg).huge_heap, (*seg).huge_size);
            segment::release_segment(seg);
            return;
        }
        count_free(h, page);
        let owner = (*seg).owner;
        if owner == h {
            free_local_uncounted(h, page, p);
            return;
        }
        // Another heap's block: out of this heap's peak figure (`Counters::held`), as it will
        // leave the owner's when the owner collects it.
        (*h).counters.given_bytes[(*page).domain as usize].add((*page).block_size as u64);
        if (*page).kind == PageKind::Small {
            push_remote_small(owner, page, p);
        } else {
            push_remote(owner, p);
        }
    })
}

/// # Safety
/// The caller is `h`'s user; `page` is the live page (or span) of a block being freed.
#[inline]
unsafe fn count_free(h: *mut Heap, page: *mut Page) {
    if (*page).kind == PageKind::Small {
        // SAFETY: a small page's `counter` indexes the flattened `frees` array (`init_small_page`).
        (*h).counters.free_counter((*page).counter as usize).add(1);
    } else {
        count_large_free(h, (*page).domain as usize, (*page).block_size as usize);
    }
}

/// Free `p`, a block of `page`, a small page of heap `owner`, from `h`, another heap: counted on
/// `h`, pushed onto the page's remote-free list (`push_remote_small`).
///
/// # Safety
/// The caller is `h`'s owner; `owner != h`; `p` is a live block of `page`.
#[inline(always)]
pub unsafe fn free_to_other_heap(h: *mut Heap, owner: *mut Heap, page: *mut Page, p: *mut u8) {
    // (Not `used`: the owner writes it meanwhile.)
    debug_assert!(owner != h && (*page).kind == PageKind::Small);
    // SAFETY: `counter` indexes the flattened `frees` array (see `free_counted`); it is set
    // when the page is initialised and stays while the page has a live block, so reading it
    // while the owner changes the page's other fields is no race. It is read before the push:
    // after it, the owner may collect the block and release and reuse the page.
    (*h).counters.free_counter((*page).counter as usize).add(1);
    // For the peaks, as in `free_slower`.
    (*h).counters.given_bytes[(*page).domain as usize].add((*page).block_size as u64);
    push_remote_small(owner, page, p);
}

/// Push `p` onto `owner`'s remote-free stack. Any thread may call this.
///
/// # Safety
/// `p` is a live block of a page of `owner`, no longer used by the caller.
pub unsafe fn push_remote(owner: *mut Heap, p: *mut u8) {
    let remote = &(*owner).remote.0.blocks;
    let mut head = remote.load(Relaxed);
    loop {
        vg::write_link(p, head);
        match remote.compare_exchange_weak(head, p, Release, Relaxed) {
            Ok(_) => return,
            Err(now) => head = now,
        }
    }
}

/// Push `p`, a block of small page `page` of heap `owner`, onto the page's remote-free list
/// (`segment::RemoteSlot`), and the page onto `owner`'s stack if the list was empty. Any thread
/// may call this.
///
/// # Safety
/// `p` is a live block of `page`, a small page of `owner`, no longer used by the caller.
#[inline(never)]
pub unsafe fn push_remote_small(owner: *mut Heap, page: *mut Page, p: *mut u8) {
    if push_onto_page_list(page, p) {
        push_page_onto_stack(owner, page);
    }
}

/// The first half of `push_remote_small`: push `p` onto `page`'s remote-free list. True if the
/// list was empty, and then the caller owes the page's push onto its owner's stack: until that
/// push nobody collects the page (a fork in between strands it: see
/// `relink_remote_pages_after_fork`).
///
/// # Safety
/// As for `push_remote_small`.
#[inline(always)]
pub unsafe fn push_onto_page_list(page: *mut Page, p: *mut u8) -> bool {
    let slot = segment::remote_slot(page);
    let seg = p as usize & !(SEGMENT_SIZE - 1);
    let off = segment::remote_offset(p);
    let mut list = (*slot).list.load(Relaxed);
    loop {
        let (first, last, len) = RemoteSlot::unpack(list);
        let (link, last) = if len == 0 {
            (null_mut(), off)
        } else {
            (segment::remote_block(seg, first), last)
        };
        vg::write_link(p, link);
        let new = RemoteSlot::pack(off, last, len + 1);
        // Release: the link above is seen by the owner's swap. Acquire: when the list was empty,
        // the owner's last read of `next_page` (before its swap emptied the list) comes before
        // the caller's write of it in `push_page_onto_stack`.
        match (*slot)
            .list
            .compare_exchange_weak(list, new, AcqRel, Relaxed)
        {
            Ok(_) => return len == 0,
            Err(now) => list = now,
        }
    }
}

/// The second half of `push_remote_small`: push `page`, whose remote-free list this thread
/// just made non-empty, onto `owner`'s stack of pages with remote frees.
///
/// # Safety
/// `page` is a small page of `owner`, and `push_onto_page_list` returned true for it.
#[inline(always)]
unsafe fn push_page_onto_stack(owner: *mut Heap, page: *mut Page) {
    let slot = segment::remote_slot(page);
    let pages = &(*owner).remote.0.pages;
    let mut head = pages.load(Relaxed);
    loop {
        (*slot).next_page.store(head, Relaxed);
        match pages.compare_exchange_weak(head, page, Release, Relaxed) {
            Ok(_) => return,
            Err(now) => head = now,
        }
    }
}

/// Whether blocks others freed wait for `h` (on its remote stack or its pages' lists).
///
/// # Safety
/// `h` is a live heap.
#[inline(always)]
pub unsafe fn has_remote(h: *mut Heap) -> bool {
    !(*h).remote.0.blocks.load(Relaxed).is_null() || !(*h).remote.0.pages.load(Relaxed).is_null()
}

/// Free, without counting (it was counted by whoever called free), every block others freed
/// into `h`.
///
/// # Safety
/// The caller is `h`'s owner.
pub unsafe fn collect_remote(h: *mut Heap) {
    if !(*h).remote.0.pages.load(Relaxed).is_null() {
        collect_remote_pages(h);
    }
    if (*h).remote.0.blocks.load(Relaxed).is_null() {
        return;
    }
    let mut b = (*h).remote.0.blocks.swap(null_mut(), Acquire);
    let mut taken = 0;
    while !b.is_null() {
        let next = vg::read_link(b);
        let page = page_of(b);
        if (*page).kind == PageKind::Small {
            // SAFETY: a small page's `counter` indexes the flattened `collected` array, as it
            // does `frees` (`init_small_page`).
            (*h).counters
                .collected_counter((*page).counter as usize)
                .add(1);
            push_free(h, page, b);
        } else {
            // Others' frees of this heap's large blocks leave its peak figure here.
            (*h).counters.taken_large_bytes[(*page).domain as usize].add((*page).block_size as u64);
            release_pages(h, page);
        }
        taken += 1;
        b = next;
    }
    (*h).remote_collected += taken;
}

/// Splice every page's remote-free list (`segment::RemoteSlot`) onto its free list.
///
/// # Safety
/// The caller is `h`'s owner.
unsafe fn collect_remote_pages(h: *mut Heap) {
    let mut page = (*h).remote.0.pages.swap(null_mut(), Acquire);
    let mut taken = 0;
    while !page.is_null() {
        let slot = segment::remote_slot(page);
        // Read before the swap: once the list is empty, a freeing thread may push the page again.
        let next = (*slot).next_page.load(Relaxed);
        let list = (*slot).list.swap(0, AcqRel);
        let seg = page as usize & !(SEGMENT_SIZE - 1);
        let (first, last, len) = RemoteSlot::unpack(list);
        let len = len as u32;
        debug_assert!(len > 0 && len <= (*page).used);
        vg::write_link(segment::remote_block(seg, last), (*page).free);
        (*page).free = segment::remote_block(seg, first);
        (*page).used -= len;
        // SAFETY: a small page's `counter` indexes the flattened `collected` array.
        (*h).counters
            .collected_counter((*page).counter as usize)
            .add(len as u64);
        taken += len as u64;
        if (*page).used == 0 || (*page).full {
            page_became_free_or_unfull(h, page);
        }
        page = next;
    }
    (*h).remote_collected += taken;
}

/// In the child of a fork: rebuild `h`'s stack of pages with remote frees (`remote.pages`) from
/// the pages' own lists. A thread of the parent may have been between its push onto a page's
/// empty list and its push of the page onto the stack; in the child it never finishes, and
/// without this the page's waiting blocks would never be collected. O(segments of `h`).
///
/// # Safety
/// Only the calling thread exists, and `h` is not mid-change (not poisoned).
pub unsafe fn relink_remote_pages_after_fork(h: *mut Heap) {
    let mut stack: *mut Page = null_mut();
    let mut seg = (*h).all_segments;
    while !seg.is_null() {
        let mut i = 1; // page 0 holds the metadata; a large span's descriptor is its first page's
        while i < segment::PAGES_PER_SEGMENT {
            let page = segment::page_at(seg, i);
            match (*page).kind {
                PageKind::Small => {
                    let slot = segment::remote_slot(page);
                    if (*slot).list.load(Relaxed) != 0 {
                        (*slot).next_page.store(stack, Relaxed);
                        stack = page;
                    }
                    i += 1;
                }
                PageKind::Large => i += (*page).span as usize,
                PageKind::Free => i += 1,
            }
        }
        seg = (*seg).all.next;
    }
    (*h).remote.0.pages.store(stack, Relaxed);
}

/// # Safety
/// The caller is `h`'s owner; `p` is a live block of `page`, a page of `h`.
unsafe fn free_local_uncounted(h: *mut Heap, page: *mut Page, p: *mut u8) {
    if (*page).kind == PageKind::Small {
        push_free(h, page, p);
    } else {
        release_pages(h, page);
    }
}

/// # Safety
/// The caller is `h`'s owner; `page` is a small page of `h` that is full or has no live block.
#[cold]
#[inline(never)]
pub unsafe extern "C" fn page_became_free_or_unfull(h: *mut Heap, page: *mut Page) {
    if !(*page).full && sole_page(h, page) {
        return; // see `sole_page`
    }
    crate::no_unwind((), || {
        if (*page).full {
            rejoin_queue(h, page);
        }
        if (*page).used == 0 && !sole_page(h, page) {
            release_empty_page(h, page_queue(h, page), page);
        }
    })
}

/// Take `page`, a small page of `h` in queue `q` holding no live block, out of the queue and
/// give it back to its segment.
///
/// # Safety
/// The caller is `h`'s owner; `(*page).used == 0`, with no remote free pending on it.
unsafe fn release_empty_page(h: *mut Heap, q: PageQueue, page: *mut Page) {
    queue_remove(q, page);
    let (d, c) = ((*page).domain as usize, (*page).class as usize);
    (*h).counters.pages[d][c].sub(1);
    (*h).counters.carved[d][c].sub((*page).capacity as u64);
    release_pages(h, page);
}

/// Give a page (or a large span) back to its segment. An empty segment stays mapped: purge
/// passes decommit and unmap empty segments after the purge delay, so a program that frees and
/// reallocates a large structure in rounds does not map, fault in and unmap it every round
/// (mmap and munmap also serialise every thread of the process on the kernel's mmap lock).
///
/// # Safety
/// The caller is `h`'s owner; `page` starts a span of `h` holding no live block, out of every queue.
unsafe fn release_pages(h: *mut Heap, page: *mut Page) {
    let seg = segment_of(page as *const u8);
    // Read now: nothing on the free path keeps a clock (a stale one would age the pages).
    let empty = segment::return_pages(page, purge::now_ms());
    if !(*seg).in_list {
        segment_list_push(h, seg);
    }
    if empty {
        (*h).empty_segments += 1;
    }
}

/// Resize a block of ours, in place where it can, else by moving it (the new block is
/// allocated in `domain`). Null on failure, with `p` left intact.
///
/// # Safety
/// As for `free`.
pub unsafe fn realloc(h: *mut Heap, p: *mut u8, size: usize, domain: usize) -> *mut u8 {
    crate::no_unwind(null_mut(), || {
        (*h).counters.reallocs[domain].add(1);
        if size > isize::MAX as usize {
            return null_mut();
        }
        // A small block is told from its page descriptor alone (a huge block's pointer maps to a
        // zeroed descriptor, kind `Free`), so the common case reads no segment header (`seg` is
        // only an address until a branch reads it).
        let page = page_of(p);
        let seg = segment_of(p);
        let old_size;
        if (*page).kind == PageKind::Small {
            debug_assert!((*seg).kind != SegmentKind::Huge);
            old_size = (*page).block_size as usize;
            // Same block if the request still fits and would not fit a class half the size.
            if size <= old_size && size.max(8) * 2 >= old_size {
                vg::resized_in_place(p, old_size, size);
                return p;
            }
        } else if (*seg).kind == SegmentKind::Huge {
            old_size = (*seg).huge_size;
            if size > LARGE_MAX {
                let (d, from) = ((*seg).huge_domain as usize, (*seg).huge_heap);
                let record = vg::detach(p, old_size);
                let mut q = huge_resize(seg, size);
                // As `alloc_huge`: memory held for reuse may be what the OS refused us for.
                if q.is_null() && release_before_failing(h, size) {
                    q = huge_resize(seg, size);
                }
                vg::attach(record, q, size);
                if !q.is_null() {
                    count_large_resize(h, d, old_size, (*segment_of(q)).huge_size);
                    take_huge_over(h, segment_of(q), from, old_size);
                }
                return q;
            }
        } else {
            old_size = (*page).block_size as usize;
            if size > SMALL_MAX && size <= LARGE_MAX {
                let capacity = (*page).span as usize * PAGE_SIZE;
                // Against the span, not the block's last size: shrinks of less than half each
                // (a list shrinks to about 0.56x) would otherwise keep the whole span however
                // small the block became, out of reach of purge and `trim()`. In place the span
                // is at most twice the block.
                // Only by the span's owner: the block's counts (and so its place in the peaks)
                // are the owner's; another heap's realloc moves it.
                let fits = size <= capacity && size * 2 >= capacity && (*seg).owner == h;
                let grown = !fits && size > capacity && (*seg).owner == h && {
                    let extra = (size - capacity + PAGE_SIZE - 1) >> PAGE_SHIFT;
                    let purged = (*seg).purged_pages;
                    let ok = segment::extend_span(page, extra);
                    count_refaulted_pages(h, seg, purged & !(*seg).purged_pages);
                    // The heap's list holds only segments with free pages.
                    if ok && (*seg).free_pages == 0 && (*seg).in_list {
                        segment_list_remove(h, seg);
                    }
                    ok
                };
                if fits || grown {
                    let rounded = segment::huge_rounded(size);
                    let refaulted = segment::rest_resized(page, old_size, rounded, capacity);
                    count_page_refault(h, page, refaulted);
                    count_large_resize(h, (*page).domain as usize, old_size, rounded);
                    (*page).block_size = rounded as u32;
                    vg::resized_in_place(p, old_size, size);
                    return p;
                }
            }
        }
        let q = alloc(h, size, domain);
        if q.is_null() {
            return null_mut();
        }
        // The copy stops at the requested size (under memcheck the rest is unaddressable).
        ptr::copy_nonoverlapping(p, q, vg::requested_size(p, old_size).min(size));
        free(h, p);
        q
    })
}

/// Whether `p`, a pointer into our segments, is where a block (small, large or huge) starts
/// rather than a pointer inside one. A small block's start counts whether the block is live or
/// free (the free lists are not walked). Reads only our own metadata.
///
/// # Safety
/// `segment_map::owns(p)`.
pub unsafe fn is_block_start(p: *const u8) -> bool {
    let seg = segment_of(p);
    if (*seg).kind == SegmentKind::Huge {
        return p as usize == seg as usize + segment::HUGE_OFFSET;
    }
    let page = page_of(p);
    let off = p as usize - page_start(page) as usize;
    match (*page).kind {
        PageKind::Small => {
            let bs = (*page).block_size as usize;
            // `bs` is 0 only for a page being set up (a pointer no one holds yet): no start.
            bs != 0 && off % bs == 0 && off / bs < (*page).capacity as usize
        }
        PageKind::Large => off == 0,
        PageKind::Free => false,
    }
}

/// The domain a block of ours belongs to.
///
/// # Safety
/// `p` is a live block of ours.
pub unsafe fn block_domain(p: *mut u8) -> usize {
    let seg = segment_of(p);
    if (*seg).kind == SegmentKind::Huge {
        (*seg).huge_domain as usize
    } else {
        (*page_of(p)).domain as usize
    }
}

/// The usable size of a block of ours.
///
/// # Safety
/// `p` is a live block of ours.
pub unsafe fn usable_size(p: *mut u8) -> usize {
    let seg = segment_of(p);
    if (*seg).kind == SegmentKind::Huge {
        (*seg).huge_size
    } else {
        (*page_of(p)).block_size as usize
    }
}

/// # Safety
/// `page` is in no queue, and the caller owns the heap of both.
unsafe fn queue_push_front(q: PageQueue, page: *mut Page) {
    let first = first_page(q);
    (*page).prev = null_mut();
    (*page).next = first;
    if first.is_null() {
        *q.last = page;
    } else {
        (*first).prev = page;
    }
    *q.first = page;
}

/// # Safety
/// `page` is in no queue, and the caller owns the heap of both.
unsafe fn queue_push_back(q: PageQueue, page: *mut Page) {
    let last = *q.last;
    (*page).next = null_mut();
    (*page).prev = last;
    if last.is_null() {
        *q.first = page;
    } else {
        (*last).next = page;
    }
    *q.last = page;
}

/// # Safety
/// `page` is in queue `q`, and the caller owns the heap of both.
unsafe fn queue_remove(q: PageQueue, page: *mut Page) {
    let (prev, next) = ((*page).prev, (*page).next);
    if prev.is_null() {
        *q.first = if next.is_null() { empty_page() } else { next };
    } else {
        (*prev).next = next;
    }
    if next.is_null() {
        *q.last = prev;
    } else {
        (*next).prev = prev;
    }
    (*page).prev = null_mut();
    (*page).next = null_mut();
}

/// Push `seg` at the front of a list of segments: `*head` is its head, `links(seg)` a
/// segment's links in it (`with_free_links` or `all_links`).
///
/// # Safety
/// The caller owns the list; `seg` is not on it.
unsafe fn list_push(
    head: *mut *mut SegmentHeader,
    seg: *mut SegmentHeader,
    links: unsafe fn(*mut SegmentHeader) -> *mut SegmentLinks,
) {
    let first = *head;
    *links(seg) = SegmentLinks {
        next: first,
        prev: null_mut(),
    };
    if !first.is_null() {
        (*links(first)).prev = seg;
    }
    *head = seg;
}

/// Take `seg` off a list of segments (as for `list_push`).
///
/// # Safety
/// The caller owns the list; `seg` is on it.
unsafe fn list_remove(
    head: *mut *mut SegmentHeader,
    seg: *mut SegmentHeader,
    links: unsafe fn(*mut SegmentHeader) -> *mut SegmentLinks,
) {
    let SegmentLinks { next, prev } = *links(seg);
    if prev.is_null() {
        *head = next;
    } else {
        (*links(prev)).next = next;
    }
    if !next.is_null() {
        (*links(next)).prev = prev;
    }
    *links(seg) = SegmentLinks::NONE;
}

/// # Safety
/// `seg` is a live segment header.
unsafe fn with_free_links(seg: *mut SegmentHeader) -> *mut SegmentLinks {
    &raw mut (*seg).with_free
}

/// # Safety
/// `seg` is a live segment header.
unsafe fn all_links(seg: *mut SegmentHeader) -> *mut SegmentLinks {
    &raw mut (*seg).all
}

/// # Safety
/// The caller is `h`'s owner; `seg` is a segment of `h` not on its list.
unsafe fn segment_list_push(h: *mut Heap, seg: *mut SegmentHeader) {
    list_push(&raw mut (*h).segments, seg, with_free_links);
    (*seg).in_list = true;
}

/// # Safety
/// The caller is `h`'s owner; `seg` is on `h`'s list.
unsafe fn segment_list_remove(h: *mut Heap, seg: *mut SegmentHeader) {
    list_remove(&raw mut (*h).segments, seg, with_free_links);
    (*seg).in_list = false;
}

/// # Safety
/// The caller is `h`'s owner; `seg` is a new segment of `h`.
unsafe fn all_segments_push(h: *mut Heap, seg: *mut SegmentHeader) {
    list_push(&raw mut (*h).all_segments, seg, all_links);
}

/// # Safety
/// The caller is `h`'s owner; `seg` is a segment of `h` about to be released.
unsafe fn all_segments_remove(h: *mut Heap, seg: *mut SegmentHeader) {
    list_remove(&raw mut (*h).all_segments, seg, all_links);
}

/// Run an automatic purge pass if the delay has passed, or a `trim()` asked for one.
/// # Safety
/// The caller is `h`'s owner.
#[inline]
unsafe fn maybe_purge(h: *mut Heap) {
    use core::sync::atomic::Ordering::Relaxed;
    let epoch = purge::TRIM_EPOCH.load(Relaxed);
    if epoch != (*h).trim_epoch_seen {
        // A `trim()` since this heap last looked gives back everything; a refused allocation's
        // call for memory leaves each queue its page (see `Mode::Release`).
        let program_asked = purge::USER_TRIM_EPOCH.load(Relaxed) > (*h).trim_epoch_seen;
        (*h).trim_epoch_seen = epoch;
        purge(
            h,
            if program_asked {
                Mode::Trim
            } else {
                Mode::Release
            },
        );
        return;
    }
    if (*h).purge_countdown > 0 {
        (*h).purge_countdown -= 1;
        return;
    }
    (*h).purge_countdown = PURGE_CHECK_EVERY;
    if !purge::ENABLED.load(Relaxed) {
        return;
    }
    let now = purge::now_ms();
    if now >= (*h).next_purge_ms {
        auto_pass(h, now);
    }
}

/// The automatic pass that is due at `now` (from a slow path, or the idle purger): judge the
/// delay (`purge::adapt_delay`), run the pass (none at a heap's first look, which only sets the
/// clock going), and schedule the next.
///
/// # Safety
/// The caller is `h`'s owner.
unsafe fn auto_pass(h: *mut Heap, now: u64) {
    let base = purge::PURGE_DELAY_MS.load(core::sync::atomic::Ordering::Relaxed);
    let (purged, refaulted) = ((*h).recent_purged, (*h).recent_refaulted);
    let (delay, decided) = purge::adapt_delay((*h).purge_delay_ms, base, purged, refaulted);
    (*h).purge_delay_ms = delay;
    ((*h).recent_purged, (*h).recent_refaulted) = if decided {
        (0, 0)
    } else {
        (purged / 2, refaulted / 2)
    };
    if (*h).next_purge_ms != 0 {
        purge(h, Mode::Auto);
    }
    (*h).next_purge_ms = now + (*h).purge_delay_ms;
}

/// The idle purger's look at heap `h` at `now` (see `purge`'s module doc, "When idle"): the
/// automatic pass a slow path would run if one came, run if it is due and the heap may still hold
/// memory to give back — it freed something (or others freed into it) after its last pass came
/// a delay after. A program that drops a structure and then waits (a service between requests)
/// takes no slow path, so without this its free memory would stay until its next allocation
/// burst. Returns the milliseconds until the heap wants another look, or `None` while it has
/// nothing more to give back (a new free changes that).
///
/// # Safety
/// The caller is `h`'s owner.
pub unsafe fn idle_look(h: *mut Heap, now: u64) -> Option<u64> {
    use core::sync::atomic::Ordering::Relaxed;
    // Whether the heap freed anything (or got its blocks back from others) since the last look.
    let moved = |h: *mut Heap| {
        let seen = (*h)
            .counters
            .free_activity()
            .wrapping_add((*h).remote_collected);
        let moved = seen != (*h).idle_frees_seen || has_remote(h);
        (*h).idle_frees_seen = seen;
        moved
    };
    if moved(h) {
        (*h).idle_active_ms = now;
    }
    // Settled: everything freed until the last activity a look saw was old enough for the last
    // pass to give back (what a pass keeps on purpose aside: `retain_bytes`, a few empty
    // segments, the page each queue allocates from). Strictly after: the clock is coarse (a
    // few ms), and a free in the same tick as a trim's pass came after it.
    let settled =
        |h: *mut Heap| (*h).idle_active_ms == 0 || (*h).purged_before_ms > (*h).idle_active_ms;
    if !purge::ENABLED.load(Relaxed) || settled(h) {
        return None;
    }
    if now >= (*h).next_purge_ms {
        auto_pass(h, now);
        // The pass collected the remote frees: blocks pushed since the look above are new.
        if moved(h) {
            (*h).idle_active_ms = now;
        }
        if settled(h) {
            return None;
        }
    }
    Some((*h).next_purge_ms.saturating_sub(now).max(1))
}

/// Whether memory given back at `purged_ms` and taken again at `now` was taken soon enough to
/// count against the delay: within the longest delay, which would have kept it.
fn refault_window(now: u64, purged_ms: u64) -> bool {
    purged_ms != 0 && now.saturating_sub(purged_ms) <= purge::longest_delay()
}

/// Count `bytes` of memory given back at `purged_ms` (0: by a trim) that `h` takes into use
/// again at `now` (see `purge::adapt_delay`); the statistic counts them all.
///
/// # Safety
/// The caller is `h`'s owner.
unsafe fn count_refault(h: *mut Heap, bytes: usize, purged_ms: u64, now: u64) {
    purge::REFAULTED_BYTES.fetch_add(bytes as u64, core::sync::atomic::Ordering::Relaxed);
    if refault_window(now, purged_ms) {
        (*h).recent_refaulted += bytes as u64;
    }
}

/// `count_refault` for `taken`, pages of `seg` (bit i: page i) just taken out of `purged_pages`.
///
/// # Safety
/// The caller is `h`'s owner; `seg` is a live `Pages` segment.
unsafe fn count_refaulted_pages(h: *mut Heap, seg: *mut SegmentHeader, mut taken: u64) {
    if taken == 0 {
        return;
    }
    let (t, now) = (segment::touch_times(seg), purge::now_ms());
    while taken != 0 {
        let i = taken.trailing_zeros() as usize;
        taken &= taken - 1;
        count_refault(h, PAGE_SIZE, (*t).page[i], now);
    }
}

/// A purge pass over heap `h` (see `purge`): returns the bytes given back to the OS.
///
/// # Safety
/// The caller is `h`'s owner.
pub unsafe fn purge(h: *mut Heap, mode: Mode) -> usize {
    use core::sync::atomic::Ordering::Relaxed;
    collect_remote(h);
    let ps = crate::os::page_size();
    let mut bytes = 0;
    // An automatic pass gives back empty pages only once they have been left alone for the
    // purge delay (see `segment::TouchTimes`).
    let now = purge::now_ms();
    let age = match mode {
        Mode::Auto => purge::delay_in_force((*h).purge_delay_ms),
        Mode::Trim | Mode::Release => 0,
    };
    // What an automatic pass gives back is stamped with its time: taken again soon, that is a
    // refault. A trim's is stamped "long ago": taking it again was asked for.
    let stamp = match mode {
        Mode::Auto => now,
        Mode::Trim | Mode::Release => 0,
    };
    // Free OS pages inside partly used pages.
    for i in 0..DOMAINS * QUEUE_STRIDE {
        let q = queue_at(h, i);
        let mut page = first_page(q);
        // The empty page a queue keeps (see `sole_page`) goes back on a trim, so that a heap with
        // nothing live keeps no segment. (`collect_remote` above ran: `used == 0` means no free
        // is pending on it.) An automatic pass leaves it: the class was in use lately; so does
        // the pass before a failing allocation (see `Mode::Release`).
        if mode == Mode::Trim && !page.is_null() && (*page).used == 0 && sole_page(h, page) {
            release_empty_page(h, q, page);
            continue;
        }
        if mode == Mode::Auto && !page.is_null() {
            page = (*page).next; // the page being allocated from keeps its blocks
        }
        while !page.is_null() {
            let per_os_page = (ps / (*page).block_size as usize).max(1) as u32;
            let at_purge = ((*page).free_at_purge & !segment::REST_PURGED) as u32;
            let fresh = free_blocks(page).saturating_sub(at_purge);
            if mode != Mode::Auto || fresh >= per_os_page {
                bytes += purge_page(page, stamp);
            }
            page = (*page).next;
        }
    }
    // Memory past the blocks of small pages and large spans taken from memory used before (a
    // small page's uncarved rest and tail, a span's tail; `segment::purge_rest`), full pages'
    // too. An automatic pass leaves the page each queue allocates from (its next blocks are
    // carved from its rest), and gives back a rest only when the pass before found it too, a
    // purge delay or more ago: a block that lives across one pass does not pay an madvise and
    // the faults after it.
    let mut seg = (*h).all_segments;
    while !seg.is_null() {
        let mut pages = (*seg).rest_dirty;
        while pages != 0 {
            let i = pages.trailing_zeros() as usize;
            pages &= pages - 1;
            let page = segment::page_at(seg, i);
            if mode == Mode::Auto {
                let (d, c) = ((*page).domain as usize, (*page).class as usize);
                if (*page).kind == PageKind::Small && *queue(h, d, c).first == page {
                    continue;
                }
                if (*seg).rest_seen & (1 << i) == 0 {
                    (*seg).rest_seen |= 1 << i;
                    continue;
                }
            }
            bytes += segment::purge_rest(page, stamp);
        }
        seg = (*seg).all.next;
    }
    // Empty pages, beyond what an automatic pass retains; empty segments beyond a few (all, on a
    // trim) are unmapped.
    let mut keep = if mode == Mode::Auto {
        purge::RETAIN_BYTES.load(Relaxed) as usize
    } else {
        0
    };
    let mut empty_kept = if mode == Mode::Auto {
        EMPTY_SEGMENTS_KEPT
    } else {
        0
    };
    let mut seg = (*h).segments;
    while !seg.is_null() {
        let next = (*seg).with_free.next;
        let left_alone = now.saturating_sub((*segment::touch_times(seg)).latest) >= age;
        let unmap = (*seg).used_pages == 0 && left_alone && {
            let over = empty_kept == 0;
            empty_kept = empty_kept.saturating_sub(1);
            over
        };
        if unmap {
            segment_list_remove(h, seg);
            all_segments_remove(h, seg);
            (*h).empty_segments -= 1;
            // What leaves RAM: the dirty pages and the metadata page.
            let resident = ((*seg).dirty_pages.count_ones() as usize + 1) * PAGE_SIZE;
            bytes += resident;
            if mode == Mode::Auto {
                (*h).unmapped_bytes += resident as u64;
                (*h).unmapped_ms = now;
            }
            segment::release_segment(seg);
        } else {
            let free = (*seg).dirty_pages & (*seg).free_pages;
            let eligible = if left_alone {
                free
            } else {
                segment::left_alone(seg, free, now, age)
            };
            bytes += segment::purge_free_pages(seg, &mut keep, eligible, stamp);
        }
        seg = next;
    }
    purge::PURGED_BYTES.fetch_add(bytes as u64, Relaxed);
    if mode == Mode::Auto {
        (*h).recent_purged += bytes as u64;
    }
    (*h).purged_before_ms = now.saturating_sub(age);
    bytes
}

/// Walk every structure of `h` and check its invariants; panics with a description on the first
/// violation. For tests (and, later, a debug feature): it is O(heap).
///
/// # Safety
/// The caller is `h`'s owner and no other thread frees into it meanwhile.
pub unsafe fn check_invariants(h: *mut Heap) {
    let mut empty = 0;
    let seen = check_list((*h).segments, with_free_links, "segment list", |seg| {
        assert!((*seg).in_list && (*seg).owner == h && (*seg).free_pages != 0);
        assert_eq!(
            (*seg).used_pages as usize + (*seg).free_pages.count_ones() as usize,
            segment::PAGES_PER_SEGMENT - 1
        );
        assert_eq!(
            (*seg).purged_pages & !((*seg).free_pages & !(*seg).dirty_pages),
            0,
            "a purged page is free and not dirty"
        );
        if (*seg).used_pages == 0 {
            empty += 1;
        }
    });
    assert_eq!(empty, (*h).empty_segments);
    for i in 0..DOMAINS * QUEUE_STRIDE {
        let q = queue_at(h, i);
        let (domain, class) = (i / QUEUE_STRIDE, i % QUEUE_STRIDE);
        assert!(
            !(*q.first).is_null(),
            "a queue's first is never null (see PageQueue)"
        );
        let mut page = first_page(q);
        let mut prev = null_mut();
        while !page.is_null() {
            assert_eq!((*page).prev, prev);
            assert!((*page).kind == PageKind::Small && !(*page).full);
            assert_eq!(
                (*page).local.load(Relaxed),
                local_tag(h, domain),
                "a queued page's fast-path owner"
            );
            assert_eq!(
                ((*page).domain as usize, (*page).class as usize),
                (domain, class)
            );
            let bs = (*page).block_size as usize;
            let mut n = 0u32;
            let mut b = (*page).free;
            while !b.is_null() {
                let off = b as usize - page_start(page) as usize;
                assert!(
                    off % bs == 0 && off / bs < (*page).capacity as usize,
                    "stray free block"
                );
                n += 1;
                assert!(n <= (*page).capacity, "free list cycle");
                b = vg::read_link(b);
            }
            assert_eq!(
                (*page).used + n + (*page).purged_blocks as u32,
                (*page).capacity,
                "used + free + purged != capacity"
            );
            prev = page;
            page = (*page).next;
        }
        assert_eq!(*q.last, prev);
    }
    // Every segment is on the list of all segments, and the frees derived from the pages add
    // up to the bytes the fast paths counted.
    let mut listed = 0;
    check_list((*h).all_segments, all_links, "all-segments list", |seg| {
        assert!((*seg).owner == h && (*seg).kind == SegmentKind::Pages);
        listed += (*seg).in_list as usize;
        let (dirty, purged) = ((*seg).rest_dirty, (*seg).rest_purged);
        assert_eq!(dirty & purged, 0, "a span's rest both dirty and purged");
        assert_eq!(
            (*seg).rest_seen & !dirty,
            0,
            "a rest seen that is not dirty"
        );
        for i in 1..segment::PAGES_PER_SEGMENT {
            let page = segment::page_at(seg, i);
            let kind = (*page).kind;
            if dirty & (1 << i) != 0 {
                assert!(
                    kind == PageKind::Small || kind == PageKind::Large && (*page).span != 0,
                    "a rest bit on a page that starts no small page or span"
                );
            }
            if purged & (1 << i) != 0 {
                assert!(
                    kind == PageKind::Large && (*page).span != 0,
                    "a span's rest bit on a page that starts no span"
                );
            }
            if kind == PageKind::Small && (*page).free_at_purge & segment::REST_PURGED != 0 {
                assert!(
                    dirty & (1 << i) == 0 && (*page).capacity < (*page).reserved,
                    "a small page's rest purged while dirty, or all carved"
                );
            }
        }
    });
    assert_eq!(
        listed, seen,
        "a segment with free pages is missing from the all-segments list"
    );
    let local = local_frees(h);
    for d in 0..DOMAINS {
        let bytes = (0..NUM_CLASSES).fold(0u64, |sum, c| {
            sum.wrapping_add(local[d][c].wrapping_mul(crate::size_class::BLOCK_SIZES[c] as u64))
        });
        assert_eq!(
            bytes,
            (*h).counters.local_bytes[d].get(),
            "domain {d}: local frees derived from the pages do not add up to the bytes counted"
        );
    }
}

/// Walk a list of segments (as for `list_push`), checking its back links and that it ends,
/// and call `each` on every segment; returns how many there are.
///
/// # Safety
/// The caller owns the list.
unsafe fn check_list(
    head: *mut SegmentHeader,
    links: unsafe fn(*mut SegmentHeader) -> *mut SegmentLinks,
    name: &str,
    mut each: impl FnMut(*mut SegmentHeader),
) -> usize {
    let (mut seg, mut prev, mut count) = (head, null_mut(), 0usize);
    while !seg.is_null() {
        assert_eq!((*links(seg)).prev, prev, "{name}: broken prev link");
        count += 1;
        assert!(count <= 1 << 22, "{name}: cycle");
        each(seg);
        prev = seg;
        seg = (*links(seg)).next;
    }
    count
}

/// This heap's frees of its own MEM/OBJ blocks into its pages, per (domain, class): the fast
/// path counts only their bytes (`Counters::local_bytes`), so the classes are derived here
/// from what the pages hold. Every block `h` handed out from a page of (d, c) is still
/// counted in a page's `used` (which keeps blocks others freed until they are collected), or
/// came back: collected as remote frees (`collected`) or freed by `h` itself. Pages go back to
/// their segment only with `used == 0`, so `allocs - collected - Σ used` is exact at any time
/// the owner is not mid-call. O(segments of `h`); the RAW entries are 0 (counted as freed).
///
/// # Safety
/// The caller is `h`'s owner (it reads `used`, which only the owner writes).
pub unsafe fn local_frees(h: *mut Heap) -> [[u64; NUM_CLASSES]; DOMAINS] {
    let mut used = [[0u64; NUM_CLASSES]; DOMAINS];
    let mut seg = (*h).all_segments;
    while !seg.is_null() {
        // Page 0 holds the metadata; a large span's descriptor is its first page's.
        let mut i = 1;
        while i < segment::PAGES_PER_SEGMENT {
            let page = segment::page_at(seg, i);
            match (*page).kind {
                PageKind::Small => {
                    used[(*page).domain as usize][(*page).class as usize] += (*page).used as u64;
                    i += 1;
                }
                PageKind::Large => i += (*page).span as usize,
                PageKind::Free => i += 1,
            }
        }
        seg = (*seg).all.next;
    }
    let c = &(*h).counters;
    let mut local = [[0u64; NUM_CLASSES]; DOMAINS];
    for d in 0..DOMAINS {
        if d == crate::RAW {
            continue;
        }
        for k in 0..NUM_CLASSES {
            local[d][k] = c.allocs[d][k]
                .get()
                .wrapping_sub(c.collected[d][k].get())
                .wrapping_sub(used[d][k]);
        }
    }
    local
}
