//! Size classes: request size -> class index -> block size.
//!
//! | requests        | step            | classes | block sizes                         |
//! |-----------------|-----------------|---------|-------------------------------------|
//! | 0 ..= 512       | 16 bytes        | 32      | 16, 32, 48, ..., 512 (pymalloc's)   |
//! | 513 ..= 8192    | 16 per doubling | 64      | 544, 576, ..., 1024, 1088, ..., 8192 |
//! | 8193 ..= 32768  | 4 per doubling  | 8       | 10240, 12288, 14336, 16384, 20480, ... |
//!
//! Above 512 bytes pymalloc hands requests to glibc, which fits them to 16 bytes. The arrays of
//! lists and of dict key tables mostly live there. Classes 16 per doubling (a block is less than
//! a sixteenth over its request) keep list-heavy programs within 5% of pymalloc's RSS; 4 per
//! doubling, as in mimalloc and jemalloc, cost them up to 10% (`benches/memory.py`, scenario 3).
//! The price is more partly used pages (one per class in use) and more reallocs that move a
//! growing array. Above 8 KiB few blocks are live and a 64 KiB page holds few of them, so the
//! classes stay coarse there.
//!
//! Every block size is a multiple of 16, so every block is 16-byte aligned when its page is.
//! Requests above `SMALL_MAX` are "large" (page spans) or "huge" (their own mapping): see `segment`.

/// Every pointer we hand out is aligned to this.
pub const ALIGNMENT: usize = 16;
/// Requests up to this many bytes use the 16-byte-step classes.
pub const FINE_MAX: usize = 512;
/// Classes below this index are the 16-byte-step ones.
pub const FINE_CLASSES: usize = FINE_MAX / ALIGNMENT;
/// Requests up to this many bytes (above `FINE_MAX`) use classes `MID_STEPS` per doubling.
const MID_MAX: usize = 8 * 1024;
/// Classes per doubling from `FINE_MAX` to `MID_MAX` (4 doublings).
const MID_STEPS: usize = 16;
/// Classes per doubling from `MID_MAX` to `SMALL_MAX` (2 doublings).
const HIGH_STEPS: usize = 4;
/// The largest request served from a size-class page.
pub const SMALL_MAX: usize = 32 * 1024;
/// Total number of size classes.
pub const NUM_CLASSES: usize = FINE_CLASSES + MID_STEPS * 4 + HIGH_STEPS * 2;

const _: () = assert!(FINE_MAX << 4 == MID_MAX && MID_MAX << 2 == SMALL_MAX);
const _: () = assert!(NUM_CLASSES <= u8::MAX as usize + 1);

/// A size class: its index and the size of its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeClass(pub u8);

/// Block size per class, computed at compile time.
pub static BLOCK_SIZES: [u32; NUM_CLASSES] = {
    let mut t = [0u32; NUM_CLASSES];
    let mut c = 0;
    let mut size: usize = 0;
    while c < NUM_CLASSES {
        size += if size < FINE_MAX {
            ALIGNMENT
        } else {
            // Each doubling from `base` to `2 * base` is cut into equal steps.
            let base = 1usize << (usize::BITS - 1 - size.leading_zeros());
            let steps = if size < MID_MAX {
                MID_STEPS
            } else {
                HIGH_STEPS
            };
            base / steps
        };
        t[c] = size as u32;
        c += 1;
    }
    t
};

/// Class index per 16-byte step of request size: `CLASS_OF[(size + 15) >> 4]`, for every
/// `size <= SMALL_MAX` (0 and 1..=16 share class 0). 2 KiB; a request touches one byte of it.
static CLASS_OF: [u8; SMALL_MAX / ALIGNMENT + 1] = {
    let mut t = [0u8; SMALL_MAX / ALIGNMENT + 1];
    let mut i = 1;
    let mut c = 0;
    while i < t.len() {
        let size = i * ALIGNMENT; // the largest request of this step
        while (BLOCK_SIZES[c] as usize) < size {
            c += 1;
        }
        t[i] = c as u8;
        i += 1;
    }
    t
};

impl SizeClass {
    /// The class serving a request of `size` bytes (`size <= SMALL_MAX`). A 0-byte request
    /// gets the smallest class, so it still returns a distinct block.
    #[inline(always)]
    pub fn of(size: usize) -> SizeClass {
        debug_assert!(size <= SMALL_MAX);
        // SAFETY: `(size + 15) >> 4 <= SMALL_MAX / 16`, the table's last index.
        SizeClass(unsafe { *CLASS_OF.get_unchecked((size + 15) >> 4) })
    }

    /// The class of a request of 1..=`FINE_MAX` bytes, with no table: `(size - 1) / 16`, one
    /// compare and one shift (0 bytes, which wraps around, and larger requests get `None`).
    #[inline(always)]
    pub fn fine(size: usize) -> Option<SizeClass> {
        let n = size.wrapping_sub(1);
        if n < FINE_MAX {
            Some(SizeClass((n / ALIGNMENT) as u8))
        } else {
            None
        }
    }

    #[inline(always)]
    pub fn index(self) -> usize {
        self.0 as usize
    }

    #[inline(always)]
    pub fn block_size(self) -> usize {
        BLOCK_SIZES[self.index()] as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_increasing_and_aligned() {
        assert_eq!(BLOCK_SIZES[0], 16);
        assert_eq!(BLOCK_SIZES[FINE_CLASSES - 1], 512);
        assert_eq!(BLOCK_SIZES[FINE_CLASSES], 544);
        assert_eq!(BLOCK_SIZES[NUM_CLASSES - 1] as usize, SMALL_MAX);
        for w in BLOCK_SIZES.windows(2) {
            assert!(w[0] < w[1]);
        }
        for &b in BLOCK_SIZES.iter() {
            assert_eq!(b as usize % ALIGNMENT, 0);
        }
    }

    #[test]
    fn every_size_maps_to_the_smallest_class_that_fits() {
        for size in 0..=SMALL_MAX {
            let c = SizeClass::of(size);
            assert!(c.block_size() >= size.max(1), "size {size}");
            if c.index() > 0 {
                assert!(
                    (BLOCK_SIZES[c.index() - 1] as usize) < size.max(1),
                    "size {size}"
                );
            }
        }
    }

    #[test]
    fn rounding_stays_within_a_sixteenth_up_to_mid_max() {
        // What keeps list and dict arrays near glibc's exact fit (see the module doc).
        for size in FINE_MAX + 1..=MID_MAX {
            let block = SizeClass::of(size).block_size();
            assert!((block - size) * 16 < size, "size {size}: block {block}");
        }
        for size in MID_MAX + 1..=SMALL_MAX {
            let block = SizeClass::of(size).block_size();
            assert!((block - size) * 4 < size, "size {size}: block {block}");
        }
    }

    #[test]
    fn fine_agrees_with_the_table() {
        assert_eq!(SizeClass::fine(0), None);
        assert_eq!(SizeClass::fine(FINE_MAX + 1), None);
        assert_eq!(SizeClass::fine(usize::MAX), None);
        for size in 1..=FINE_MAX {
            assert_eq!(
                SizeClass::fine(size),
                Some(SizeClass::of(size)),
                "size {size}"
            );
        }
    }

    #[test]
    fn boundaries() {
        assert_eq!(SizeClass::of(0), SizeClass(0));
        assert_eq!(SizeClass::of(16), SizeClass(0));
        assert_eq!(SizeClass::of(17), SizeClass(1));
        assert_eq!(SizeClass::of(512).block_size(), 512);
        assert_eq!(SizeClass::of(513).block_size(), 544);
        assert_eq!(SizeClass::of(1025).block_size(), 1088);
        assert_eq!(SizeClass::of(2048).block_size(), 2048);
        assert_eq!(SizeClass::of(2049).block_size(), 2176);
        assert_eq!(SizeClass::of(8192).block_size(), 8192);
        assert_eq!(SizeClass::of(8193).block_size(), 10240);
        assert_eq!(SizeClass::of(SMALL_MAX).block_size(), SMALL_MAX);
        assert_eq!(NUM_CLASSES, 104);
    }
}
