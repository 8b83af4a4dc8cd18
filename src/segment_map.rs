//! The ownership map: which `SEGMENT_SIZE`-aligned regions of the address space are our segments,
//! and what each one is.
//!
//! `owns(p)` answers in O(1) and never reads the memory at `p`, so it is safe on any pointer,
//! ours or pymalloc's or libc's: a width test and one byte of `KINDS`, a flat static array of one
//! byte per segment of the 48-bit user address space. No bit arithmetic: the free hook's whole
//! ownership test is 10 instructions on x86-64, against 12 with a bitmap of one bit per segment.
//!
//! `KINDS` is 64 MiB of zeroed `.bss`: address space only. What is read of it and never written
//! stays the kernel's shared zero page, and a written 4 KiB of it covers 16 GiB of address space
//! (our segments are mapped next to each other, so a process writes one or two such pages). Each
//! 4 KiB of it that has ever been written is marked in `WRITTEN`, so `for_each` reads only those.
//!
//! Invariant: an entry is set from just after its segment is mapped until just before it is
//! unmapped, so no pointer of someone else's mapping can ever be found in the map.
//!
//! Entries say what a segment is (`PAGES`, `HUGE`: the first segment of a huge mapping, which
//! holds its header and its block, `HUGE_TAIL`: the others), so the map alone describes every
//! byte we have mapped: the statistics measure residency from it without reading a header
//! that another thread might be unmapping.

use crate::segment::SEGMENT_SHIFT;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering::*};

const ADDRESS_BITS: u32 = 48;
/// Segments in the address space the map covers.
const SEGMENTS: usize = 1 << (ADDRESS_BITS - SEGMENT_SHIFT);
/// Entries per `WRITTEN` bit: one OS page of `KINDS`.
const CHUNK: usize = 4096;

pub const PAGES: u8 = 1;
pub const HUGE: u8 = 2;
pub const HUGE_TAIL: u8 = 4;
/// Entries whose segment can hold a pointer we handed out.
const BLOCK_BEARING: u8 = PAGES | HUGE;

/// One byte per segment (0: not ours). Plain bytes behind an `UnsafeCell` so the static is a
/// zeroed `.bss` array the compiler need not build element by element; every access goes
/// through `entry`, as an atomic.
#[repr(C, align(4096))]
struct Kinds(UnsafeCell<[u8; SEGMENTS]>);
// SAFETY: every access is an atomic load or store (`entry`).
unsafe impl Sync for Kinds {}
static KINDS: Kinds = Kinds(UnsafeCell::new([0; SEGMENTS]));

/// Bit i set: entries `i * CHUNK ..` have been written at least once (never cleared).
static WRITTEN: [AtomicU64; SEGMENTS / CHUNK / 64] =
    [const { AtomicU64::new(0) }; SEGMENTS / CHUNK / 64];

/// The entry of segment number `seg`.
///
/// # Safety
/// `seg < SEGMENTS`.
#[inline(always)]
unsafe fn entry(seg: usize) -> &'static AtomicU8 {
    // SAFETY: in bounds by the caller's contract; `AtomicU8` has the layout of `u8`, and the
    // array is only ever accessed atomically.
    unsafe { AtomicU8::from_ptr((KINDS.0.get() as *mut u8).add(seg)) }
}

/// Whether `p` lies in one of our segments (for a huge block: the first segment of its
/// mapping, where every pointer we hand out for it lies).
#[inline(always)]
pub fn owns(p: *const u8) -> bool {
    let seg = p as usize >> SEGMENT_SHIFT;
    // SAFETY: `seg < SEGMENTS`, tested first.
    seg < SEGMENTS && unsafe { entry(seg).load(Relaxed) } & BLOCK_BEARING != 0
}

/// Record the mapping of `size` bytes at `base` (aligned to `SEGMENT_SIZE`, `size` a multiple
/// of it): its first segment as `kind`, the rest as `HUGE_TAIL`. Returns false, recording
/// nothing, if the mapping lies beyond the address space the map covers (the caller then
/// unmaps: the memory cannot be used).
pub fn register(base: *mut u8, size: usize, kind: u8) -> bool {
    let first = base as usize >> SEGMENT_SHIFT;
    let count = size >> SEGMENT_SHIFT;
    if first.checked_add(count).is_none_or(|end| end > SEGMENTS) {
        return false;
    }
    for i in 0..count {
        let seg = first + i;
        WRITTEN[seg / CHUNK / 64].fetch_or(1 << (seg / CHUNK % 64), Relaxed);
        let k = if i == 0 { kind } else { HUGE_TAIL };
        // SAFETY: `seg < SEGMENTS`, tested above.
        unsafe { entry(seg).store(k, Release) };
    }
    true
}

/// Forget the mapping of `size` bytes at `base`; call before unmapping it.
pub fn unregister(base: *mut u8, size: usize) {
    let first = base as usize >> SEGMENT_SHIFT;
    for seg in first..(first + (size >> SEGMENT_SHIFT)).min(SEGMENTS) {
        // SAFETY: `seg < SEGMENTS`.
        unsafe { entry(seg).store(0, Release) };
    }
}

/// Visit every segment in the map: `f(base, kind)`. The map may change meanwhile; a segment
/// seen may already be gone, so `f` must not read its memory.
pub fn for_each(mut f: impl FnMut(*mut u8, u8)) {
    for (w, word) in WRITTEN.iter().enumerate() {
        let mut bits = word.load(Acquire);
        while bits != 0 {
            let chunk = w * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            for seg in chunk * CHUNK..(chunk + 1) * CHUNK {
                // SAFETY: `seg < SEGMENTS` (`chunk < SEGMENTS / CHUNK`).
                let kind = unsafe { entry(seg).load(Relaxed) };
                if kind != 0 {
                    f((seg << SEGMENT_SHIFT) as *mut u8, kind);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os;
    use crate::segment::SEGMENT_SIZE;

    #[test]
    fn foreign_and_wild_pointers_are_not_ours() {
        let on_stack = 5u64;
        assert!(!owns(&on_stack as *const u64 as *const u8));
        assert!(!owns(core::ptr::null()));
        assert!(!owns(usize::MAX as *const u8));
        assert!(!owns((1usize << 47) as *const u8));
    }

    #[test]
    fn reading_the_map_marks_nothing_written() {
        // Far from every mapping of this process (they sit near 0x55.. and 0x7f..): a chunk of
        // `KINDS` no one registers in. Asking about it (and unregistering there, as a failed
        // register's undo would) leaves it unmarked, so `for_each` never scans it.
        let far = ((1usize << 46) + (123 << SEGMENT_SHIFT)) as *mut u8;
        assert!(!owns(far));
        unregister(far, SEGMENT_SIZE);
        let chunk = (far as usize >> SEGMENT_SHIFT) / CHUNK;
        assert_eq!(WRITTEN[chunk / 64].load(Relaxed) & (1 << (chunk % 64)), 0);
        // And a mapping that would reach past the map is refused, recording nothing.
        let last = ((SEGMENTS - 1) << SEGMENT_SHIFT) as *mut u8;
        assert!(!register(last, 2 * SEGMENT_SIZE, HUGE));
        assert!(!owns(last));
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
