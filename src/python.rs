//! The Python layer: the `extern "C"` hooks given to `PyMem_SetAllocator`, installing them, and
//! the bindings the `rustmalloc` package wraps. Validation of arguments and the tracemalloc
//! dance live in `python/rustmalloc/__init__.py`; this file only does what needs C.
//!
//! Hooks ignore their `ctx` argument (CPython may pair a new function with an old ctx), never
//! let a panic out (the core's slow paths run under `no_unwind`; its fast paths cannot panic),
//! and hand every pointer we do not own to the allocator that was installed before us, saved in
//! `PREVIOUS` before our hook goes in and never changed after.

use core::cell::UnsafeCell;
use core::ffi::{c_char, c_void};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::*};
use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyValueError};
use pyo3::ffi::{self, PyMemAllocatorDomain, PyMemAllocatorEx};
use pyo3::prelude::*;

use crate::{owns, owns_block_start, MEM, OBJ, RAW};

/// The allocators we replaced, per domain; written once, under the GIL, before our hook for
/// that domain is set, and only read afterwards.
struct Saved(UnsafeCell<[PyMemAllocatorEx; 3]>);
// SAFETY: each entry is written before the hook that reads it is installed, and never again.
unsafe impl Sync for Saved {}

const EMPTY: PyMemAllocatorEx = PyMemAllocatorEx {
    ctx: null_mut(),
    malloc: None,
    calloc: None,
    realloc: None,
    free: None,
};
static PREVIOUS: Saved = Saved(UnsafeCell::new([EMPTY; 3]));
/// What each domain had when we first installed anything: a later install of another domain
/// must find the same, or some other hook came in between.
static ORIGINAL: Saved = Saved(UnsafeCell::new([EMPTY; 3]));
/// Bit d set: our hooks are in domain d.
static INSTALLED: AtomicU8 = AtomicU8::new(0);
/// The hooks installed only forward to the previous allocator (benchmark floor).
static FORWARD_ONLY: AtomicBool = AtomicBool::new(false);
/// The allocator before us is CPython's debug hooks: ownership is tested with
/// `owns_block_start` (set by the first install).
static STRICT_OWNERSHIP: AtomicBool = AtomicBool::new(false);

#[inline(always)]
fn previous(domain: usize) -> &'static PyMemAllocatorEx {
    // SAFETY: see `Saved`; hooks only run for installed domains, whose entry is final.
    unsafe { &(*PREVIOUS.0.get())[domain] }
}

// ---- RAW: any thread, GIL or not ---------------------------------------------------------

extern "C" fn raw_malloc(_ctx: *mut c_void, size: usize) -> *mut c_void {
    crate::raw_malloc(size) as *mut c_void
}

extern "C" fn raw_calloc(_ctx: *mut c_void, n: usize, size: usize) -> *mut c_void {
    crate::raw_calloc(n, size) as *mut c_void
}

/// The realloc and free hooks of one domain, with `$owns` as the ownership test: `owns` normally,
/// `owns_block_start` when the allocator before us is CPython's debug hooks (see there; a block
/// of theirs can lie inside one of ours).
macro_rules! raw_free_hooks {
    ($owns:path, $realloc:ident, $free:ident) => {
        extern "C" fn $realloc(_ctx: *mut c_void, p: *mut c_void, size: usize) -> *mut c_void {
            if p.is_null() {
                return raw_malloc(_ctx, size);
            }
            if $owns(p as *const u8) {
                // SAFETY: `p` is a live block of ours (the caller passes only live pointers).
                return unsafe { crate::raw_realloc(p as *mut u8, size) } as *mut c_void;
            }
            forward_realloc(RAW, p, size)
        }
        extern "C" fn $free(_ctx: *mut c_void, p: *mut c_void) {
            // NULL is not ours: `forward_free` ignores it (see the MEM/OBJ hooks).
            if $owns(p as *const u8) {
                // SAFETY: as in the realloc hook.
                unsafe { crate::raw_free(p as *mut u8) };
            } else {
                forward_free(RAW, p);
            }
        }
    };
}
raw_free_hooks!(owns, raw_realloc, raw_free);
raw_free_hooks!(owns_block_start, raw_realloc_strict, raw_free_strict);

// ---- MEM and OBJ: the GIL is held ---------------------------------------------------------

macro_rules! gil_hooks {
    ($domain:expr, $malloc:ident, $calloc:ident) => {
        extern "C" fn $malloc(_ctx: *mut c_void, size: usize) -> *mut c_void {
            // SAFETY: CPython calls MEM/OBJ with the GIL held.
            unsafe { crate::gil_malloc($domain, size) as *mut c_void }
        }
        extern "C" fn $calloc(_ctx: *mut c_void, n: usize, size: usize) -> *mut c_void {
            // SAFETY: as above.
            unsafe { crate::gil_calloc($domain, n, size) as *mut c_void }
        }
    };
}

/// As `raw_free_hooks`, for MEM and OBJ.
macro_rules! gil_free_hooks {
    ($domain:expr, $owns:path, $malloc:ident, $realloc:ident, $free:ident) => {
        extern "C" fn $realloc(_ctx: *mut c_void, p: *mut c_void, size: usize) -> *mut c_void {
            if p.is_null() {
                return $malloc(_ctx, size);
            }
            if $owns(p as *const u8) {
                // SAFETY: the GIL is held and `p` is a live block of ours.
                return unsafe { crate::gil_realloc($domain, p as *mut u8, size) as *mut c_void };
            }
            forward_realloc($domain, p, size)
        }
        extern "C" fn $free(_ctx: *mut c_void, p: *mut c_void) {
            // NULL is not ours: it goes to `forward_free`, which does nothing with it; the fast
            // path pays no separate test for it.
            if $owns(p as *const u8) {
                // SAFETY: as above. Whichever heap owns the block gets it back, so a MEM/OBJ
                // (or RAW) mix-up cannot corrupt anything.
                unsafe { crate::gil_free($domain, p as *mut u8) };
            } else {
                forward_free($domain, p);
            }
        }
    };
}
gil_hooks!(MEM, mem_malloc, mem_calloc);
gil_hooks!(OBJ, obj_malloc, obj_calloc);
gil_free_hooks!(MEM, owns, mem_malloc, mem_realloc, mem_free);
gil_free_hooks!(OBJ, owns, obj_malloc, obj_realloc, obj_free);
gil_free_hooks!(
    MEM,
    owns_block_start,
    mem_malloc,
    mem_realloc_strict,
    mem_free_strict
);
gil_free_hooks!(
    OBJ,
    owns_block_start,
    obj_malloc,
    obj_realloc_strict,
    obj_free_strict
);

// `extern "C"` (it cannot unwind; a panic here would abort in the hook anyway): the hooks then
// reach it by a tail call, with no landing pad and no stack frame on their fast paths.
#[cold]
#[inline(never)]
extern "C" fn forward_free(domain: usize, p: *mut c_void) {
    if p.is_null() {
        return; // free(NULL) does nothing, and is not a foreign free
    }
    let prev = previous(domain);
    // SAFETY: counting touches only this caller's counters; `p` is the previous allocator's.
    unsafe { crate::count_foreign(domain, false) };
    if let Some(free) = prev.free {
        free(prev.ctx, p);
    }
}

#[cold]
#[inline(never)]
extern "C" fn forward_realloc(domain: usize, p: *mut c_void, size: usize) -> *mut c_void {
    let prev = previous(domain);
    // SAFETY: as in `forward_free`.
    unsafe { crate::count_foreign(domain, true) };
    match prev.realloc {
        Some(realloc) => realloc(prev.ctx, p, size),
        None => null_mut(),
    }
}

// ---- Forward-only hooks: the floor cost of being a hook (a benchmark configuration) ---------

macro_rules! forward_hooks {
    ($domain:expr, $malloc:ident, $calloc:ident, $realloc:ident, $free:ident) => {
        extern "C" fn $malloc(_ctx: *mut c_void, size: usize) -> *mut c_void {
            let prev = previous($domain);
            prev.malloc.map_or(null_mut(), |f| f(prev.ctx, size))
        }
        extern "C" fn $calloc(_ctx: *mut c_void, n: usize, size: usize) -> *mut c_void {
            let prev = previous($domain);
            prev.calloc.map_or(null_mut(), |f| f(prev.ctx, n, size))
        }
        extern "C" fn $realloc(_ctx: *mut c_void, p: *mut c_void, size: usize) -> *mut c_void {
            let prev = previous($domain);
            prev.realloc.map_or(null_mut(), |f| f(prev.ctx, p, size))
        }
        extern "C" fn $free(_ctx: *mut c_void, p: *mut c_void) {
            let prev = previous($domain);
            if let Some(f) = prev.free {
                f(prev.ctx, p)
            }
        }
    };
}
forward_hooks!(
    RAW,
    fwd_raw_malloc,
    fwd_raw_calloc,
    fwd_raw_realloc,
    fwd_raw_free
);
forward_hooks!(
    MEM,
    fwd_mem_malloc,
    fwd_mem_calloc,
    fwd_mem_realloc,
    fwd_mem_free
);
forward_hooks!(
    OBJ,
    fwd_obj_malloc,
    fwd_obj_calloc,
    fwd_obj_realloc,
    fwd_obj_free
);

// ---- Checking-mode hooks (see check.rs): chosen at the first install, never on the fast path --

fn gil_missing(function: &'static str) -> bool {
    // SAFETY: PyGILState_Check may be called from any thread.
    if unsafe { ffi::PyGILState_Check() } != 0 {
        return false;
    }
    crate::check::report(
        format_args!(
        "{function} called by a thread that does not hold the GIL (a C extension bug); in warn \
         mode the call is served by the thread-safe RAW heap"
    ),
        crate::check::Stack::Here,
    );
    true
}

/// `check::STACK_WRITER`: the calling thread's Python stack, written to stderr by CPython's
/// `_Py_DumpTraceback` — faulthandler's writer, made to run in a signal handler: it allocates
/// nothing, takes no lock and runs no Python code, so a report from inside a free may call it.
/// It reads this thread's own frames, which do not change while this thread is in the
/// allocator, and their code objects; so the GIL is not needed (faulthandler does the same from
/// a signal handler). One known imprecision without the GIL: a code object's line table may be
/// built lazily by another thread that is tracing at that moment, and a line number read then
/// can be wrong (or the read stray past the table being built). Threads without a Python thread
/// state get nothing.
extern "C" fn write_python_stack() {
    let dump = DUMP_TRACEBACK.load(Relaxed);
    if dump == 0 {
        return;
    }
    // At shutdown, `Py_FinalizeEx` frees the thread states of daemon threads while their
    // thread-specific slot still points at them: write no stack then.
    let finalizing = IS_FINALIZING.load(Relaxed);
    if finalizing == 0 {
        return;
    }
    // SAFETY: `_Py_IsFinalizing(void) -> int`, found by dlsym; it reads one runtime field.
    if unsafe { core::mem::transmute::<usize, extern "C" fn() -> libc::c_int>(finalizing)() } != 0 {
        return;
    }
    // SAFETY: callable from any thread, with or without the GIL; it reads a thread-specific key.
    let tstate = unsafe { ffi::PyGILState_GetThisThreadState() };
    if tstate.is_null() {
        return;
    }
    // SAFETY: `dump` is `_Py_DumpTraceback(int fd, PyThreadState *tstate)`, found by dlsym.
    unsafe {
        let dump: extern "C" fn(libc::c_int, *mut ffi::PyThreadState) = core::mem::transmute(dump);
        dump(2, tstate);
    }
}

/// `_Py_DumpTraceback` and `_Py_IsFinalizing`, looked up at install (exported by CPython 3.11,
/// but internal: their absence must not stop the module from loading; without both, no stack).
static DUMP_TRACEBACK: AtomicUsize = AtomicUsize::new(0);
static IS_FINALIZING: AtomicUsize = AtomicUsize::new(0);

/// For the checking hooks: `p`, handed to a free or realloc hook and not a live block of ours,
/// is not the allocator before us's either (`check::not_a_block`): it lies in our segments
/// (unless that allocator is CPython's debug hooks, whose blocks can lie inside ours, see
/// `owns_block_start`), or it is a huge block of ours freed lately.
fn not_ours_to_forward(p: *const u8) -> bool {
    if crate::owns(p) {
        !STRICT_OWNERSHIP.load(Relaxed)
    } else {
        crate::check::freed_huge_lately(p)
    }
}

/// The checking hooks of one domain: `gil` says whether the domain needs the GIL (MEM, OBJ).
macro_rules! checking {
    ($domain:expr, $gil:expr, $names:expr, $malloc:ident, $calloc:ident, $realloc:ident, $free:ident) => {
        extern "C" fn $malloc(_ctx: *mut c_void, size: usize) -> *mut c_void {
            let raw = $domain == RAW || ($gil && gil_missing($names[0]));
            crate::check::malloc(size, false, |n| alloc_for($domain, raw, n)) as *mut c_void
        }
        extern "C" fn $calloc(_ctx: *mut c_void, n: usize, size: usize) -> *mut c_void {
            let Some(total) = n.checked_mul(size) else {
                return null_mut();
            };
            let raw = $domain == RAW || ($gil && gil_missing($names[1]));
            crate::check::malloc(total, true, |n| alloc_for($domain, raw, n)) as *mut c_void
        }
        extern "C" fn $realloc(_ctx: *mut c_void, p: *mut c_void, size: usize) -> *mut c_void {
            if p.is_null() {
                return $malloc(_ctx, size);
            }
            // The GIL test first: a foreign MEM/OBJ block (pymalloc's) handed on without the
            // GIL corrupts pymalloc just as well.
            let raw = $domain == RAW || ($gil && gil_missing($names[2]));
            let call = crate::check::Call {
                function: $names[2],
            };
            if !owns_block_start(p as *const u8) {
                if not_ours_to_forward(p as *const u8) {
                    crate::check::not_a_block(p as *mut u8, &call);
                    return null_mut(); // warn mode: `p` is left alone
                }
                return forward_realloc($domain, p, size);
            }
            // SAFETY: `p` is ours; `free_for` routes each block to its owner.
            unsafe {
                crate::check::realloc(
                    p as *mut u8,
                    size,
                    &call,
                    |n| alloc_for($domain, raw, n),
                    |q| free_for($domain, raw, q),
                ) as *mut c_void
            }
        }
        extern "C" fn $free(_ctx: *mut c_void, p: *mut c_void) {
            if p.is_null() {
                return;
            }
            // As in the realloc hook: the GIL test first.
            let raw = $domain == RAW || ($gil && gil_missing($names[3]));
            let call = crate::check::Call {
                function: $names[3],
            };
            if !owns_block_start(p as *const u8) {
                if not_ours_to_forward(p as *const u8) {
                    crate::check::not_a_block(p as *mut u8, &call);
                    return; // warn mode: `p` is left alone
                }
                return forward_free($domain, p);
            }
            // SAFETY: as above.
            unsafe { crate::check::free(p as *mut u8, &call, |q| free_for($domain, raw, q)) }
        }
    };
}

/// Allocate for a checking hook: from the GIL heap, or from RAW when the GIL is not held.
fn alloc_for(domain: usize, raw: bool, n: usize) -> *mut u8 {
    if raw {
        crate::raw_malloc(n)
    } else {
        // SAFETY: the GIL is held (checked by the caller).
        unsafe { crate::gil_malloc(domain, n) }
    }
}

fn free_for(domain: usize, raw: bool, p: *mut u8) {
    // SAFETY: `p` is a live block of ours leaving the quarantine; both route it to its owner.
    unsafe {
        if raw {
            crate::raw_free(p)
        } else {
            crate::gil_free(domain, p)
        }
    }
}

const RAW_NAMES: [&str; 4] = [
    "PyMem_RawMalloc",
    "PyMem_RawCalloc",
    "PyMem_RawRealloc",
    "PyMem_RawFree",
];
const MEM_NAMES: [&str; 4] = [
    "PyMem_Malloc",
    "PyMem_Calloc",
    "PyMem_Realloc",
    "PyMem_Free",
];
const OBJ_NAMES: [&str; 4] = [
    "PyObject_Malloc",
    "PyObject_Calloc",
    "PyObject_Realloc",
    "PyObject_Free",
];
checking!(
    RAW,
    false,
    RAW_NAMES,
    chk_raw_malloc,
    chk_raw_calloc,
    chk_raw_realloc,
    chk_raw_free
);
checking!(
    MEM,
    true,
    MEM_NAMES,
    chk_mem_malloc,
    chk_mem_calloc,
    chk_mem_realloc,
    chk_mem_free
);
checking!(
    OBJ,
    true,
    OBJ_NAMES,
    chk_obj_malloc,
    chk_obj_calloc,
    chk_obj_realloc,
    chk_obj_free
);

type Hooks = (
    extern "C" fn(*mut c_void, usize) -> *mut c_void,
    extern "C" fn(*mut c_void, usize, usize) -> *mut c_void,
    extern "C" fn(*mut c_void, *mut c_void, usize) -> *mut c_void,
    extern "C" fn(*mut c_void, *mut c_void),
);

fn hooks(domain: usize, forward_only: bool, checking: bool, strict: bool) -> PyMemAllocatorEx {
    let (malloc, calloc, realloc, free): Hooks = match (domain, forward_only, checking) {
        (RAW, true, _) => (
            fwd_raw_malloc,
            fwd_raw_calloc,
            fwd_raw_realloc,
            fwd_raw_free,
        ),
        (MEM, true, _) => (
            fwd_mem_malloc,
            fwd_mem_calloc,
            fwd_mem_realloc,
            fwd_mem_free,
        ),
        (_, true, _) => (
            fwd_obj_malloc,
            fwd_obj_calloc,
            fwd_obj_realloc,
            fwd_obj_free,
        ),
        (RAW, _, true) => (
            chk_raw_malloc,
            chk_raw_calloc,
            chk_raw_realloc,
            chk_raw_free,
        ),
        (MEM, _, true) => (
            chk_mem_malloc,
            chk_mem_calloc,
            chk_mem_realloc,
            chk_mem_free,
        ),
        (_, _, true) => (
            chk_obj_malloc,
            chk_obj_calloc,
            chk_obj_realloc,
            chk_obj_free,
        ),
        (RAW, _, _) if strict => (raw_malloc, raw_calloc, raw_realloc_strict, raw_free_strict),
        (MEM, _, _) if strict => (mem_malloc, mem_calloc, mem_realloc_strict, mem_free_strict),
        (_, _, _) if strict => (obj_malloc, obj_calloc, obj_realloc_strict, obj_free_strict),
        (RAW, _, _) => (raw_malloc, raw_calloc, raw_realloc, raw_free),
        (MEM, _, _) => (mem_malloc, mem_calloc, mem_realloc, mem_free),
        (_, _, _) => (obj_malloc, obj_calloc, obj_realloc, obj_free),
    };
    PyMemAllocatorEx {
        ctx: null_mut(),
        malloc: Some(malloc),
        calloc: Some(calloc),
        realloc: Some(realloc),
        free: Some(free),
    }
}

fn ffi_domain(domain: usize) -> PyMemAllocatorDomain {
    match domain {
        RAW => PyMemAllocatorDomain::PYMEM_DOMAIN_RAW,
        MEM => PyMemAllocatorDomain::PYMEM_DOMAIN_MEM,
        _ => PyMemAllocatorDomain::PYMEM_DOMAIN_OBJ,
    }
}

fn current(domain: usize) -> PyMemAllocatorEx {
    let mut a = EMPTY;
    // SAFETY: PyMem_GetAllocator only writes the struct; the GIL is held by our caller.
    unsafe { ffi::PyMem_GetAllocator(ffi_domain(domain), &mut a) };
    a
}

fn same(a: &PyMemAllocatorEx, b: &PyMemAllocatorEx) -> bool {
    a.ctx == b.ctx
        && a.malloc.map(|f| f as usize) == b.malloc.map(|f| f as usize)
        && a.calloc.map(|f| f as usize) == b.calloc.map(|f| f as usize)
        && a.realloc.map(|f| f as usize) == b.realloc.map(|f| f as usize)
        && a.free.map(|f| f as usize) == b.free.map(|f| f as usize)
}

/// CPython's name for the allocators in place ("pymalloc", "malloc", "pymalloc_debug",
/// "malloc_debug"), or None when some other hook is installed. The function is exported by
/// 3.8+, but looked up at run time so its absence cannot stop the module from loading.
fn current_allocator_name() -> Option<String> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name; the symbol, if found, has the
    // signature `const char *(void)` and returns a static string or NULL.
    unsafe {
        let sym = libc::dlsym(
            libc::RTLD_DEFAULT,
            c"_PyMem_GetCurrentAllocatorName".as_ptr(),
        );
        if sym.is_null() {
            return Some("unknown".into());
        }
        let f: extern "C" fn() -> *const c_char = core::mem::transmute(sym);
        let name = f();
        if name.is_null() {
            None
        } else {
            Some(
                core::ffi::CStr::from_ptr(name)
                    .to_string_lossy()
                    .into_owned(),
            )
        }
    }
}

/// Install our hooks into the domains whose bit is set in `mask` (bit 0 RAW, 1 MEM, 2 OBJ).
/// Arguments are validated by the Python wrapper, which also deals with tracemalloc.
///
/// `forward_only` installs hooks that hand every call to the previous allocator: the cost of
/// being a hook and nothing else, for the benchmarks. It is fixed by the first install.
///
/// `check` is the checking mode (0 off, 1 report and abort, 2 report and go on), also fixed by
/// the first install: blocks handed out before cannot gain canaries.
#[pyfunction]
#[pyo3(signature = (mask, forward_only = false, check = 0))]
fn _install(py: Python<'_>, mask: u8, forward_only: bool, check: u8) -> PyResult<()> {
    if py.version_info() >= (3, 12) {
        return Err(PyRuntimeError::new_err(
            "rustmalloc supports CPython 3.9-3.11: from 3.12 a per-interpreter GIL (PEP 684) makes \
             the MEM and OBJ domains need thread safety that rustmalloc does not provide yet",
        ));
    }
    if crate::os::page_size() > crate::segment::PAGE_SIZE {
        return Err(PyRuntimeError::new_err(format!(
            "rustmalloc needs an OS page size of at most {} bytes; this system's is {}",
            crate::segment::PAGE_SIZE,
            crate::os::page_size()
        )));
    }
    let have = INSTALLED.load(Acquire);
    if have != 0 && forward_only != FORWARD_ONLY.load(Relaxed) {
        return Err(PyRuntimeError::new_err(
            "rustmalloc is already installed in the other mode (forwarding or allocating); \
             the mode is fixed by the first install() of the process",
        ));
    }
    let todo = mask & !have;
    if todo == 0 {
        return Ok(());
    }
    if have != 0 && check != crate::check::MODE.load(Relaxed) {
        return Err(PyRuntimeError::new_err(
            "the checking mode is fixed by the first install() of the process (blocks handed \
             out before cannot gain canaries): call install() with the same check= value",
        ));
    }
    if check > crate::check::WARN {
        return Err(PyRuntimeError::new_err(
            "check must be 0 (off), 1 (abort) or 2 (warn)",
        ));
    }
    FORWARD_ONLY.store(forward_only, Relaxed);
    crate::check::MODE.store(check, Relaxed);
    if check != crate::check::OFF {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name.
        let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_Py_DumpTraceback".as_ptr()) };
        DUMP_TRACEBACK.store(sym as usize, Relaxed);
        // SAFETY: as above.
        let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_Py_IsFinalizing".as_ptr()) };
        IS_FINALIZING.store(sym as usize, Relaxed);
        crate::check::STACK_WRITER.store(write_python_stack as *const () as usize, Relaxed);
    }
    if have == 0 {
        match current_allocator_name() {
            Some(name) => {
                // CPython's debug hooks hand out blocks that can lie inside ours (see
                // `owns_block_start`): then every free and realloc checks for a block start.
                STRICT_OWNERSHIP.store(name.ends_with("_debug"), Relaxed);
                // SAFETY: under the GIL, before any of our hooks exists.
                let original = unsafe { &mut *ORIGINAL.0.get() };
                for (d, slot) in original.iter_mut().enumerate() {
                    *slot = current(d);
                }
            }
            None => return Err(other_hook_error()),
        }
    }
    // SAFETY: read under the GIL; written only above.
    let original = unsafe { &*ORIGINAL.0.get() };
    for d in 0..3 {
        if todo & (1 << d) != 0 && !same(&current(d), &original[d]) {
            return Err(other_hook_error());
        }
    }
    crate::raw_heap::init();
    for d in 0..3 {
        if todo & (1 << d) == 0 {
            continue;
        }
        // SAFETY: under the GIL; the previous allocator is saved before our hook can run, and
        // PyMem_SetAllocator copies the struct.
        unsafe {
            (*PREVIOUS.0.get())[d] = current(d);
            // Seen by any thread before our hook is (no reordering on weakly ordered CPUs; a
            // RAW hook may run on another thread at once). The reading side is not fenced:
            // that would cost every foreign free.
            core::sync::atomic::fence(SeqCst);
            let strict = STRICT_OWNERSHIP.load(Relaxed);
            let mut mine = hooks(d, forward_only, check != crate::check::OFF, strict);
            // Our hooks ignore their context; given the previous allocator's, a thread that
            // reads the struct while PyMem_SetAllocator copies it field by field (a RAW call
            // from a thread without the GIL) pairs either allocator's functions with a context
            // they accept. Under CPython's debug hooks, whose context is not null, a null one
            // would crash theirs.
            mine.ctx = (*PREVIOUS.0.get())[d].ctx;
            ffi::PyMem_SetAllocator(ffi_domain(d), &mut mine);
        }
        INSTALLED.fetch_or(1 << d, Release);
    }
    Ok(())
}

fn other_hook_error() -> PyErr {
    PyRuntimeError::new_err(
        "another memory allocator hook is installed (for example memray, or a C extension's \
         PyMem_SetAllocator hook): rustmalloc must wrap CPython's own allocators. Install \
         rustmalloc before that tool starts, or run without it.",
    )
}

/// Bit mask of the domains our hooks are in.
#[pyfunction]
fn _installed_mask() -> u8 {
    INSTALLED.load(Acquire)
}

/// The field order of each domain tuple `_snapshot` returns.
const DOMAIN_FIELDS: [&str; 14] = [
    "blocks_in_use",
    "bytes_in_use",
    "peak_bytes_in_use",
    "allocs",
    "callocs",
    "reallocs",
    "frees",
    "foreign_frees",
    "foreign_reallocs",
    "large_allocs",
    "large_blocks_in_use",
    "large_bytes_in_use",
    "bytes_allocated",
    "bytes_freed",
];

type DomainTuple = Vec<u64>;
type ClassTuple = (usize, usize, u64, u64, u64, u64);
type OsTuple = (usize, usize, usize, usize, usize, usize, u64);

/// Everything the statistics report, as plain tuples the Python layer names:
/// (domains: one `DOMAIN_FIELDS` tuple per domain,
///  classes: (domain, class, block_size, blocks_in_use, blocks_free, pages) for each class
///           with pages or live blocks,
///  os: (bytes_mapped, bytes_returned, bytes_resident, segments, segments_peak,
///       bytes_refaulted, the MEM/OBJ heap's purge delay in force),
///  heaps: (RAW heaps created, abandoned)).
#[pyfunction]
fn _snapshot(_py: Python<'_>) -> (Vec<DomainTuple>, Vec<ClassTuple>, OsTuple, (usize, usize)) {
    // SAFETY: `Python<'_>` proves the GIL is held.
    let sum = unsafe { crate::summary() };
    let domains = (0..3)
        .map(|d| {
            let t = sum.domain(d);
            vec![
                t.blocks_in_use,
                t.bytes_in_use,
                t.peak_bytes_in_use,
                t.allocs,
                t.callocs,
                t.reallocs,
                t.frees,
                t.foreign_frees,
                t.foreign_reallocs,
                t.large_allocs,
                t.large_blocks_in_use,
                t.large_bytes_in_use,
                t.bytes_allocated,
                t.bytes_freed,
            ]
        })
        .collect();
    let mut classes = Vec::new();
    for d in 0..3 {
        for c in 0..crate::size_class::NUM_CLASSES {
            let t = sum.class(d, c);
            if t.pages != 0 || t.blocks_in_use != 0 {
                let bs = crate::size_class::BLOCK_SIZES[c] as u64;
                classes.push((d, c, bs, t.blocks_in_use, t.blocks_free, t.pages));
            }
        }
    }
    let o = crate::os_totals();
    let os = (
        o.bytes_mapped,
        o.bytes_returned,
        o.bytes_resident,
        o.segments,
        o.segments_peak,
        o.bytes_refaulted,
        // SAFETY: `Python<'_>` proves the GIL is held.
        unsafe { crate::gil_purge_delay_ms() },
    );
    (domains, classes, os, crate::raw_heap::heap_counts())
}

/// Process-wide running totals for `track()`: (bytes allocated, bytes freed, blocks allocated,
/// blocks freed, bytes live, peak of bytes live since the last reset), all domains.
#[pyfunction]
fn _track_totals(_py: Python<'_>) -> (u64, u64, u64, u64, u64, u64) {
    // SAFETY: `Python<'_>` proves the GIL is held.
    let sum = unsafe { crate::summary() };
    let mut t = (0u64, 0u64, 0u64, 0u64, sum.live_all(), sum.peak_all);
    for d in 0..3 {
        let x = sum.domain(d);
        t.0 += x.bytes_allocated;
        t.1 += x.bytes_freed;
        t.2 += x.allocs;
        t.3 += x.frees;
    }
    t
}

/// The checking mode in force (0 off, 1 abort, 2 warn): fixed by the first install.
#[pyfunction]
fn _check_mode_in_force() -> u8 {
    crate::check::MODE.load(Relaxed)
}

/// Whether the hooks in force only forward to the previous allocator (`_install_forward_only`).
#[pyfunction]
fn _forward_only_in_force() -> bool {
    FORWARD_ONLY.load(Relaxed)
}

/// Restart the per-domain peaks (`stats()`'s) from the current figures.
#[pyfunction]
fn _reset_peak() {
    crate::reset_peak();
}

/// Restart the all-domains peak (`track()`'s) from the current figures.
#[pyfunction]
fn _reset_track_peak() {
    crate::reset_peak_all();
}

/// Give back to the OS all that can be now; returns the bytes given back.
#[pyfunction]
fn _trim(_py: Python<'_>) -> usize {
    // SAFETY: `Python<'_>` proves the GIL is held.
    crate::no_unwind(0, || unsafe { crate::trim() })
}

/// Set the purge policy (validated by the Python wrapper).
#[pyfunction]
fn _configure(enabled: bool, delay_ms: u64, retain_bytes: u64) {
    crate::purge::configure(enabled, delay_ms, retain_bytes);
}

/// Whether an idle purger thread is running in this process (see `_idle_purger_claim`).
static IDLE_PURGER_RUNNING: AtomicBool = AtomicBool::new(false);
/// The longest and shortest sleep between two idle ticks, in ms: a heap with nothing to give
/// back is looked at again after the longest (a new free is seen then).
const IDLE_TICK_MAX_MS: u64 = 1000;
const IDLE_TICK_MIN_MS: u64 = 10;

/// One tick of the idle purger thread (`rustmalloc._idle`): returns the seconds to sleep
/// before the next, or 0 when the thread should end (the idle purger was turned off, or nothing
/// is installed), marking it ended in the same call, under the GIL, so a `configure()` that
/// turns it on again never finds a thread that is about to end.
#[pyfunction]
fn _idle_tick(_py: Python<'_>) -> f64 {
    if !crate::purge::IDLE_PURGE.load(Relaxed) || INSTALLED.load(Relaxed) == 0 {
        IDLE_PURGER_RUNNING.store(false, Relaxed);
        return 0.0;
    }
    // SAFETY: `Python<'_>` proves the GIL is held.
    let wait = crate::no_unwind(None, || unsafe { crate::idle_tick() });
    wait.unwrap_or(IDLE_TICK_MAX_MS)
        .clamp(IDLE_TICK_MIN_MS, IDLE_TICK_MAX_MS) as f64
        / 1000.0
}

/// True if the caller should start the idle purger thread: it is on, none runs (then one is
/// counted as running) and our hooks are not the forward-only ones. Under the GIL, as every
/// change to the flag.
#[pyfunction]
fn _idle_purger_claim(_py: Python<'_>) -> bool {
    // Not behind the forward-only hooks: no heap of ours is in use then.
    if crate::purge::IDLE_PURGE.load(Relaxed)
        && !IDLE_PURGER_RUNNING.load(Relaxed)
        && !FORWARD_ONLY.load(Relaxed)
    {
        IDLE_PURGER_RUNNING.store(true, Relaxed);
        true
    } else {
        false
    }
}

/// `_thread.start_new_thread(func, args)` with the RAW domain handed back to the allocator
/// before ours for the call, so that the blocks CPython allocates there for the new thread
/// (the start-up record its first C function frees, and its thread state) are that
/// allocator's. Why: CPython swaps RAW to its default allocator for moments, without a lock,
/// right after start-up (`_PyPathConfig_UpdateGlobal`) and during finalization
/// (`_PyImport_Fini2`). A block of ours freed by another thread in such a moment goes to
/// glibc's `free()`, which aborts. A thread started from a `.pth` file frees its start-up record
/// at once, so it could fall in the first moment (about once in 1,000 quick `RUSTMALLOC=1`
/// runs here). Blocks of the previous allocator are safe in any moment: our hooks forward them.
///
/// Only when our hook is in RAW and the allocator before it is CPython's plain one (not its
/// debug hooks, whose blocks the default allocator cannot free either), and only for the
/// caller to use when no other thread runs: another thread's RAW call during the swap would
/// go to the previous allocator too. Returns what `start_new_thread` returns.
#[pyfunction]
fn _start_thread_outside_raw(
    py: Python<'_>,
    func: &Bound<'_, PyAny>,
    args: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let start = py.import("_thread")?.getattr("start_new_thread")?;
    let swap = INSTALLED.load(Acquire) & (1 << RAW) != 0
        && !STRICT_OWNERSHIP.load(Relaxed)
        && !FORWARD_ONLY.load(Relaxed);
    if !swap {
        return start.call1((func, args)).map(Bound::unbind);
    }
    let mut ours = current(RAW);
    let mut before = *previous(RAW);
    // SAFETY: under the GIL (`Python<'_>`); PyMem_SetAllocator copies the struct. Ours goes
    // back whatever the call returns.
    unsafe { ffi::PyMem_SetAllocator(ffi_domain(RAW), &mut before) };
    let started = start.call1((func, args));
    // SAFETY: as above.
    unsafe { ffi::PyMem_SetAllocator(ffi_domain(RAW), &mut ours) };
    started.map(Bound::unbind)
}

/// No idle purger thread runs (the child of a fork, where it did not survive; or it ended).
#[pyfunction]
fn _idle_purger_gone(_py: Python<'_>) {
    IDLE_PURGER_RUNNING.store(false, Relaxed);
}

/// (idle purger on, an idle purger thread running)
#[pyfunction]
fn _idle_purge_state(_py: Python<'_>) -> (bool, bool) {
    (
        crate::purge::IDLE_PURGE.load(Relaxed),
        IDLE_PURGER_RUNNING.load(Relaxed),
    )
}

/// Turn the idle purger on or off (the Python wrapper starts the thread).
#[pyfunction]
fn _set_idle_purge(on: bool) {
    crate::purge::IDLE_PURGE.store(on, Relaxed);
}

/// (automatic purging on, purge delay in ms, bytes retained per heap, bytes purged so far)
#[pyfunction]
fn _purge_settings() -> (bool, u64, u64, u64) {
    let (enabled, delay, retain) = crate::purge::settings();
    (
        enabled,
        delay,
        retain,
        crate::purge::PURGED_BYTES.load(Relaxed),
    )
}

/// (RAW heaps created, RAW heaps abandoned and waiting for a thread to adopt them)
#[pyfunction]
fn _heap_counts() -> (usize, usize) {
    crate::raw_heap::heap_counts()
}

/// Whether rustmalloc owns the block at `address` (for tests and diagnostics).
#[pyfunction]
#[pyo3(name = "owns")]
fn py_owns(address: usize) -> bool {
    crate::owns(address as *const u8)
}

/// Whether `address` is where one of rustmalloc's blocks starts (tests and diagnostics).
#[pyfunction]
fn _owns_block_start(address: usize) -> bool {
    crate::owns_block_start(address as *const u8)
}

/// Walk the GIL heap and the calling thread's RAW heap and check their invariants (tests);
/// raises on the first violation.
#[pyfunction]
fn _check_heaps(_py: Python<'_>) {
    // SAFETY: the GIL is held; the RAW heap is this thread's own for the call.
    unsafe {
        crate::check_gil_heap();
        crate::raw_heap::with_heap(|h| {
            crate::heap::collect_remote(h);
            crate::heap::check_invariants(h);
        });
    }
}

/// The at-fork hook of the child (`os.register_at_fork(after_in_child=...)`, run with the GIL
/// held before the child starts any thread): see `crate::gil_heap_after_fork_in_child`.
#[pyfunction]
fn _after_fork_in_child(_py: Python<'_>) {
    // SAFETY: the GIL is held, and at-fork hooks of the child run before it starts a thread.
    unsafe { crate::gil_heap_after_fork_in_child() }
}

/// Allocate an OBJ block of `size` bytes and leave it freed the way a thread stopped by a fork
/// mid-free leaves it (`crate::strand_remote_free`); its address (tests of the fork child).
#[pyfunction]
fn _strand_remote_free(_py: Python<'_>, size: usize) -> PyResult<usize> {
    if size > crate::size_class::SMALL_MAX {
        return Err(PyValueError::new_err(format!(
            "_strand_remote_free: size must be at most {} bytes (a small block), not {size}",
            crate::size_class::SMALL_MAX
        )));
    }
    // SAFETY: the GIL is held.
    let p = unsafe { crate::strand_remote_free(OBJ, size) };
    if p.is_null() {
        return Err(PyMemoryError::new_err("_strand_remote_free: no memory"));
    }
    Ok(p as usize)
}

/// Whether the page of our small block at `address` has remote frees not yet collected (tests).
#[pyfunction]
fn _remote_frees_pending(address: usize) -> PyResult<bool> {
    let p = address as *const u8;
    // SAFETY (the `kind` read): `owns(p)` makes the page metadata ours.
    if !crate::owns(p)
        || unsafe { (*crate::segment::page_of(p)).kind } != crate::segment::PageKind::Small
    {
        return Err(PyValueError::new_err(format!(
            "_remote_frees_pending: {address:#x} is not in a small page of rustmalloc's"
        )));
    }
    // SAFETY: checked above.
    Ok(unsafe { crate::remote_frees_pending(p) })
}

#[pymodule]
fn _rustmalloc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_install, m)?)?;
    m.add_function(wrap_pyfunction!(_installed_mask, m)?)?;
    m.add_function(wrap_pyfunction!(_idle_tick, m)?)?;
    m.add_function(wrap_pyfunction!(_idle_purger_claim, m)?)?;
    m.add_function(wrap_pyfunction!(_idle_purger_gone, m)?)?;
    m.add_function(wrap_pyfunction!(_start_thread_outside_raw, m)?)?;
    m.add_function(wrap_pyfunction!(_idle_purge_state, m)?)?;
    m.add_function(wrap_pyfunction!(_set_idle_purge, m)?)?;
    m.add_function(wrap_pyfunction!(_snapshot, m)?)?;
    m.add_function(wrap_pyfunction!(_track_totals, m)?)?;
    m.add_function(wrap_pyfunction!(_reset_peak, m)?)?;
    m.add_function(wrap_pyfunction!(_check_mode_in_force, m)?)?;
    m.add_function(wrap_pyfunction!(_forward_only_in_force, m)?)?;
    m.add_function(wrap_pyfunction!(_reset_track_peak, m)?)?;
    m.add_function(wrap_pyfunction!(_trim, m)?)?;
    m.add_function(wrap_pyfunction!(_configure, m)?)?;
    m.add_function(wrap_pyfunction!(_purge_settings, m)?)?;
    m.add("DOMAIN_FIELDS", DOMAIN_FIELDS)?;
    m.add_function(wrap_pyfunction!(_heap_counts, m)?)?;
    m.add_function(wrap_pyfunction!(py_owns, m)?)?;
    m.add_function(wrap_pyfunction!(_owns_block_start, m)?)?;
    m.add_function(wrap_pyfunction!(_check_heaps, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(_strand_remote_free, m)?)?;
    m.add_function(wrap_pyfunction!(_remote_frees_pending, m)?)?;
    crate::bench::register(m)?;
    crate::stress::register(m)?;
    m.add("SMALL_MAX", crate::size_class::SMALL_MAX)?;
    // Built with the `valgrind` feature (memcheck client requests; see src/valgrind.rs).
    m.add("VALGRIND", cfg!(feature = "valgrind"))?;
    m.add("LARGE_MAX", crate::segment::LARGE_MAX)?;
    // The commit the extension was built from (`build.rs`), "+dirty" with uncommitted changes.
    m.add("BUILD", env!("RUSTMALLOC_BUILD"))?;
    Ok(())
}
