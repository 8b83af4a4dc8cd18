//! Size classes: request size -> class index -> block size.
//!
//! | requests      | step        | classes | block sizes                    |
//! |---------------|-------------|---------|--------------------------------|
//! | 0 ..= 512     | 16 bytes    | 32      | 16, 32, 48, ..., 512 (pymalloc's) |
//! | 513 ..= 32768 | 4 per power | 24      | 640, 768, 896, 1024, 1280, ...  |
//!
//! Every block size is a multiple of 16, so every block is 16-byte aligned when its page is.
//! Requests above `SMALL_MAX` are "large" (page spans) or "huge" (their own mapping): see `segment`.

/// Every pointer we hand out is aligned to this.
pub const ALIGNMENT: usize = 16;
/// Requests up to this many bytes use the 16-byte-step classes.
pub const FINE_MAX: usize = 512;
/// Classes below this index are the 16-byte-step ones.
pub const FINE_CLASSES: usize = FINE_MAX / ALIGNMENT;
/// The largest request served from a size-class page.
pub const SMALL_MAX: usize = 32 * 1024;
/// Classes per doubling above `FINE_MAX`.
const STEPS_PER_DOUBLING: usize = 4;
/// Total number of size classes.
pub const NUM_CLASSES: usize = FINE_CLASSES + STEPS_PER_DOUBLING * 6; // 512 -> 32 KiB is 6 doublings

const _: () = assert!(FINE_MAX % ALIGNMENT == 0 && SMALL_MAX == FINE_MAX << 6);

/// A size class: its index and the size of its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeClass(pub u8);

/// Block size per class, computed at compile time.
pub static BLOCK_SIZES: [u32; NUM_CLASSES] = {
    let mut t = [0u32; NUM_CLASSES];
    let mut c = 0;
    while c < NUM_CLASSES {
        t[c] = if c < FINE_CLASSES {
            ((c + 1) * ALIGNMENT) as u32
        } else {
            let k = c - FINE_CLASSES;
            let shift = 7 + k / STEPS_PER_DOUBLING; // 512 = 4 << 7
            ((STEPS_PER_DOUBLING + 1 + k % STEPS_PER_DOUBLING) << shift) as u32
        };
        c += 1;
    }
    t
};

/// Requests up to this many bytes find their class in `CLASS_OF` (one load, no arithmetic).
pub const TABLE_MAX: usize = 1024;

/// Class index per 16-byte step of request size: `CLASS_OF[(size + 15) >> 4]`, for
/// `size <= TABLE_MAX` (0 and 1..=16 share class 0).
static CLASS_OF: [u8; TABLE_MAX / ALIGNMENT + 1] = {
    let mut t = [0u8; TABLE_MAX / ALIGNMENT + 1];
    let mut i = 1;
    while i < t.len() {
        let size = i * ALIGNMENT; // the largest request of this step
        let mut c = 0;
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
        if size <= TABLE_MAX {
            // SAFETY: `(size + 15) >> 4 <= TABLE_MAX / 16`, the table's last index.
            SizeClass(unsafe { *CLASS_OF.get_unchecked((size + 15) >> 4) })
        } else {
            Self::coarse(size)
        }
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

    #[inline]
    fn coarse(size: usize) -> SizeClass {
        let n = size - 1;
        let msb = usize::BITS - 1 - n.leading_zeros(); // 9 for 513..=1024
        let sub = (n >> (msb - 2)) & (STEPS_PER_DOUBLING - 1);
        SizeClass((FINE_CLASSES + (msb as usize - 9) * STEPS_PER_DOUBLING + sub) as u8)
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
        assert_eq!(BLOCK_SIZES[FINE_CLASSES], 640);
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
        assert_eq!(SizeClass::of(513).block_size(), 640);
        assert_eq!(SizeClass::of(1025).block_size(), 1280);
        assert_eq!(SizeClass::of(2048).block_size(), 2048);
    }
}
