//! Segments and pages: where blocks live.
//!
//! A *segment* is a `SEGMENT_SIZE`-aligned region mapped from the OS and registered in the
//! ownership map (`segment_map`). Its first `PAGE_SIZE` bytes hold its metadata: a
//! `SegmentHeader` and one `Page` descriptor per page, so no block carries a header and a page's
//! bookkeeping survives whatever happens to the page's own memory.
//!
//! ```text
//!  segment (4 MiB, aligned)                                   Page descriptors (in page 0)
//!  +----------+----------+----------+-----   ---+----------+  +----+----+----+----
//!  | page 0:  | page 1   | page 2   |   ...     | page 63  |  | 0  | 1  | 2  | ...
//!  | metadata | class 3  | large    |           | free     |  +----+----+----+----
//!  +----------+----------+----------+-----   ---+----------+
//! ```
//! - a *small page* (64 KiB) holds blocks of one size class and one domain;
//! - a *large span* is a run of pages holding one block of `SMALL_MAX < n <= LARGE_MAX` bytes;
//! - a *huge* block (`n > LARGE_MAX`) gets a segment of its own: a mapping rounded up to whole
//!   segments, the header at its start and the block right after it (`HUGE_OFFSET`), so only its
//!   first segment needs to be in the map and no foreign mapping can share any of its segments.
//!
//! Pages of a segment belong to the one heap that owns the segment (`SegmentHeader::owner`); only
//! that heap's owner thread (or the GIL holder, for the GIL heap) changes them.

use crate::os;
use crate::segment_map;
use crate::size_class::{SizeClass, SMALL_MAX};
use crate::valgrind as vg;
use core::ptr::null_mut;

/// log2 of the segment size.
pub const SEGMENT_SHIFT: u32 = 22;
/// Segments are this large and aligned to it (4 MiB).
pub const SEGMENT_SIZE: usize = 1 << SEGMENT_SHIFT;
/// log2 of the page size.
pub const PAGE_SHIFT: u32 = 16;
/// Blocks of one class are carved from pages this large (64 KiB: a multiple of every OS page
/// size Linux uses on x86_64 and aarch64).
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
/// Pages per segment; page 0 holds the metadata.
pub const PAGES_PER_SEGMENT: usize = SEGMENT_SIZE / PAGE_SIZE;
/// The largest request served by a span of pages; above it, a huge mapping.
pub const LARGE_MAX: usize = 32 * PAGE_SIZE;
/// Offset of the page descriptors inside the segment.
const PAGES_OFFSET: usize = 128;
/// Offset of a huge block from the start of its mapping. Past the first page descriptor's
/// slot: `page_of` of a huge block is that slot, which stays zeroed (`Page::local` null), so the
/// free fast path's one compare turns huge blocks away without reading the segment header.
pub const HUGE_OFFSET: usize = 256;
/// Offset of the pages' touch times (`touch_times`), after the page descriptors.
const TOUCHED_OFFSET: usize = PAGES_OFFSET + PAGES_PER_SEGMENT * core::mem::size_of::<Page>();

/// Offset of the pages' remote-free lists (`RemoteSlot`), after the touch times.
const REMOTE_OFFSET: usize = (TOUCHED_OFFSET + core::mem::size_of::<TouchTimes>() + 63) & !63;

const _: () = {
    assert!(REMOTE_OFFSET + PAGES_PER_SEGMENT * core::mem::size_of::<RemoteSlot>() <= PAGE_SIZE);
    assert!(core::mem::size_of::<SegmentHeader>() <= PAGES_OFFSET);
    assert!(core::mem::size_of::<SegmentHeader>() <= HUGE_OFFSET && HUGE_OFFSET % 16 == 0);
    assert!(PAGES_OFFSET + core::mem::size_of::<Page>() <= HUGE_OFFSET);
    assert!(TOUCHED_OFFSET + core::mem::size_of::<TouchTimes>() <= PAGE_SIZE);
    assert!(TOUCHED_OFFSET % 8 == 0);
    assert!(PAGES_PER_SEGMENT <= 64); // the free-page set is one u64
    assert!(core::mem::size_of::<Page>() == 64);
    assert!(SMALL_MAX * 2 <= PAGE_SIZE && LARGE_MAX < SEGMENT_SIZE - PAGE_SIZE);
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum SegmentKind {
    Pages = 1,
    Huge = 2,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum PageKind {
    Free = 0,
    Small = 1,
    Large = 2,
}

/// A segment's place in one of its heap's doubly linked lists of segments.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct SegmentLinks {
    pub next: *mut SegmentHeader,
    pub prev: *mut SegmentHeader,
}

impl SegmentLinks {
    pub const NONE: SegmentLinks = SegmentLinks {
        next: null_mut(),
        prev: null_mut(),
    };
}

/// The start of every segment.
#[repr(C)]
pub struct SegmentHeader {
    pub kind: SegmentKind,
    /// The domain of a huge block (unused for `Pages`).
    pub huge_domain: u8,
    /// Pages in use (small pages and span pages).
    pub used_pages: u32,
    /// Bit i set: page i is free (bit 0, the metadata page, never is).
    pub free_pages: u64,
    /// The heap whose pages these are; null for a huge segment.
    pub owner: *mut crate::heap::Heap,
    /// Links in the owner's list of segments that have free pages (`Heap::segments`).
    pub with_free: SegmentLinks,
    pub in_list: bool,
    /// Links in the owner's list of all its segments (`Heap::all_segments`).
    pub all: SegmentLinks,
    /// Bit i set: free page i may hold resident memory (it was used and not decommitted since).
    pub dirty_pages: u64,
    /// Bit i set: free page i was decommitted by a purge (taking it again faults it back in; the
    /// heap counts that, see `purge::adapt_delay`). Always within `free_pages & !dirty_pages`.
    pub purged_pages: u64,
    /// Bit i set: the small page or large span starting at page i may hold resident memory past
    /// its blocks (`purge_rest` gives it back): it was taken from memory used before (a dirty
    /// page), or, a large block, shrunk in place or grown into dirty pages. Always within the
    /// pages in use that start a small page or span.
    pub rest_dirty: u64,
    /// Bit i set: an automatic pass found `rest_dirty` bit i set, and left it to the next pass:
    /// like free pages, a rest goes back only once it has been left alone for the purge delay.
    /// Always within `rest_dirty`.
    pub rest_seen: u64,
    /// Bit i set: a pass gave back the rest of the large span starting at page i, and growing its
    /// block into it (`rest_resized`) faults it in again. Cleared once that is all taken back.
    /// (A small page's is `REST_PURGED`.)
    pub rest_purged: u64,
    /// For a huge segment: bytes mapped, and the block's current size (16-byte rounded).
    pub mapped: usize,
    pub huge_size: usize,
    /// For a huge segment: the heap whose counters hold the block's allocation (the heap that
    /// allocated it, or last resized it), for the peaks (`stats::Counters::held`). Set by the
    /// caller of `huge_alloc`; written only by the block's user, like the block.
    pub huge_heap: *mut crate::heap::Heap,
}

/// One page's descriptor. Invariant of a small page:
/// `used + |free list| + purged_blocks == capacity <= reserved`, with `capacity` blocks carved
/// so far from `start`; `used` counts blocks handed out and not yet freed locally
/// (a block freed remotely stays in `used` until its owner collects it).
#[repr(C)]
pub struct Page {
    /// Local free list (intrusive: each free block's first word links to the next).
    pub free: *mut u8,
    pub used: u32,
    pub block_size: u32,
    pub capacity: u32,
    pub reserved: u32,
    /// Pages in a large span (1 for a small page).
    pub span: u32,
    pub class: u8,
    pub kind: PageKind,
    pub domain: u8,
    /// Not in its queue because it had no free block.
    pub full: bool,
    /// The heap whose owner frees into this page on the fast path, tagged with the page's domain
    /// (`heap::local_tag`: the heap's address plus the domain) while this is a small page that
    /// is not full, else null (full, a large span, a free page, and the descriptor slot a huge
    /// block's pointer maps to). One compare then stands for "ours, small, not full, and of the
    /// domain whose function frees it", so the free fast path reads no segment header and knows
    /// the block's domain (a constant of the hook) for its counter.
    ///
    /// Atomic because threads that do not own the page read it (a free of another heap's block)
    /// while the owner changes it; Relaxed loads and stores, plain moves on x86_64 and aarch64.
    pub local: core::sync::atomic::AtomicPtr<crate::heap::Heap>,
    pub next: *mut Page,
    pub prev: *mut Page,
    /// OS pages of this page given back to the OS while its blocks there were free (bit k:
    /// bytes `k * os_page ..`). Blocks touching them are on no free list until `unpurge_page`.
    pub purged: u16,
    /// Free blocks when the page was last purged (to rescan only once enough are freed), at most
    /// 4,096; its top bit is `REST_PURGED`.
    pub free_at_purge: u16,
    /// Blocks cut out of the free list by purging: `used + |free| + purged_blocks == capacity`
    /// (at most 4,096 blocks fit a page).
    pub purged_blocks: u16,
    /// `domain * (NUM_CLASSES + 1) + class`: the page's slot in a heap's per-class counters
    /// and its queue's index (`heap::QUEUE_STRIDE`), so the free fast path finds both with one load.
    pub counter: u16,
}

/// `Page::free_at_purge`'s top bit: a pass gave back this small page's uncarved rest
/// (`purge_rest`), and carving into it faults it in again (`rest_carved`). Kept in the
/// descriptor, which carving reads anyway, so that a carve reads no segment header line (a
/// span's is `SegmentHeader::rest_purged`).
pub const REST_PURGED: u16 = 0x8000;

impl Page {
    /// The descriptor of a free page (no blocks, no span, in no queue).
    pub const fn free_page() -> Page {
        Page {
            free: null_mut(),
            used: 0,
            block_size: 0,
            capacity: 0,
            reserved: 0,
            span: 0,
            class: 0,
            kind: PageKind::Free,
            domain: 0,
            full: false,
            local: core::sync::atomic::AtomicPtr::new(null_mut()),
            next: null_mut(),
            prev: null_mut(),
            purged: 0,
            free_at_purge: 0,
            purged_blocks: 0,
            counter: 0,
        }
    }
}

#[inline(always)]
pub fn segment_of(p: *const u8) -> *mut SegmentHeader {
    (p as usize & !(SEGMENT_SIZE - 1)) as *mut SegmentHeader
}

/// The first byte of the page `page` describes (page 0 holds the metadata and no block).
#[inline(always)]
pub fn page_start(page: *const Page) -> *mut u8 {
    let seg = page as usize & !(SEGMENT_SIZE - 1);
    (seg + page_index(page) * PAGE_SIZE) as *mut u8
}

/// The descriptor of the page holding `p`.
#[inline(always)]
pub fn page_of(p: *const u8) -> *mut Page {
    let seg = p as usize & !(SEGMENT_SIZE - 1);
    let idx = (p as usize - seg) >> PAGE_SHIFT;
    (seg + PAGES_OFFSET + idx * core::mem::size_of::<Page>()) as *mut Page
}

#[inline(always)]
pub fn page_at(seg: *mut SegmentHeader, idx: usize) -> *mut Page {
    (seg as usize + PAGES_OFFSET + idx * core::mem::size_of::<Page>()) as *mut Page
}

/// When each page of a `Pages` segment last went back to the segment (freed whole), in
/// `purge::now_ms` milliseconds. An automatic purge pass decommits only
/// free pages left alone for the purge delay, and unmaps only empty segments left alone that
/// long (see `heap::purge`), so a program that frees and reallocates in rounds does not have its
/// pages decommitted and faulted in again whenever a pass falls between a round's frees and its
/// allocations. In the metadata page, after the descriptors; a fresh segment's zeros mean
/// "long ago".
///
/// A page decommitted by a purge pass (`purged_pages`), or a small page some of whose OS pages
/// were (`Page::purged`), holds instead when an automatic pass gave it back (0, "long ago", for
/// a trim): taking it into use again soon after is a refault (see `purge::adapt_delay`). So does
/// a small page or span whose rest past its blocks a pass gave back (`REST_PURGED`,
/// `rest_purged`). Nothing else reads the time of a page that is not free and dirty.
#[repr(C)]
pub struct TouchTimes {
    pub page: [u64; PAGES_PER_SEGMENT],
    /// The latest of `page`.
    pub latest: u64,
}

/// # Safety
/// `seg` is a live `Pages` segment; only its owner's heap uses the result.
#[inline(always)]
pub unsafe fn touch_times(seg: *mut SegmentHeader) -> *mut TouchTimes {
    (seg as *mut u8).add(TOUCHED_OFFSET) as *mut TouchTimes
}

/// Blocks of one small page freed by threads other than its owner's, waiting for the owner, and
/// the page's link in its owner's stack of pages with such blocks (`Heap::remote`'s `pages`).
///
/// `list` packs the list's first block, its last block (both as offsets from the segment in
/// 16-byte units, 18 bits each) and its length (bits 40..): 0 is the empty list. The blocks
/// are chained through their first words, the last one's null. A freeing thread pushes with one
/// compare-and-swap on `list` and, when the list was empty, puts the page on its owner's stack;
/// the owner takes the whole list with one swap and splices it onto the page's free list
/// through the last block, reading and writing no other block. The length in the same word keeps
/// the push free of ABA: whenever its compare-and-swap succeeds, the list is exactly the one it
/// read. Invariant: a page is on its owner's stack (or in a stack the owner took and is still
/// walking) exactly when its `list` is not 0; the blocks on it stay in the page's `used`, so
/// the page cannot go back to its segment while any wait. Lives in the segment's metadata page,
/// away from the descriptors the owner writes on every call.
#[repr(C)]
pub struct RemoteSlot {
    pub list: core::sync::atomic::AtomicU64,
    pub next_page: core::sync::atomic::AtomicPtr<Page>,
}

/// Bits of a block's offset in a `RemoteSlot::list` (16-byte units of a segment).
pub const REMOTE_OFFSET_BITS: u32 = SEGMENT_SHIFT - 4;
/// Where a `RemoteSlot::list`'s length starts, above its two offsets.
const REMOTE_LEN_SHIFT: u32 = 40;
const _: () = assert!(2 * REMOTE_OFFSET_BITS <= REMOTE_LEN_SHIFT);
// The length counts blocks of one page (at most one per 16 bytes), in the bits left above.
const _: () = assert!((PAGE_SIZE / 16) as u64 <= u64::MAX >> REMOTE_LEN_SHIFT);

impl RemoteSlot {
    /// The `list` word of a list from block offset `first` to `last` (`remote_offset`), `len`
    /// blocks long.
    #[inline(always)]
    pub fn pack(first: u64, last: u64, len: u64) -> u64 {
        first | last << REMOTE_OFFSET_BITS | len << REMOTE_LEN_SHIFT
    }

    /// A `list` word's first and last block offsets and its length (all 0 for the empty list).
    #[inline(always)]
    pub fn unpack(list: u64) -> (u64, u64, u64) {
        const MASK: u64 = (1 << REMOTE_OFFSET_BITS) - 1;
        (
            list & MASK,
            (list >> REMOTE_OFFSET_BITS) & MASK,
            list >> REMOTE_LEN_SHIFT,
        )
    }
}

/// The offset of block `p` in its segment in 16-byte units, as a `RemoteSlot::list` holds it.
#[inline(always)]
pub fn remote_offset(p: *const u8) -> u64 {
    ((p as usize & (SEGMENT_SIZE - 1)) >> 4) as u64
}

/// The block at offset `off` (`remote_offset`) of the segment at address `seg`.
#[inline(always)]
pub fn remote_block(seg: usize, off: u64) -> *mut u8 {
    (seg + ((off as usize) << 4)) as *mut u8
}

/// The remote-free slot of the page `page` describes.
#[inline(always)]
pub fn remote_slot(page: *const Page) -> *mut RemoteSlot {
    let seg = page as usize & !(SEGMENT_SIZE - 1);
    (seg + REMOTE_OFFSET + page_index(page) * core::mem::size_of::<RemoteSlot>()) as *mut RemoteSlot
}

/// The index in its segment of the page `page` describes.
#[inline(always)]
pub fn page_index(page: *const Page) -> usize {
    let seg = page as usize & !(SEGMENT_SIZE - 1);
    (page as usize - seg - PAGES_OFFSET) / core::mem::size_of::<Page>()
}

/// The pages of `seg` among `pages` (bit i: page i) last touched at least `age` ms before `now`.
///
/// # Safety
/// `seg` is a live `Pages` segment of the caller's heap.
pub unsafe fn left_alone(seg: *mut SegmentHeader, mut pages: u64, now: u64, age: u64) -> u64 {
    let t = touch_times(seg);
    let mut old = 0;
    while pages != 0 {
        let i = pages.trailing_zeros() as usize;
        pages &= pages - 1;
        if now.saturating_sub((*t).page[i]) >= age {
            old |= 1 << i;
        }
    }
    old
}

/// Segments mapped now (pages and huge) and the most there have been.
static SEGMENTS: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
static SEGMENTS_PEAK: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// (segments mapped now, peak)
pub fn segment_counts() -> (usize, usize) {
    use core::sync::atomic::Ordering::Relaxed;
    (SEGMENTS.load(Relaxed), SEGMENTS_PEAK.load(Relaxed))
}

fn count_segment(delta: isize) {
    use core::sync::atomic::Ordering::Relaxed;
    if delta > 0 {
        let now = SEGMENTS.fetch_add(1, Relaxed) + 1;
        SEGMENTS_PEAK.fetch_max(now, Relaxed);
    } else {
        SEGMENTS.fetch_sub(1, Relaxed);
    }
}

/// The first address a new segment should be tried at: just after the last one we mapped, which
/// keeps segments together and makes the first, exact-size mmap usually land aligned.
static NEXT_HINT: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

fn map_segment_region(size: usize) -> *mut u8 {
    use core::sync::atomic::Ordering::Relaxed;
    let p = os::map_aligned(size, SEGMENT_SIZE, NEXT_HINT.load(Relaxed));
    if !p.is_null() {
        NEXT_HINT.store(p as usize + size, Relaxed);
    }
    p
}

/// Map and register a fresh segment of pages owned by `owner`. Null if the OS refuses.
pub fn new_segment(owner: *mut crate::heap::Heap) -> *mut SegmentHeader {
    let base = map_segment_region(SEGMENT_SIZE);
    if base.is_null() {
        return null_mut();
    }
    let seg = base as *mut SegmentHeader;
    // SAFETY: `base` is a fresh, zeroed, writable mapping of SEGMENT_SIZE bytes; the header and
    // descriptors lie in its first page.
    unsafe {
        seg.write(SegmentHeader {
            kind: SegmentKind::Pages,
            huge_domain: 0,
            used_pages: 0,
            free_pages: !1u64 >> (64 - PAGES_PER_SEGMENT),
            owner,
            with_free: SegmentLinks::NONE,
            in_list: false,
            all: SegmentLinks::NONE,
            dirty_pages: 0,
            purged_pages: 0,
            rest_dirty: 0,
            rest_seen: 0,
            rest_purged: 0,
            mapped: SEGMENT_SIZE,
            huge_size: 0,
            huge_heap: null_mut(),
        });
        for i in 0..PAGES_PER_SEGMENT {
            let page = page_at(seg, i);
            page.write(Page::free_page());
        }
    }
    if !segment_map::register(base, SEGMENT_SIZE, segment_map::PAGES) {
        os::unmap(base, SEGMENT_SIZE);
        return null_mut();
    }
    // Keep transparent huge pages from refilling the ranges we purge (see `purge`).
    os::no_huge_pages(base, SEGMENT_SIZE);
    // Everything but the metadata page is free memory: no one's to touch.
    vg::noaccess(base.wrapping_add(PAGE_SIZE), SEGMENT_SIZE - PAGE_SIZE);
    count_segment(1);
    seg
}

/// Unregister and unmap an empty segment (or a huge one whose block is freed).
///
/// # Safety
/// `seg` is one of our segments holding no live block; nothing refers to it afterwards.
pub unsafe fn release_segment(seg: *mut SegmentHeader) {
    let size = (*seg).mapped;
    segment_map::unregister(seg as *mut u8, size);
    os::unmap(seg as *mut u8, size);
    count_segment(-1);
}

/// Take `count` contiguous free pages from `seg` for a page of `kind`; returns the first page's
/// descriptor or null.
///
/// Small pages come from the top of the segment, large spans from the bottom (the lowest run
/// that fits): a large block then has free pages after it to grow into in place (`extend_span`)
/// until it meets the small pages coming down. Taken from the bottom, the next small page
/// would be the one right after the large block, and a buffer grown by `realloc` (a list by
/// `list.append`) would move at almost every page it grows by.
///
/// # Safety
/// `seg` is a live `Pages` segment owned by the caller's heap; `kind` is not `Free`, and
/// `count` is 1 for a small page.
pub unsafe fn take_pages(seg: *mut SegmentHeader, count: usize, kind: PageKind) -> *mut Page {
    let free = (*seg).free_pages;
    if free == 0 {
        return null_mut();
    }
    let idx = if kind == PageKind::Small {
        debug_assert_eq!(count, 1);
        63 - free.leading_zeros() as usize
    } else if count == 1 {
        free.trailing_zeros() as usize
    } else {
        match find_run(free, count) {
            Some(i) => i,
            None => return null_mut(),
        }
    };
    let mask = (if count == 64 { !0 } else { (1u64 << count) - 1 }) << idx;
    if (*seg).dirty_pages & mask != 0 {
        (*seg).rest_dirty |= 1 << idx;
    }
    (*seg).rest_seen &= !mask;
    (*seg).free_pages &= !mask;
    (*seg).dirty_pages &= !mask;
    (*seg).purged_pages &= !mask;
    (*seg).used_pages += count as u32;
    let page = page_at(seg, idx);
    (*page).span = count as u32;
    page
}

/// Give the pages of `page`'s span back to its segment, left alone from `now` (`TouchTimes`).
/// Returns true if the segment is now empty. They go back dirty, but for those wholly past a
/// rest that a pass gave back (`rest_purged`): those go back decommitted (`purged_pages`), with
/// that pass's time, so that taking them again counts as a refault and no pass gives them back
/// (and counts them) a second time.
///
/// # Safety
/// `page` is a descriptor of a live `Pages` segment, the start of a span of `span` pages in use.
pub unsafe fn return_pages(page: *mut Page, now: u64) -> bool {
    let seg = segment_of(page as *const u8);
    let idx = page_index(page);
    let count = (*page).span as usize;
    let mask = (if count == 64 { !0 } else { (1u64 << count) - 1 }) << idx;
    debug_assert_eq!((*seg).free_pages & mask, 0);
    // The pages wholly past the rest given back: from `idx + first` on (`idx + first < 64`).
    let first = if (*seg).rest_purged & (1 << idx) != 0 {
        rest_start(page).div_ceil(PAGE_SIZE)
    } else {
        count
    };
    let gone = if first < count {
        mask & !((1u64 << (idx + first)) - 1)
    } else {
        0
    };
    let t = touch_times(seg);
    let purged_ms = (*t).page[idx];
    for i in idx..idx + count {
        (*t).page[i] = if gone & (1 << i) != 0 { purged_ms } else { now };
    }
    (*t).latest = now;
    (*seg).free_pages |= mask;
    (*seg).dirty_pages |= mask & !gone;
    (*seg).purged_pages |= gone;
    (*seg).rest_dirty &= !mask;
    (*seg).rest_seen &= !mask;
    (*seg).rest_purged &= !mask;
    (*seg).used_pages -= count as u32;
    (*page).kind = PageKind::Free;
    (*page).span = 0;
    (*page).used = 0;
    (*page).free = null_mut();
    (*page).full = false;
    (*page)
        .local
        .store(null_mut(), core::sync::atomic::Ordering::Relaxed);
    (*page).purged = 0;
    (*page).purged_blocks = 0;
    (*page).free_at_purge = 0;
    (*seg).used_pages == 0
}

/// Whether the `extra` pages right after a span are free (for growing a large block in place);
/// if so, take them.
///
/// # Safety
/// As for `return_pages`.
pub unsafe fn extend_span(page: *mut Page, extra: usize) -> bool {
    let seg = segment_of(page as *const u8);
    let idx = page_index(page);
    let end = idx + (*page).span as usize;
    if end + extra > PAGES_PER_SEGMENT {
        return false;
    }
    let mask = ((1u64 << extra) - 1) << end;
    if (*seg).free_pages & mask != mask {
        return false;
    }
    if (*seg).dirty_pages & mask != 0 {
        (*seg).rest_dirty |= 1 << idx;
        (*seg).rest_seen &= !(1 << idx);
    }
    (*seg).rest_seen &= !mask;
    (*seg).free_pages &= !mask;
    (*seg).dirty_pages &= !mask;
    (*seg).purged_pages &= !mask;
    (*seg).used_pages += extra as u32;
    (*page).span += extra as u32;
    true
}

/// The lowest index of a run of `count` set bits in `bits`.
fn find_run(bits: u64, count: usize) -> Option<usize> {
    // Shrink every run by count-1: a bit survives iff it starts a run of `count`.
    let mut runs = bits;
    let mut have = 1;
    while have < count {
        let step = (count - have).min(have);
        runs &= runs >> step;
        have += step;
    }
    if runs == 0 {
        None
    } else {
        Some(runs.trailing_zeros() as usize)
    }
}

/// Turn a free single page into a small page of class `class` and domain `domain`, which its
/// segment's owner frees into on the fast path (`Page::local`).
///
/// # Safety
/// `page` was just returned by `take_pages(seg, 1, PageKind::Small)`.
pub unsafe fn init_small_page(page: *mut Page, class: SizeClass, domain: u8) {
    (*page).local.store(
        crate::heap::local_tag((*segment_of(page as *const u8)).owner, domain as usize),
        core::sync::atomic::Ordering::Relaxed,
    );
    let bs = class.block_size() as u32;
    (*page).kind = PageKind::Small;
    (*page).class = class.0;
    (*page).block_size = bs;
    (*page).reserved = PAGE_SIZE as u32 / bs;
    (*page).capacity = 0;
    (*page).used = 0;
    (*page).free = null_mut();
    (*page).domain = domain;
    (*page).full = false;
    (*page).next = null_mut();
    (*page).prev = null_mut();
    (*page).purged = 0;
    (*page).purged_blocks = 0;
    (*page).free_at_purge = 0;
    (*page).counter = (domain as usize * crate::heap::QUEUE_STRIDE + class.index()) as u16;
}

/// Free blocks on the page's list now.
///
/// # Safety
/// `page` is a small page owned by the caller.
#[inline]
pub unsafe fn free_blocks(page: *mut Page) -> u32 {
    (*page).capacity - (*page).used - (*page).purged_blocks as u32
}

/// OS pages in a page.
#[inline]
fn os_pages_per_page() -> usize {
    PAGE_SIZE / os::page_size()
}

/// Give back the OS pages of a small page that hold only blocks of its free list, cutting those
/// blocks out of its free list first — the list is linked through the blocks, so a link left in
/// a purged OS page would read as zero afterwards. (OS pages wholly past the carved blocks are
/// `purge_rest`'s.) Returns the bytes given back; if any, the page's time becomes `stamp` (see
/// `TouchTimes`).
///
/// # Safety
/// `page` is a small page owned by the caller, with no remote frees pending for it that the
/// caller would later push onto its list (collect them first).
pub unsafe fn purge_page(page: *mut Page, stamp: u64) -> usize {
    let ps = os::page_size();
    let n = os_pages_per_page();
    if (*page).free.is_null() || n > 16 {
        return 0;
    }
    let bs = (*page).block_size as usize;
    let start = page_start(page) as usize;
    // Free bytes per OS page, from the free blocks on the list. Never-carved space does not
    // count: carving it later would list blocks of a purged OS page twice (see `unpurge_page`).
    let mut free_bytes = [0usize; 16];
    let mut b = (*page).free;
    while !b.is_null() {
        let lo = b as usize - start;
        let hi = lo + bs;
        let mut k = lo / ps;
        while k * ps < hi {
            free_bytes[k] += hi.min((k + 1) * ps) - lo.max(k * ps);
            k += 1;
        }
        b = vg::read_link(b);
    }
    let mut purge = 0u16;
    for (k, &f) in free_bytes.iter().enumerate().take(n) {
        if f == ps && (*page).purged & (1 << k) == 0 {
            purge |= 1 << k;
        }
    }
    let all_purged = (*page).purged | purge;
    // Relink the list without the blocks that touch a purged OS page.
    let touches = |lo: usize| -> bool {
        let (first, last) = (lo / ps, (lo + bs - 1) / ps);
        (first..=last).any(|k| all_purged & (1 << k) != 0)
    };
    let mut kept: *mut u8 = null_mut();
    let head: *mut *mut u8 = &mut kept;
    let mut tail = head;
    let mut cut = 0u32;
    let mut b = (*page).free;
    while !b.is_null() {
        let next = vg::read_link(b);
        if touches(b as usize - start) {
            cut += 1;
        } else {
            *tail = b;
            // Under memcheck a kept block's link stays open while it is the tail.
            if tail != head {
                vg::noaccess(tail as *mut u8, 8);
            }
            vg::undefined(b, 8);
            tail = b as *mut *mut u8;
        }
        b = next;
    }
    *tail = null_mut();
    if tail != head {
        vg::noaccess(tail as *mut u8, 8);
    }
    (*page).free = kept;
    (*page).purged_blocks += cut as u16;
    (*page).purged = all_purged;
    (*page).free_at_purge = free_blocks(page) as u16 | (*page).free_at_purge & REST_PURGED;
    // Only now, with no link left in them, give the OS pages back (adjacent ones together).
    let mut bytes = 0;
    let mut k = 0;
    while k < n {
        if purge & (1 << k) == 0 {
            k += 1;
            continue;
        }
        let first = k;
        while k < n && purge & (1 << k) != 0 {
            k += 1;
        }
        let len = (k - first) * ps;
        if os::decommit((start + first * ps) as *mut u8, len) {
            bytes += len;
        }
    }
    if bytes != 0 {
        (*touch_times(segment_of(page as *const u8))).page[page_index(page)] = stamp;
    }
    bytes
}

/// Put every block cut out by `purge_page` back on the free list (their memory comes back,
/// zeroed, as it is touched). Returns whether any were.
///
/// # Safety
/// As for `purge_page`.
pub unsafe fn unpurge_page(page: *mut Page) -> bool {
    if (*page).purged == 0 {
        return false;
    }
    let ps = os::page_size();
    let bs = (*page).block_size as usize;
    let start = page_start(page) as usize;
    let purged = (*page).purged;
    let mut head = (*page).free;
    // Blocks are re-added from the top so the list comes out in address order.
    for i in (0..(*page).capacity as usize).rev() {
        let lo = i * bs;
        let (first, last) = (lo / ps, (lo + bs - 1) / ps);
        if (first..=last).any(|k| purged & (1 << k) != 0) {
            let b = (start + lo) as *mut u8;
            vg::write_link(b, head);
            head = b;
        }
    }
    (*page).free = head;
    (*page).purged = 0;
    (*page).purged_blocks = 0;
    true
}

/// Give back the OS pages of a small page or large span (`rest_dirty`) that lie wholly past its
/// blocks. On a small page that is the rest not yet cut into blocks, and the tail past the last
/// block that no block ever uses (at least one OS page for classes whose blocks do not divide a
/// page closely, 16 KiB for 24 KiB blocks); on a span, what its block does not reach (24 KiB of
/// a 64 KiB span for a 40,000-byte block). No block or link lives there, so nothing is cut out
/// of a list: carving or growing into it later faults the memory in again, zeroed (counted by
/// `rest_carved` and `rest_resized`), and `Page::purged` stays as it is (else `unpurge_page`
/// would list those blocks). Returns the bytes given back; if any of a rest that can be taken
/// back was, the page's time becomes `stamp`.
///
/// # Safety
/// `page` starts a small page or large span in use, owned by the caller.
pub unsafe fn purge_rest(page: *mut Page, stamp: u64) -> usize {
    let seg = segment_of(page as *const u8);
    let bit = 1u64 << page_index(page);
    if (*seg).rest_dirty & bit == 0 {
        return 0;
    }
    let bs = (*page).block_size as usize;
    // Where the rest starts, the end of what blocks can come to use (by carving, by growing in
    // place), and the end.
    let from = rest_start(page);
    let (reachable, end) = if (*page).kind == PageKind::Small {
        ((*page).reserved as usize * bs, PAGE_SIZE)
    } else {
        let end = (*page).span as usize * PAGE_SIZE;
        (end, end)
    };
    if from < end && !os::decommit(page_start(page).add(from), end - from) {
        return 0; // still dirty; the next pass tries again
    }
    (*seg).rest_dirty &= !bit;
    (*seg).rest_seen &= !bit;
    if from >= end {
        return 0;
    }
    if from < reachable {
        if (*page).kind == PageKind::Small {
            (*page).free_at_purge |= REST_PURGED;
        } else {
            (*seg).rest_purged |= bit;
        }
        (*touch_times(seg)).page[page_index(page)] = stamp;
    }
    end - from
}

/// Where the rest of a small page or span starts (`purge_rest`): the first OS page past its
/// carved blocks, or past its large block.
///
/// # Safety
/// `page` starts a small page or large span in use.
unsafe fn rest_start(page: *mut Page) -> usize {
    let bs = (*page).block_size as usize;
    let used = if (*page).kind == PageKind::Small {
        (*page).capacity as usize * bs
    } else {
        bs
    };
    used.next_multiple_of(os::page_size())
}

/// After carving small page `page` from `old_capacity` blocks on: the bytes of OS pages that
/// carving took into use again after `purge_rest` gave them back (0 if it did not).
///
/// # Safety
/// `page` is a small page in use, owned by the caller.
pub unsafe fn rest_carved(page: *mut Page, old_capacity: u32) -> usize {
    if (*page).free_at_purge & REST_PURGED == 0 {
        return 0;
    }
    if (*page).capacity == (*page).reserved {
        (*page).free_at_purge &= !REST_PURGED;
    }
    let ps = os::page_size();
    let bs = (*page).block_size as usize;
    let end = |blocks: u32| (blocks as usize * bs).next_multiple_of(ps);
    end((*page).capacity) - end(old_capacity)
}

/// A large block resized in place from `old` to `new` bytes, in the span starting at `page`,
/// which held `span_bytes` before the resize (a grown span, `extend_span`, more now): keeps the
/// span's rest bits true, and returns the bytes the block grew into that `purge_rest` had given
/// back. A block that shrank leaves its old end resident past its new one.
///
/// # Safety
/// `page` starts a large span in use, owned by the caller.
pub unsafe fn rest_resized(page: *mut Page, old: usize, new: usize, span_bytes: usize) -> usize {
    let seg = segment_of(page as *const u8);
    let bit = 1u64 << page_index(page);
    let ps = os::page_size();
    let (old_end, new_end) = (old.next_multiple_of(ps), new.next_multiple_of(ps));
    if new_end < old_end {
        // `return_pages` trusts `rest_purged` to mean that all past the block's end is
        // decommitted, which the shrunk block's old end is not: the bit must go.
        (*seg).rest_dirty |= bit;
        (*seg).rest_seen &= !bit;
        (*seg).rest_purged &= !bit;
        return 0;
    }
    if (*seg).rest_purged & bit == 0 {
        return 0;
    }
    if new_end >= span_bytes {
        (*seg).rest_purged &= !bit;
    }
    new_end.min(span_bytes).saturating_sub(old_end)
}

/// Decommit the dirty free pages of a segment among `eligible` (bit i: page i), keeping the
/// first `keep` bytes of them; returns the bytes given back. The pages decommitted join
/// `purged_pages`, their time `stamp` (see `TouchTimes`).
///
/// # Safety
/// `seg` is a live `Pages` segment owned by the caller.
pub unsafe fn purge_free_pages(
    seg: *mut SegmentHeader,
    keep: &mut usize,
    eligible: u64,
    stamp: u64,
) -> usize {
    let mut dirty = (*seg).dirty_pages & (*seg).free_pages & eligible;
    let mut bytes = 0;
    while dirty != 0 {
        let i = dirty.trailing_zeros() as usize;
        let mut j = i;
        while j < PAGES_PER_SEGMENT && dirty & (1 << j) != 0 {
            j += 1;
        }
        let run = (if j - i == 64 {
            !0
        } else {
            (1u64 << (j - i)) - 1
        }) << i;
        dirty &= !run;
        let len = (j - i) * PAGE_SIZE;
        if *keep >= len {
            *keep -= len;
            continue;
        }
        *keep = 0;
        if os::decommit((seg as *mut u8).add(i * PAGE_SIZE), len) {
            (*seg).dirty_pages &= !run;
            (*seg).purged_pages |= run;
            let t = touch_times(seg);
            for k in i..j {
                (*t).page[k] = stamp;
            }
            bytes += len;
        }
    }
    bytes
}

/// Bytes of a page carved into its free list at a time, and the bounds on the block count: about
/// 4 KiB (one OS page, mimalloc's choice too), so a batch of fresh blocks stays in L1 while it is
/// linked and handed out, but at least 32 blocks so that small-but-not-tiny classes do not come
/// back to the slow path every few allocations, and never more than 16 KiB.
const CARVE_BYTES: usize = 4 * 1024;
const CARVE_MIN_BLOCKS: usize = 32;
const CARVE_MAX_BYTES: usize = 16 * 1024;
/// Blocks carved at a time, per class (no division on the slow path). Always at least 1.
static CARVE_BLOCKS: [u16; crate::size_class::NUM_CLASSES] = {
    let mut t = [0u16; crate::size_class::NUM_CLASSES];
    let mut c = 0;
    while c < t.len() {
        let bs = crate::size_class::BLOCK_SIZES[c] as usize;
        let mut n = CARVE_BYTES / bs;
        if n < CARVE_MIN_BLOCKS {
            n = CARVE_MIN_BLOCKS;
        }
        if n > CARVE_MAX_BYTES / bs {
            n = CARVE_MAX_BYTES / bs;
        }
        t[c] = if n == 0 { 1 } else { n as u16 };
        c += 1;
    }
    t
};

/// Carve more untouched blocks of a small page into its free list: `CARVE_BLOCKS` of its class
/// at a time, so a fresh page's memory is touched only as it is used (a page taken from memory
/// used before may be resident already, until `purge_rest`). Returns how many (0: all carved).
///
/// # Safety
/// `page` is a small page with an empty free list, owned by the caller.
pub unsafe fn extend_free_list(page: *mut Page) -> u32 {
    let (cap, res) = ((*page).capacity, (*page).reserved);
    if cap >= res {
        return 0;
    }
    let bs = (*page).block_size as usize;
    let batch = (CARVE_BLOCKS[(*page).class as usize] as usize).min((res - cap) as usize);
    let first = page_start(page).add(cap as usize * bs);
    let mut b = first;
    for _ in 1..batch {
        let next = b.add(bs);
        vg::write_link(b, next);
        b = next;
    }
    vg::write_link(b, null_mut());
    (*page).free = first;
    (*page).capacity = cap + batch as u32;
    batch as u32
}

/// Map a huge block of `size` bytes in a segment of its own. Returns the block, or null.
pub fn huge_alloc(size: usize, domain: u8) -> *mut u8 {
    let Some(mapped) = size
        .checked_add(HUGE_OFFSET)
        .and_then(|n| os::round_up(n, SEGMENT_SIZE))
    else {
        return null_mut();
    };
    let base = map_segment_region(mapped);
    if base.is_null() {
        return null_mut();
    }
    let seg = base as *mut SegmentHeader;
    // SAFETY: a fresh writable mapping of `mapped` bytes; the header fits before HUGE_OFFSET.
    unsafe {
        seg.write(SegmentHeader {
            kind: SegmentKind::Huge,
            huge_domain: domain,
            used_pages: 0,
            free_pages: 0,
            owner: null_mut(),
            with_free: SegmentLinks::NONE,
            in_list: false,
            all: SegmentLinks::NONE,
            dirty_pages: 0,
            purged_pages: 0,
            rest_dirty: 0,
            rest_seen: 0,
            rest_purged: 0,
            mapped,
            huge_size: huge_rounded(size),
            huge_heap: null_mut(),
        });
        // `page_of(block)` is this slot: zeroed, so its `local` never matches a heap.
        core::ptr::write_bytes(page_at(seg, 0), 0, 1);
    }
    if !segment_map::register(base, mapped, segment_map::HUGE) {
        os::unmap(base, mapped);
        return null_mut();
    }
    count_segment(1);
    // The block's record (its requested size) is the caller's to make; the rest is no one's.
    vg::noaccess(base.wrapping_add(HUGE_OFFSET), mapped - HUGE_OFFSET);
    base.wrapping_add(HUGE_OFFSET)
}

#[inline]
pub fn huge_rounded(size: usize) -> usize {
    (size + 15) & !15
}

/// Resize a huge block, in place when its mapping allows, else by moving its pages (no copy).
/// Returns the (possibly moved) block or null, leaving the block intact on failure.
///
/// # Safety
/// `seg` is the live huge segment of a block the caller owns exclusively.
pub unsafe fn huge_resize(seg: *mut SegmentHeader, size: usize) -> *mut u8 {
    let Some(need) = size
        .checked_add(HUGE_OFFSET)
        .and_then(|n| os::round_up(n, SEGMENT_SIZE))
    else {
        return null_mut();
    };
    let mapped = (*seg).mapped;
    if need <= mapped {
        // Shrink: unmap whole segments past the end, decommit the rest of the tail.
        if need < mapped {
            segment_map::unregister((seg as *mut u8).add(need), mapped - need);
            os::unmap((seg as *mut u8).add(need), mapped - need);
            (*seg).mapped = need;
        }
        let keep = os::round_up(HUGE_OFFSET + size, os::page_size()).unwrap_or(need);
        if keep < need && size < (*seg).huge_size {
            os::decommit((seg as *mut u8).add(keep), need - keep);
        }
        (*seg).huge_size = huge_rounded(size);
        return (seg as *mut u8).add(HUGE_OFFSET);
    }
    if os::resize_in_place(seg as *mut u8, mapped, need) {
        let tail = (seg as *mut u8).add(mapped);
        if !segment_map::register(tail, need - mapped, segment_map::HUGE_TAIL) {
            os::resize_in_place(seg as *mut u8, need, mapped);
            return null_mut();
        }
        (*seg).mapped = need;
        (*seg).huge_size = huge_rounded(size);
        return (seg as *mut u8).add(HUGE_OFFSET);
    }
    let to = map_segment_region(need);
    if to.is_null() {
        return null_mut();
    }
    if !segment_map::register(to, need, segment_map::HUGE) {
        os::unmap(to, need);
        return null_mut();
    }
    // The block is the caller's alone: leaving the map before the move opens no window for
    // anyone else's pointer; the old range is mapped again, as it was, if the move fails.
    segment_map::unregister(seg as *mut u8, mapped);
    if !os::move_mapping(seg as *mut u8, mapped, to, need) {
        segment_map::unregister(to, need);
        os::unmap(to, need);
        // Cannot fail: the leaves for this range exist already.
        segment_map::register(seg as *mut u8, mapped, segment_map::HUGE);
        return null_mut();
    }
    let moved = to as *mut SegmentHeader;
    (*moved).mapped = need;
    (*moved).huge_size = huge_rounded(size);
    to.add(HUGE_OFFSET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs() {
        assert_eq!(find_run(0b1110, 3), Some(1));
        assert_eq!(find_run(0b1101_1110, 3), Some(1));
        assert_eq!(find_run(0b1101_1010, 3), None);
        assert_eq!(find_run(0b1111_0110_1110, 4), Some(8));
        assert_eq!(find_run(!1u64, 63), Some(1));
        assert_eq!(find_run(!1u64, 32), Some(1));
    }

    #[test]
    fn page_descriptors_fit_and_resolve() {
        let seg = new_segment(null_mut());
        assert!(!seg.is_null());
        // SAFETY: a fresh segment owned by this test alone.
        unsafe {
            assert_eq!(
                (*seg).free_pages.count_ones() as usize,
                PAGES_PER_SEGMENT - 1
            );
            // Large spans from the bottom, small pages from the top.
            let p = take_pages(seg, 1, PageKind::Large);
            assert_eq!(p, page_at(seg, 1));
            let inner = page_start(p).add(PAGE_SIZE - 1);
            assert_eq!(page_of(inner), p);
            let small = take_pages(seg, 1, PageKind::Small);
            assert_eq!(small, page_at(seg, PAGES_PER_SEGMENT - 1));
            let span = take_pages(seg, 5, PageKind::Large);
            assert_eq!(span, page_at(seg, 2));
            assert_eq!(
                take_pages(seg, 1, PageKind::Small),
                page_at(seg, PAGES_PER_SEGMENT - 2)
            );
            assert!(
                extend_span(span, 2),
                "the pages after a large span stay free"
            );
            assert_eq!((*span).span, 7);
            assert!(!return_pages(span, 0));
            assert!(!return_pages(p, 0));
            assert!(!return_pages(small, 0));
            assert!(return_pages(page_at(seg, PAGES_PER_SEGMENT - 2), 0));
            release_segment(seg);
        }
    }
}
