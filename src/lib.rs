//! rustmalloc: a size-class pool allocator for CPython's RAW, MEM and OBJ domains.
//!
//! Layers, from Python down to the OS (each a module; only `python` knows about Python):
//! ```text
//!   PyMem_RawMalloc / PyMem_Malloc / PyObject_Malloc ...
//!        |  python.rs: the extern "C" hooks, install(), stats bindings; forwards every pointer
//!        |             we do not own to the allocator installed before us
//!   lib.rs (this file): the domain API: which heap serves a call
//!        |
//!   raw_heap.rs: one heap per thread (RAW)      GIL heap (MEM + OBJ, under the GIL)
//!        |
//!   heap.rs: page queues per (domain, class), remote-free stack, counters (stats.rs)
//!        |
//!   segment.rs: 4 MiB aligned segments of 64 KiB pages; large spans; huge mappings
//!        |         segment_map.rs: which segments are ours (the O(1) ownership test)
//!   os.rs: mmap / munmap / mremap / madvise
//! ```
//! Sizes: `size_class.rs` (16-byte steps to 512, 16 classes per doubling to 8 KiB, then 4 to
//! 32 KiB); large blocks (to 2 MiB) are spans of pages; huge ones get their own mapping.
//! `valgrind.rs`: the memcheck client requests of the `valgrind` feature (nothing without it).
//!
//! Invariants that everything relies on:
//! - every block lies in a segment registered in the ownership map, at an address 16-aligned;
//! - a page belongs to one heap and one domain; only its heap's owner changes it;
//! - no path here allocates through Rust's global allocator, takes a lock other than the RAW
//!   fallback heap's spin lock, or calls into Python.

pub mod check;
pub mod heap;
pub mod os;
pub mod purge;
pub mod raw_heap;
pub mod segment;
pub mod segment_map;
pub mod size_class;
pub mod stats;
pub mod valgrind;

#[cfg(feature = "python")]
mod bench;
#[cfg(feature = "python")]
mod python;
#[cfg(feature = "python")]
mod stress;

use core::cell::UnsafeCell;
use core::ptr::null_mut;
use heap::Heap;

/// Run `f`, turning a panic into `fallback`. The allocator's slow paths run under this, so no
/// panic (a bug) can unwind into CPython through a hook; the fast paths contain no operation
/// that can panic (no checked arithmetic, no bounds check), so they pay nothing for it.
#[inline(always)]
pub(crate) fn no_unwind<R>(fallback: R, f: impl FnOnce() -> R) -> R {
    std::panic::catch_unwind(core::panic::AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// Domain indices (CPython's `PYMEM_DOMAIN_RAW`, `_MEM`, `_OBJ` have the same values).
pub const RAW: usize = 0;
pub const MEM: usize = 1;
pub const OBJ: usize = 2;
pub const DOMAIN_NAMES: [&str; 3] = ["raw", "mem", "obj"];

/// The heap of the MEM and OBJ domains, used only by the thread holding the GIL.
struct GilHeap(UnsafeCell<Heap>);
// SAFETY: only the GIL holder touches it, except `remote` and the counters, which are atomics.
unsafe impl Sync for GilHeap {}
static GIL_HEAP: GilHeap = GilHeap(UnsafeCell::new(Heap::new()));

#[inline(always)]
fn gil_heap() -> *mut Heap {
    GIL_HEAP.0.get()
}

/// Whether `p` is a block of ours (any domain). O(1); never reads the memory at `p`.
#[inline(always)]
pub fn owns(p: *const u8) -> bool {
    segment_map::owns(p)
}

/// `owns(p)`, and `p` is where one of our blocks starts. The hooks use it instead of `owns` when
/// the allocator before us is CPython's debug hooks: those serve MEM/OBJ from pymalloc, which
/// takes requests over 512 bytes from `PyMem_RawMalloc` — ours once RAW is installed — and hand
/// out that block plus their 16-byte header. Such a pointer lies in our segments but is theirs.
/// O(1); a division on the way, so only then.
// Safe for any pointer value: only our own metadata is read, and only once `owns(p)` holds.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub fn owns_block_start(p: *const u8) -> bool {
    // SAFETY: `owns(p)` holds, so the metadata read is ours.
    owns(p) && unsafe { heap::is_block_start(p) }
}

/// The usable size of a block of ours.
///
/// # Safety
/// `owns(p)` and `p` is live.
pub unsafe fn usable_size(p: *mut u8) -> usize {
    heap::usable_size(p)
}

/// MEM/OBJ allocation (`domain` is `MEM` or `OBJ`).
///
/// # Safety
/// The caller holds the GIL (or is otherwise the only thread in MEM/OBJ).
#[inline(always)]
pub unsafe fn gil_malloc(domain: usize, size: usize) -> *mut u8 {
    heap::alloc(gil_heap(), size, domain)
}

/// # Safety
/// As for `gil_malloc`.
pub unsafe fn gil_calloc(domain: usize, n: usize, size: usize) -> *mut u8 {
    heap::alloc_zeroed(gil_heap(), n, size, domain)
}

/// # Safety
/// As for `gil_malloc`, and `p` is a live block of ours.
pub unsafe fn gil_realloc(domain: usize, p: *mut u8, size: usize) -> *mut u8 {
    heap::realloc(gil_heap(), p, size, domain)
}

/// Free a block of ours through MEM or OBJ (`domain`, the function called; the block may be of
/// any domain): whichever heap owns it gets it back.
///
/// # Safety
/// As for `gil_malloc`, and `p` is a live block of ours.
#[inline(always)]
pub unsafe fn gil_free(domain: usize, p: *mut u8) {
    heap::free_in(gil_heap(), p, domain)
}

/// RAW allocation, from any thread.
#[inline(always)]
pub fn raw_malloc(size: usize) -> *mut u8 {
    let p = raw_heap::alloc_fast(size);
    if !p.is_null() {
        return p;
    }
    raw_malloc_slow(size)
}

/// `raw_malloc` past its fast path (`raw_heap::alloc_fast`), as a tail call of its own, so the
/// fast path keeps no register across a call (2 instructions per RAW malloc, under callgrind).
/// `heap::alloc` tries the first page once more before its slow path: a few instructions, once
/// per page used up, where the heap was cached; the uncached path needs the whole of it anyway.
#[inline(never)]
extern "C" fn raw_malloc_slow(size: usize) -> *mut u8 {
    // SAFETY: `with_heap` hands us a heap this thread owns for the duration of the call.
    raw_heap::with_heap_or(null_mut(), move |h| unsafe { heap::alloc(h, size, RAW) })
}

pub fn raw_calloc(n: usize, size: usize) -> *mut u8 {
    // SAFETY: as in `raw_malloc`.
    raw_heap::with_heap_or(null_mut(), move |h| unsafe {
        heap::alloc_zeroed(h, n, size, RAW)
    })
}

/// # Safety
/// `p` is a live block of ours.
pub unsafe fn raw_realloc(p: *mut u8, size: usize) -> *mut u8 {
    raw_heap::with_heap_or(null_mut(), move |h| heap::realloc(h, p, size, RAW))
}

/// Free a block of ours through RAW, from any thread, with or without the GIL. A block of the
/// GIL heap goes onto its page's remote-free list: this thread may not hold the GIL.
///
/// # Safety
/// `p` is a live block of ours.
#[inline(always)]
pub unsafe fn raw_free(p: *mut u8) {
    if !raw_heap::free_own(p) {
        raw_free_other(p);
    }
}

/// `raw_free` of a block that is not on a not-full page of the caller's own heap: first the
/// cross-thread test (`raw_heap::free_remote`), then the general path. Kept free of calls but
/// the general path's tail call, so it saves no registers: 34 instructions per cross-thread
/// free under callgrind, 42 with the general path inlined here.
///
/// # Safety
/// As for `raw_free`.
#[inline(never)]
unsafe extern "C" fn raw_free_other(p: *mut u8) {
    // SAFETY (both calls): `p` is a live block of ours (this function's contract), and
    // `free_remote` frees it only when it returns true.
    if raw_heap::free_remote(p) {
        return;
    }
    raw_free_general(p)
}

/// # Safety
/// As for `raw_free`.
#[inline(never)]
unsafe extern "C" fn raw_free_general(p: *mut u8) {
    let freed = raw_heap::with_heap_or(false, move |h| {
        heap::free(h, p);
        true
    });
    if !freed {
        // No heap could be had (out of memory): still never lose the block.
        valgrind::free_like(p);
        let owner = (*segment::segment_of(p)).owner;
        if owner.is_null() {
            segment::release_segment(segment::segment_of(p));
        } else {
            heap::push_remote(owner, p);
        }
    }
}

/// Every heap's counters, summed.
///
/// # Safety
/// The caller holds the GIL (or, in tests, is the only user of the GIL heap): the GIL heap's
/// frees per class are derived from its pages (`heap::local_frees`).
pub unsafe fn summary() -> stats::Summary {
    let mut sum = stats::Summary::new();
    // The counters are atomics: reading them needs no ownership.
    sum.add(&(*gil_heap()).counters);
    sum.add_local_frees(&heap::local_frees(gil_heap()));
    raw_heap::add_counters(&mut sum);
    sum
}

/// Per-domain totals, summed over every heap.
///
/// # Safety
/// As for `summary`.
pub unsafe fn domain_totals() -> [stats::DomainTotals; 3] {
    let sum = summary();
    [sum.domain(RAW), sum.domain(MEM), sum.domain(OBJ)]
}

/// Give back to the OS everything that can be now: free OS pages inside partly used pages,
/// empty pages and segments, of the GIL heap, the caller's RAW heap and abandoned RAW heaps;
/// other threads' RAW heaps purge on their next slow path. Returns the bytes given back.
///
/// # Safety
/// The caller holds the GIL.
pub unsafe fn trim() -> usize {
    let h = gil_heap();
    (*h).trim_epoch_seen = purge::TRIM_EPOCH.load(core::sync::atomic::Ordering::Relaxed) + 1;
    let bytes = raw_heap::trim();
    bytes + heap::purge(h, purge::Mode::Trim)
}

/// The idle purger's tick (see `purge`'s module doc, "When idle"): a look at the MEM/OBJ heap
/// and at the abandoned RAW heaps, each running the automatic pass a slow path would run now if
/// it is due and the heap may still hold memory to give back. Returns the milliseconds until one
/// of them wants another look, or `None` while none has anything more to give back.
///
/// # Safety
/// The caller holds the GIL.
pub unsafe fn idle_tick() -> Option<u64> {
    let gil = heap::idle_look(gil_heap(), purge::now_ms());
    purge::sooner(gil, raw_heap::idle_look_abandoned())
}

/// After the OS refused a mapping to heap `h`: give back what other heaps hold that this thread
/// may touch. From the GIL heap (the GIL is held) that is the calling thread's RAW heap and the
/// abandoned ones (`raw_heap::trim`, which also asks live heaps to purge soon); from a RAW heap,
/// the abandoned ones only (its own is being used, and the GIL heap needs the GIL). Returns the
/// bytes given back.
///
/// # Safety
/// `h` is the caller's heap, as for `heap::alloc`.
pub(crate) unsafe fn release_elsewhere(h: *mut Heap) -> usize {
    if h == gil_heap() {
        raw_heap::trim_as(purge::Mode::Release)
    } else {
        raw_heap::trim_abandoned(false, false)
    }
}

/// Restart the per-domain peaks (what `stats()` reports) from the current figures.
pub fn reset_peak() {
    // SAFETY: as in `summary`.
    unsafe { (*gil_heap()).counters.reset_peak() };
    raw_heap::for_each_counters(|c| c.reset_peak());
}

/// Restart the all-domains peak (what `track()` follows) from the current figures, leaving the
/// per-domain peaks alone.
pub fn reset_peak_all() {
    // SAFETY: as in `summary`.
    unsafe { (*gil_heap()).counters.reset_peak_all() };
    raw_heap::for_each_counters(|c| c.reset_peak_all());
}

/// What we hold from the OS.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsTotals {
    /// Bytes mapped now (segments, huge blocks, metadata), and ever given back.
    pub bytes_mapped: usize,
    pub bytes_returned: usize,
    /// Bytes of our segments resident in physical memory now (measured with mincore).
    pub bytes_resident: usize,
    pub segments: usize,
    pub segments_peak: usize,
    /// Bytes given back by purges and later taken into use again (faulted in again).
    pub bytes_refaulted: usize,
}

pub fn os_totals() -> OsTotals {
    let (bytes_mapped, bytes_returned) = os::mapping_totals();
    let (segments, segments_peak) = segment::segment_counts();
    let mut bytes_resident = 0;
    segment_map::for_each(|base, _| {
        bytes_resident += os::resident_bytes(base, segment::SEGMENT_SIZE).unwrap_or(0);
    });
    OsTotals {
        bytes_mapped,
        bytes_returned,
        bytes_resident,
        segments,
        segments_peak,
        bytes_refaulted: purge::REFAULTED_BYTES.load(core::sync::atomic::Ordering::Relaxed)
            as usize,
    }
}

/// The automatic purge delay in force for the MEM/OBJ heap now, in ms (see
/// `purge::adapt_delay`).
///
/// # Safety
/// The caller holds the GIL.
pub unsafe fn gil_purge_delay_ms() -> u64 {
    purge::delay_in_force((*gil_heap()).purge_delay_ms)
}

/// Count a free or realloc handed to the previous allocator (called by the hooks).
///
/// # Safety
/// For MEM/OBJ the caller holds the GIL.
pub unsafe fn count_foreign(domain: usize, realloc: bool) {
    let f = |h: *mut Heap| {
        let c = &(*h).counters;
        if realloc {
            c.foreign_reallocs[domain].add(1)
        } else {
            c.foreign_frees[domain].add(1)
        }
    };
    if domain == RAW {
        raw_heap::with_heap(f);
    } else {
        f(gil_heap());
    }
}

/// Check the GIL heap's invariants (tests).
///
/// # Safety
/// The caller holds the GIL (or, in tests, is the only user of the GIL heap).
pub unsafe fn check_gil_heap() {
    heap::collect_remote(gil_heap());
    heap::check_invariants(gil_heap());
}

/// In the child of a fork, with the GIL held: rebuild the GIL heap's stack of pages with remote
/// frees from the pages' lists, as `raw_heap`'s fork handler does for the RAW heaps. A thread of
/// the parent freeing a GIL-heap block through `PyMem_RawFree` may have stopped between its two
/// pushes (`heap::push_remote_small`); without this, the page's waiting blocks, and every block
/// later freed onto that list, would never be collected in the child.
///
/// # Safety
/// The caller holds the GIL and is the only thread (the child of a fork, before it starts any).
pub unsafe fn gil_heap_after_fork_in_child() {
    heap::relink_remote_pages_after_fork(gil_heap());
}

/// For tests of `gil_heap_after_fork_in_child`: allocate a `domain` block of `size` bytes from
/// the GIL heap and free it as another thread's `PyMem_RawFree` would (counted, onto its page's
/// remote-free list), but stop where a thread stopped by `fork()` would: with the page not
/// pushed onto the heap's stack, so no collection finds it until a relink. Null if `size` is
/// not a small request, or no memory.
///
/// # Safety
/// The caller holds the GIL.
pub unsafe fn strand_remote_free(domain: usize, size: usize) -> *mut u8 {
    let h = gil_heap();
    if size > size_class::SMALL_MAX {
        return null_mut();
    }
    let p = heap::alloc(h, size, domain);
    if p.is_null() {
        return p;
    }
    let page = segment::page_of(p);
    valgrind::free_like(p);
    // SAFETY: `counter` indexes the flattened `frees` array of a small page (as in
    // `heap::free_to_other_heap`).
    (*h).counters.free_counter((*page).counter as usize).add(1);
    // The page is not pushed onto the heap's stack even if the list was empty: the stranded
    // state.
    let _ = heap::push_onto_page_list(page, p);
    p
}

/// Whether the small page holding our block `p` has remote frees not yet collected (tests).
///
/// # Safety
/// `owns(p)`, and `p` is in a small page.
pub unsafe fn remote_frees_pending(p: *const u8) -> bool {
    let page = segment::page_of(p);
    (*segment::remote_slot(page))
        .list
        .load(core::sync::atomic::Ordering::Acquire)
        != 0
}

#[cfg(test)]
mod tests;
#[cfg(all(test, feature = "valgrind"))]
mod tests_valgrind;
