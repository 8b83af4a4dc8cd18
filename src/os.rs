//! OS memory: the one place that calls mmap, munmap, mremap and madvise.
//!
//! Contract of every function here: addresses and sizes are multiples of the OS page size
//! (`page_size()`), sizes are non-zero; failures return null or `false`, never abort.
//! Nothing here allocates or takes a lock.

use core::ptr::null_mut;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
/// Bytes currently mapped by us, and bytes ever given back (munmap or MADV_DONTNEED).
static BYTES_MAPPED: AtomicUsize = AtomicUsize::new(0);
static BYTES_RETURNED: AtomicUsize = AtomicUsize::new(0);

/// (bytes mapped now, bytes returned to the OS so far)
pub fn mapping_totals() -> (usize, usize) {
    (BYTES_MAPPED.load(Relaxed), BYTES_RETURNED.load(Relaxed))
}

/// The OS page size, from `sysconf` (4 KiB on x86_64, 4/16/64 KiB on aarch64), never assumed.
#[inline]
pub fn page_size() -> usize {
    let p = PAGE_SIZE.load(Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let p = if p > 0 { p as usize } else { 4096 };
    PAGE_SIZE.store(p, Relaxed);
    p
}

#[inline]
pub fn round_up(n: usize, align: usize) -> Option<usize> {
    debug_assert!(align.is_power_of_two());
    n.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// Map `size` bytes of zeroed, readable and writable memory aligned to `align` (a power of two,
/// at least the page size). Returns null when the OS refuses (out of memory, `RLIMIT_AS`).
///
/// It first asks for exactly `size` bytes at `hint` (where the previous aligned region ended),
/// which is usually aligned already; only if not does it map `size + align` and trim both ends,
/// so a process near its `RLIMIT_AS` is not refused for the sake of alignment slack.
pub fn map_aligned(size: usize, align: usize, hint: usize) -> *mut u8 {
    debug_assert!(size % page_size() == 0 && align.is_power_of_two() && align >= page_size());
    let p = map(size, hint);
    if p.is_null() {
        return null_mut();
    }
    if p as usize & (align - 1) == 0 {
        BYTES_MAPPED.fetch_add(size, Relaxed);
        return p;
    }
    raw_unmap(p, size);
    let Some(over) = size.checked_add(align) else {
        return null_mut();
    };
    let p = map(over, 0);
    if p.is_null() {
        return null_mut();
    }
    let start = (p as usize + align - 1) & !(align - 1);
    let head = start - p as usize;
    let tail = over - head - size;
    if head > 0 {
        raw_unmap(p, head);
    }
    if tail > 0 {
        raw_unmap((start + size) as *mut u8, tail);
    }
    BYTES_MAPPED.fetch_add(size, Relaxed);
    start as *mut u8
}

/// Whether a mapping of `size` bytes could ever be granted to this process, however much it
/// gave back first: not if it is past the address space (47 bits on x86_64 and aarch64 Linux),
/// past `RLIMIT_AS`, or, with no such limit, past RAM and swap together (which the kernel's
/// default overcommit heuristic refuses in one mapping). A refused request that fails this is
/// not worth trimming every heap for (`heap::release_before_failing`): a program that probes
/// sizes under `try: ... except MemoryError` would give back, and fault in again, all it holds
/// at each try.
pub fn could_ever_map(size: usize) -> bool {
    if size >= 1 << 47 {
        return false;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls writing into valid structs of ours.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_AS, &mut limit) == 0
            && limit.rlim_cur != libc::RLIM_INFINITY
        {
            return (size as u64) <= limit.rlim_cur;
        }
        let mut info: libc::sysinfo = core::mem::zeroed();
        if libc::sysinfo(&mut info) != 0 {
            return true;
        }
        let total = (info.totalram as u64)
            .saturating_add(info.totalswap as u64)
            .saturating_mul(info.mem_unit.max(1) as u64);
        (size as u64) <= total
    }
}

fn map(size: usize, hint: usize) -> *mut u8 {
    // Not MAP_NORESERVE: under Linux's default overcommit heuristic that flag skips the check
    // that refuses a single mapping larger than RAM and swap together, so a request that can
    // never be backed (`bytes(256 << 30)` on a 24 GiB machine) was granted and the process
    // killed later when it touched the memory, where glibc (and pymalloc) return NULL and Python
    // raises MemoryError. Without it the kernel refuses such a request, as it does glibc's.
    // SAFETY: an anonymous private mapping with a hint (not MAP_FIXED) cannot clobber anything.
    let p = unsafe {
        libc::mmap(
            hint as *mut libc::c_void,
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        null_mut()
    } else {
        p as *mut u8
    }
}

/// Give (part of) a mapping of ours back to the OS.
pub fn unmap(p: *mut u8, size: usize) {
    if raw_unmap(p, size) {
        BYTES_MAPPED.fetch_sub(size, Relaxed);
        BYTES_RETURNED.fetch_add(size, Relaxed);
    }
}

fn raw_unmap(p: *mut u8, size: usize) -> bool {
    // SAFETY: callers pass a range they mapped and no longer use.
    unsafe { libc::munmap(p as *mut libc::c_void, size) == 0 }
}

/// Drop the contents of a range (it reads as zeros afterwards) and return its physical pages.
pub fn decommit(p: *mut u8, size: usize) -> bool {
    // SAFETY: callers pass a page-aligned range inside one of our mappings holding no live data.
    let ok = unsafe { libc::madvise(p as *mut libc::c_void, size, libc::MADV_DONTNEED) == 0 };
    if ok {
        BYTES_RETURNED.fetch_add(size, Relaxed);
    }
    ok
}

/// Ask the kernel not to back a range with transparent huge pages (best effort).
pub fn no_huge_pages(p: *mut u8, size: usize) {
    // SAFETY: advice only; failure (e.g. THP compiled out) changes nothing.
    unsafe { libc::madvise(p as *mut libc::c_void, size, libc::MADV_NOHUGEPAGE) };
}

/// How many bytes of `[p, p + size)` are resident in physical memory, or None if part of the
/// range is not mapped (it may have been unmapped by another thread meanwhile).
pub fn resident_bytes(p: *mut u8, size: usize) -> Option<usize> {
    let ps = page_size();
    let mut vec = [0u8; 1024];
    let mut resident = 0;
    let mut off = 0;
    while off < size {
        let chunk = (size - off).min(vec.len() * ps);
        // SAFETY: mincore only reads the page tables; `vec` has room for chunk / ps entries.
        let r = unsafe {
            libc::mincore(
                p.wrapping_add(off) as *mut libc::c_void,
                chunk,
                vec.as_mut_ptr(),
            )
        };
        if r != 0 {
            return None;
        }
        resident += vec[..chunk / ps].iter().filter(|&&v| v & 1 != 0).count() * ps;
        off += chunk;
    }
    Some(resident)
}

/// Grow or shrink a mapping without moving it. Returns false if the pages after it are taken.
pub fn resize_in_place(p: *mut u8, old: usize, new: usize) -> bool {
    // SAFETY: `p` is the start of a mapping of `old` bytes; without MREMAP_MAYMOVE the kernel
    // either resizes it where it is or fails.
    let r = unsafe { libc::mremap(p as *mut libc::c_void, old, new, 0) };
    let ok = r != libc::MAP_FAILED;
    if ok {
        adjust_mapped(old, new);
    }
    ok
}

fn adjust_mapped(old: usize, new: usize) {
    if new > old {
        BYTES_MAPPED.fetch_add(new - old, Relaxed);
    } else {
        BYTES_MAPPED.fetch_sub(old - new, Relaxed);
        BYTES_RETURNED.fetch_add(old - new, Relaxed);
    }
}

/// Move the pages of a mapping (`old` bytes at `from`) to `to`, a fresh mapping of `new` bytes,
/// without copying them; `to`'s previous pages are replaced.
pub fn move_mapping(from: *mut u8, old: usize, to: *mut u8, new: usize) -> bool {
    // SAFETY: `to` is a mapping of `new` bytes we own and hold no data in; MREMAP_FIXED
    // replaces it atomically with the pages of `from`, which then stops being mapped.
    let r = unsafe {
        libc::mremap(
            from as *mut libc::c_void,
            old,
            new,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            to as *mut libc::c_void,
        )
    };
    let ok = r != libc::MAP_FAILED;
    if ok {
        // `to`'s own `new` bytes were replaced: what disappeared is `from`'s `old`.
        BYTES_MAPPED.fetch_sub(old, Relaxed);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_mapping_is_aligned_zeroed_and_writable() {
        let align = 4 << 20;
        let p = map_aligned(align, align, 0);
        assert!(!p.is_null());
        assert_eq!(p as usize % align, 0);
        // SAFETY: the mapping is `align` bytes long.
        unsafe {
            assert_eq!(*p.add(align - 1), 0);
            *p.add(12345) = 7;
        }
        assert!(decommit(p, page_size()));
        unmap(p, align);
    }

    #[test]
    fn absurd_sizes_fail_cleanly() {
        assert!(map_aligned(usize::MAX & !(page_size() - 1), 4 << 20, 0).is_null());
        assert!(round_up(usize::MAX, 16).is_none());
    }
}
