//! Valgrind memcheck client requests (the `valgrind` cargo feature): tell memcheck which of our
//! memory is a block handed out, of what size, and which is free.
//!
//! Memcheck knows libc's `malloc` but not a pool allocator: to it our segments are plain
//! mappings, all addressable and defined, so a use after free, a read of an uninitialised block
//! or an overflow into the next block of a page goes unnoticed. With the feature on:
//! - every block handed out is a `MALLOCLIKE` block of the requested size (undefined, or
//!   defined for calloc), every free a `FREELIKE`, a realloc in place a `RESIZEINPLACE`;
//! - everything else in our segments is `NOACCESS`: free blocks, never-carved space, free pages,
//!   the slack between a request and its size class, the tail of a huge mapping. The metadata
//!   page (segment header and page descriptors) and a huge block's header stay accessible;
//! - where the allocator itself touches free memory (a free list's `next` word: pop, push,
//!   remote-free stack, carving, purge's relinking, the invariant walker; the checking mode's
//!   side data and patterns) it opens just those bytes, and closes them again.
//!
//! Requests are issued with valgrind's "magic sequence" (`valgrind.h`): a run of rotations that
//! leave a register unchanged, then an exchange of a register with itself; natively it is a
//! no-op that returns the default, under valgrind the JIT recognises it and serves the request
//! whose code and arguments are in the six words the sequence points at. x86_64 and aarch64;
//! elsewhere the requests do nothing. Without the feature every function here compiles to
//! nothing (the free-list accessors to the plain load or store), so the default build's code is
//! the same as before this module existed.
//!
//! The codes are valgrind's ABI (stable across versions): core requests from `valgrind.h`,
//! memcheck's from `memcheck.h` (`VG_USERREQ_TOOL_BASE('M','C')` and up).

#[cfg(feature = "valgrind")]
mod request {
    pub const RUNNING_ON_VALGRIND: usize = 0x1001;
    pub const MALLOCLIKE_BLOCK: usize = 0x1301;
    pub const FREELIKE_BLOCK: usize = 0x1302;
    pub const RESIZEINPLACE_BLOCK: usize = 0x130b;
    const MC: usize = (b'M' as usize) << 24 | (b'C' as usize) << 16;
    pub const MAKE_MEM_NOACCESS: usize = MC;
    pub const MAKE_MEM_UNDEFINED: usize = MC + 1;
    pub const MAKE_MEM_DEFINED: usize = MC + 2;
    pub const GET_VBITS: usize = MC + 8;
    pub const SET_VBITS: usize = MC + 9;

    /// Issue one client request; returns `default` when not running under valgrind.
    ///
    /// # Safety
    /// The arguments are valid for the request: for `GET_VBITS`, valgrind writes `a3` bytes at
    /// `a2`. Every other request used here only changes valgrind's own records.
    #[inline(always)]
    pub unsafe fn send(
        default: usize,
        req: usize,
        a1: usize,
        a2: usize,
        a3: usize,
        a4: usize,
    ) -> usize {
        let args: [usize; 6] = [req, a1, a2, a3, a4, 0];
        magic(default, &args)
    }

    /// x86_64: `rol $3, $13, $61, $51` of rdi (128 bits in all: rdi is unchanged), then
    /// `xchg rbx, rbx`: rdx = request(rax), rdx holding the default beforehand.
    ///
    /// # Safety
    /// As for `send`: `args` is a request valgrind may act on.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn magic(default: usize, args: &[usize; 6]) -> usize {
        let result;
        // SAFETY: natively the sequence changes no register but rdx (our output) and the flags
        // (not preserved: no `preserves_flags`); under valgrind the request reads `args` (hence
        // no `nomem`: the array must be in memory) and writes only what the caller allowed.
        core::arch::asm!(
            "rol rdi, 3",
            "rol rdi, 13",
            "rol rdi, 61",
            "rol rdi, 51",
            "xchg rbx, rbx",
            inout("rdx") default => result,
            in("rax") args.as_ptr(),
            options(nostack),
        );
        result
    }

    /// aarch64: `ror x12, #3, #13, #51, #61` (x12 unchanged), then `orr x10, x10, x10`:
    /// x3 = request(x4), x3 holding the default beforehand.
    ///
    /// # Safety
    /// As for `send`.
    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    unsafe fn magic(default: usize, args: &[usize; 6]) -> usize {
        let result;
        // SAFETY: as for x86_64: natively x12 and x10 end unchanged and x3 is our output.
        core::arch::asm!(
            "ror x12, x12, #3",
            "ror x12, x12, #13",
            "ror x12, x12, #51",
            "ror x12, x12, #61",
            "orr x10, x10, x10",
            inout("x3") default => result,
            in("x4") args.as_ptr(),
            options(nostack),
        );
        result
    }

    /// Other architectures: no requests (valgrind's sequence for them is not written here).
    ///
    /// # Safety
    /// None needed; `unsafe` only to match the other architectures.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    #[inline(always)]
    unsafe fn magic(default: usize, _args: &[usize; 6]) -> usize {
        default
    }
}

// ---- the requests, as safe calls: they change valgrind's records, never memory ------------

/// Whether the process runs under valgrind (always false without the feature).
#[inline(always)]
pub fn running() -> bool {
    #[cfg(feature = "valgrind")]
    // SAFETY: a request that only answers.
    return unsafe { request::send(0, request::RUNNING_ON_VALGRIND, 0, 0, 0, 0) } != 0;
    #[cfg(not(feature = "valgrind"))]
    false
}

/// Block `p` of `size` requested bytes is handed out (`zeroed`: its bytes are defined, as a
/// calloc's). Null is ignored.
#[inline(always)]
pub fn malloc_like(p: *mut u8, size: usize, zeroed: bool) {
    #[cfg(feature = "valgrind")]
    // SAFETY: changes only memcheck's records.
    unsafe {
        request::send(
            0,
            request::MALLOCLIKE_BLOCK,
            p as usize,
            size,
            0,
            zeroed as usize,
        );
    }
    let _ = (p, size, zeroed);
}

/// Block `p` is being freed: memcheck forgets it and reports any later access to it.
#[inline(always)]
pub fn free_like(p: *mut u8) {
    #[cfg(feature = "valgrind")]
    // SAFETY: changes only memcheck's records.
    unsafe {
        request::send(0, request::FREELIKE_BLOCK, p as usize, 0, 0, 0);
    }
    let _ = p;
}

/// Mark `len` bytes at `p` unaddressable.
#[inline(always)]
pub fn noaccess(p: *mut u8, len: usize) {
    #[cfg(feature = "valgrind")]
    // SAFETY: changes only memcheck's records.
    unsafe {
        request::send(0, request::MAKE_MEM_NOACCESS, p as usize, len, 0, 0);
    }
    let _ = (p, len);
}

/// Mark `len` bytes at `p` addressable and undefined (about to be written by the allocator).
#[inline(always)]
pub fn undefined(p: *mut u8, len: usize) {
    #[cfg(feature = "valgrind")]
    // SAFETY: changes only memcheck's records.
    unsafe {
        request::send(0, request::MAKE_MEM_UNDEFINED, p as usize, len, 0, 0);
    }
    let _ = (p, len);
}

/// Mark `len` bytes at `p` addressable and defined (about to be read by the allocator).
#[inline(always)]
pub fn defined(p: *mut u8, len: usize) {
    #[cfg(feature = "valgrind")]
    // SAFETY: changes only memcheck's records.
    unsafe {
        request::send(0, request::MAKE_MEM_DEFINED, p as usize, len, 0, 0);
    }
    let _ = (p, len);
}

// ---- free-list words: the allocator's own accesses to free blocks --------------------------

/// Read the link word of free block `b` (its first 8 bytes), leaving them unaddressable.
///
/// # Safety
/// `b` is a free block of ours (at least 8 bytes, 8-aligned) whose first word is a link.
#[inline(always)]
pub unsafe fn read_link(b: *mut u8) -> *mut u8 {
    defined(b, 8);
    let next = *(b as *mut *mut u8);
    noaccess(b, 8);
    next
}

/// Write the link word of free block `b`, leaving it unaddressable.
///
/// # Safety
/// `b` is a block of ours (at least 8 bytes, 8-aligned) that nobody else uses.
#[inline(always)]
pub unsafe fn write_link(b: *mut u8, next: *mut u8) {
    undefined(b, 8);
    *(b as *mut *mut u8) = next;
    noaccess(b, 8);
}

// ---- blocks that change size -----------------------------------------------------------------

/// The requested size of live block `p`, whose usable size is `usable`: under memcheck, the
/// length of its addressable prefix (the slack after the request is unaddressable), found by
/// bisection with `GET_VBITS` of one byte, which answers 3 for an unaddressable byte and reports
/// nothing. Without the feature, or natively, `usable`.
///
/// # Safety
/// `p` is a live block of ours of `usable` bytes.
#[inline(always)]
pub unsafe fn requested_size(p: *mut u8, usable: usize) -> usize {
    #[cfg(feature = "valgrind")]
    if running() {
        let addressable = |i: usize| {
            let mut vbits = 0u8;
            // SAFETY: GET_VBITS writes one byte into `vbits`.
            let r = unsafe {
                request::send(
                    0,
                    request::GET_VBITS,
                    p.add(i) as usize,
                    &mut vbits as *mut u8 as usize,
                    1,
                    0,
                )
            };
            r != 3
        };
        // The first unaddressable offset in [0, usable], `usable` if none.
        let (mut lo, mut hi) = (0, usable);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if addressable(mid) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        return lo;
    }
    let _ = p;
    usable
}

/// Block `p` was resized in place from usable size `old_usable` to `size` requested bytes:
/// its contents' definedness is kept, a grown tail is undefined, a cut one unaddressable.
///
/// # Safety
/// `p` is a live block of ours, resized in place by the caller.
#[inline(always)]
pub unsafe fn resized_in_place(p: *mut u8, old_usable: usize, size: usize) {
    #[cfg(feature = "valgrind")]
    if running() {
        let old = requested_size(p, old_usable);
        if size == 0 {
            // RESIZEINPLACE refuses a new size of 0.
            free_like(p);
            malloc_like(p, 0, false);
        } else if size != old {
            // SAFETY: changes only memcheck's records.
            unsafe { request::send(0, request::RESIZEINPLACE_BLOCK, p as usize, old, size, 0) };
        }
    }
    let _ = (p, old_usable, size);
}

/// A huge block's record, taken down while its mapping is resized (`detach`, then `attach`):
/// where it ends up is known only afterwards, and a record left at the old address after the
/// kernel unmapped it could, on its removal, mark someone else's new mapping there unaddressable.
/// The definedness of its bytes is kept in a scratch mapping meanwhile.
pub struct Detached {
    #[cfg(feature = "valgrind")]
    inner: Option<(*mut u8, usize, *mut u8)>,
}

/// Take down huge block `p`'s record before resizing its mapping (see `Detached`).
///
/// # Safety
/// `p` is a live huge block of ours of usable size `usable`, owned by the caller.
#[inline(always)]
pub unsafe fn detach(p: *mut u8, usable: usize) -> Detached {
    #[cfg(feature = "valgrind")]
    {
        if !running() {
            return Detached { inner: None };
        }
        let old = requested_size(p, usable);
        let vbits = scratch_map(old);
        if !vbits.is_null() {
            // SAFETY: `vbits` is a fresh mapping of `old` bytes; `[p, p + old)` is addressable.
            unsafe { request::send(0, request::GET_VBITS, p as usize, vbits as usize, old, 0) };
        }
        free_like(p);
        Detached {
            inner: Some((p, old, vbits)),
        }
    }
    #[cfg(not(feature = "valgrind"))]
    {
        let _ = (p, usable);
        Detached {}
    }
}

/// Put a detached record back: at `q` with `size` bytes if the resize succeeded, else where it
/// was. What lies past the block in its mapping is made unaddressable (mremap's new pages
/// arrive addressable).
///
/// # Safety
/// `d` came from `detach` of the huge block now at `q` (or, with `q` null, still at its old
/// place), which the caller owns.
#[inline(always)]
pub unsafe fn attach(d: Detached, q: *mut u8, size: usize) {
    #[cfg(feature = "valgrind")]
    if let Some((p, old, vbits)) = d.inner {
        let (at, n) = if q.is_null() { (p, old) } else { (q, size) };
        malloc_like(at, n, false);
        // SAFETY: `at` is a huge block: its segment header is mapped and ours.
        let cap = unsafe { (*crate::segment::segment_of(at)).mapped } - crate::segment::HUGE_OFFSET;
        noaccess(at.wrapping_add(n), cap.saturating_sub(n));
        if vbits.is_null() {
            defined(at, old.min(n)); // no scratch: no false report, at worst a missed one
        } else {
            // SAFETY: SET_VBITS reads `old.min(n)` bytes of the scratch, which GET_VBITS filled.
            unsafe {
                request::send(
                    0,
                    request::SET_VBITS,
                    at as usize,
                    vbits as usize,
                    old.min(n),
                    0,
                )
            };
            // SAFETY: our own scratch mapping of `old` bytes, no longer used.
            unsafe { libc::munmap(vbits as *mut libc::c_void, old.max(1)) };
        }
    }
    let _ = (d, q, size);
}

/// A private mapping for `len` bytes of saved validity bits (not `os::map_aligned`: it is not
/// the allocator's memory and must not show in its statistics). Null if refused.
#[cfg(feature = "valgrind")]
fn scratch_map(len: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len.max(1),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        core::ptr::null_mut()
    } else {
        p as *mut u8
    }
}
