//! The ownership map: which `SEGMENT_SIZE`-aligned regions of the address space are our segments.
//!
//! `owns(p)` answers in O(1) and never reads the memory at `p`, so it is safe on any pointer,
//! ours or pymalloc's or libc's: one load from `OWNED`, a static bitmap of one bit per segment of
//! the 48-bit user address space (8 MiB of `.bss`, as mimalloc's segment map), and a bit test.
//!
//! What each segment is lives beside it, in a two-level radix tree of one byte per segment: a
//! static root of `ROOT_LEN` leaf pointers, and leaves mapped from the OS the first time a segment
//! in their range is registered and never freed (one leaf covers 64 GiB of address space in 16
//! KiB). A root entry with no leaf points at `EMPTY_LEAF`, all zeros and never written.
//!
//! Invariant: an entry (and its bit) is set from just after its segment is mapped until just
//! before it is unmapped, so no pointer of someone else's mapping can ever be found in the map.
//!
//! Entries say what a segment is (`PAGES`, `HUGE`: the first segment of a huge mapping, which
//! holds its header and its block, `HUGE_TAIL`: the others), so the map alone describes every
//! byte we have mapped: the statistics measure residency from it without reading a header
//! that another thread might be unmapping.

use crate::os;
use crate::segment::{SEGMENT_SHIFT, SEGMENT_SIZE};
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, Ordering::*};

const ADDRESS_BITS: u32 = 48;
const LEAF_BITS: u32 = 14;
const ROOT_BITS: u32 = ADDRESS_BITS - SEGMENT_SHIFT - LEAF_BITS;
const ROOT_LEN: usize = 1 << ROOT_BITS;
const LEAF_LEN: usize = 1 << LEAF_BITS;

type Leaf = [AtomicU8; LEAF_LEN];

pub const PAGES: u8 = 1;
pub const HUGE: u8 = 2;
pub const HUGE_TAIL: u8 = 4;
/// Entries whose segment can hold a pointer we handed out.
const BLOCK_BEARING: u8 = PAGES | HUGE;

/// The leaf of every root entry whose range has no segment: all "not ours", never written.
static EMPTY_LEAF: Leaf = [const { AtomicU8::new(0) }; LEAF_LEN];

static ROOT: [AtomicPtr<Leaf>; ROOT_LEN] = [const { AtomicPtr::new(empty_leaf()) }; ROOT_LEN];

#[inline(always)]
const fn empty_leaf() -> *mut Leaf {
    &EMPTY_LEAF as *const Leaf as *mut Leaf
}

#[inline(always)]
fn split(addr: usize) -> Option<(usize, usize)> {
    if addr >> ADDRESS_BITS != 0 {
        return None;
    }
    let seg = addr >> SEGMENT_SHIFT;
    Some((seg >> LEAF_BITS, seg & (LEAF_LEN - 1)))
}

/// Segments in the address space the map covers.
const SEGMENTS: usize = 1 << (ADDRESS_BITS - SEGMENT_SHIFT);

/// One bit per segment of the address space, set iff its entry is `PAGES` or `HUGE` (it can
/// hold a pointer we handed out): what `owns` reads, so the free fast path's ownership test is
/// one load at a fixed place and a bit test, not two dependent loads. 8 MiB of zeroed `.bss`:
/// address space only; what is read of it and never written stays the kernel's shared zero
/// page, and a written 4 KiB of it covers 128 GiB of address space.
static OWNED: [AtomicU64; SEGMENTS / 64] = [const { AtomicU64::new(0) }; SEGMENTS / 64];

/// Whether `p` lies in one of our segments (for a huge block: the first segment of its
/// mapping, where every pointer we hand out for it lies).
#[inline(always)]
pub fn owns(p: *const u8) -> bool {
    let seg = p as usize >> SEGMENT_SHIFT;
    if seg >= SEGMENTS {
        return false;
    }
    // SAFETY: `seg / 64 < SEGMENTS / 64`, tested above.
    let bits = unsafe { OWNED.get_unchecked(seg / 64).load(Relaxed) };
    (bits >> (seg % 64)) & 1 != 0
}

/// Set or clear `base`'s bit in `OWNED` (`base` is below 2^ADDRESS_BITS).
fn set_owned(base: *mut u8, owned: bool) {
    let seg = base as usize >> SEGMENT_SHIFT;
    let bit = 1u64 << (seg % 64);
    if owned {
        OWNED[seg / 64].fetch_or(bit, Release);
    } else {
        OWNED[seg / 64].fetch_and(!bit, Release);
    }
}

/// Record the mapping of `size` bytes at `base` (aligned to `SEGMENT_SIZE`, `size` a multiple
/// of it): its first segment as `kind`, the rest as `HUGE_TAIL`. Returns false, recording
/// nothing, if a leaf could not be mapped (the caller then unmaps: the memory cannot be used).
pub fn register(base: *mut u8, size: usize, kind: u8) -> bool {
    let mut off = 0;
    while off < size {
        let k = if off == 0 { kind } else { HUGE_TAIL };
        if !set((base as usize + off) as *mut u8, k) {
            unregister(base, off);
            return false;
        }
        off += SEGMENT_SIZE;
    }
    true
}

/// Forget the mapping of `size` bytes at `base`; call before unmapping it.
pub fn unregister(base: *mut u8, size: usize) {
    let mut off = 0;
    while off < size {
        clear((base as usize + off) as *mut u8);
        off += SEGMENT_SIZE;
    }
}

fn set(base: *mut u8, kind: u8) -> bool {
    debug_assert_eq!(base as usize % SEGMENT_SIZE, 0);
    let Some((r, l)) = split(base as usize) else {
        return false;
    };
    let mut leaf = ROOT[r].load(Acquire);
    if leaf == empty_leaf() {
        let size = os::round_up(core::mem::size_of::<Leaf>(), os::page_size()).unwrap_or(0);
        let fresh = os::map_aligned(size, os::page_size(), 0) as *mut Leaf;
        if fresh.is_null() {
            return false;
        }
        match ROOT[r].compare_exchange(empty_leaf(), fresh, AcqRel, Acquire) {
            Ok(_) => leaf = fresh,
            Err(existing) => {
                os::unmap(fresh as *mut u8, size);
                leaf = existing;
            }
        }
    }
    // SAFETY: `leaf` is a live leaf (just installed, or installed by another thread).
    unsafe { (*leaf)[l].store(kind, Release) };
    if kind & BLOCK_BEARING != 0 {
        set_owned(base, true);
    }
    true
}

fn clear(base: *mut u8) {
    let Some((r, l)) = split(base as usize) else {
        return;
    };
    set_owned(base, false);
    let leaf = ROOT[r].load(Acquire);
    if leaf != empty_leaf() {
        // SAFETY: leaves are never unmapped.
        unsafe { (*leaf)[l].store(0, Release) };
    }
}

/// Visit every segment in the map: `f(base, kind)`. The map may change meanwhile; a segment
/// seen may already be gone, so `f` must not read its memory.
pub fn for_each(mut f: impl FnMut(*mut u8, u8)) {
    for (r, root) in ROOT.iter().enumerate() {
        let leaf = root.load(Acquire);
        if leaf == empty_leaf() {
            continue;
        }
        for l in 0..LEAF_LEN {
            // SAFETY: leaves are never unmapped.
            let kind = unsafe { (*leaf)[l].load(Relaxed) };
            if kind != 0 {
                f((((r << LEAF_BITS) | l) << SEGMENT_SHIFT) as *mut u8, kind);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_and_wild_pointers_are_not_ours() {
        let on_stack = 5u64;
        assert!(!owns(&on_stack as *const u64 as *const u8));
        assert!(!owns(core::ptr::null()));
        assert!(!owns(usize::MAX as *const u8));
        assert!(!owns((1usize << 47) as *const u8));
    }

    #[test]
    fn the_empty_leaf_is_never_written() {
        // Far from every mapping of this process (they sit near 0x55.. and 0x7f..): a root
        // entry with no leaf of its own.
        let far = ((1usize << 46) + (123 << SEGMENT_SHIFT)) as *mut u8;
        unregister(far, SEGMENT_SIZE);
        assert!(!owns(far));
        assert!(EMPTY_LEAF.iter().all(|k| k.load(Relaxed) == 0));
    }

    #[test]
    fn register_and_unregister() {
        let base = os::map_aligned(SEGMENT_SIZE, SEGMENT_SIZE, 0);
        assert!(!base.is_null());
        assert!(!owns(base));
        assert!(register(base, SEGMENT_SIZE, PAGES));
        assert!(owns(base));
        assert!(owns(base.wrapping_add(SEGMENT_SIZE - 1)));
        // (Not asserted: that the next segment is not ours. Other tests, running in parallel,
        // map segments next to this one on purpose.)
        let mut seen = 0;
        for_each(|b, k| seen += (b == base && k == PAGES) as u32);
        assert_eq!(seen, 1);
        unregister(base, SEGMENT_SIZE);
        assert!(!owns(base));
        os::unmap(base, SEGMENT_SIZE);
    }

    #[test]
    fn only_a_huge_mappings_first_segment_and_no_wider_address_is_ours() {
        let base = os::map_aligned(2 * SEGMENT_SIZE, SEGMENT_SIZE, 0);
        assert!(!base.is_null());
        assert!(register(base, 2 * SEGMENT_SIZE, HUGE));
        assert!(owns(base));
        assert!(
            !owns(base.wrapping_add(SEGMENT_SIZE)),
            "a HUGE_TAIL segment holds no pointer of ours"
        );
        // The same bits above the 48 the map covers: never ours (a bitmap indexed without the
        // width test would say they were).
        for high in [48, 52, 56, 63] {
            assert!(
                !owns((base as usize | (1 << high)) as *const u8),
                "bit {high}"
            );
        }
        let mut kinds = [0u8; 2];
        for_each(|b, k| {
            for (i, kind) in kinds.iter_mut().enumerate() {
                if b as usize == base as usize + i * SEGMENT_SIZE {
                    *kind = k;
                }
            }
        });
        assert_eq!(kinds, [HUGE, HUGE_TAIL]);
        unregister(base, 2 * SEGMENT_SIZE);
        assert!(!owns(base));
        os::unmap(base, 2 * SEGMENT_SIZE);
    }
}
