//! The `valgrind` feature's tests: this test binary runs itself under memcheck and reads its log.
//!
//! - `core_tests_are_clean_under_memcheck`: every other test of the core (the randomized model,
//!   threads with cross-thread frees, huge blocks, purge and trim, the invariant walker) under
//!   memcheck, which must report nothing: the allocator's own accesses to free memory are all
//!   opened and closed again.
//! - `planted_bugs_are_reported_by_memcheck`: `planted_bugs_child` makes one memory bug per
//!   function below (a read past the end, a write after free, a read of uninitialised bytes, in
//!   small, large and huge blocks, and after reallocs in place and moved); memcheck must report
//!   each of them, in that function, and nothing else (the `clean_*` functions read bytes that
//!   must stay defined across a realloc).
//!
//! They need valgrind on the PATH (`apt-get install valgrind`): `cargo test --features valgrind`.

use crate::*;
use std::hint::black_box;
use std::process::Command;
use std::ptr::{read_volatile, write_volatile};

/// Run this test binary under memcheck with `args`; returns (memcheck's log, the tests' stdout).
fn under_memcheck(name: &str, args: &[&str]) -> (String, String) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let log = std::env::temp_dir().join(format!(
        "rustmalloc-memcheck-{name}-{}.log",
        std::process::id()
    ));
    let out = Command::new("valgrind")
        .arg("--tool=memcheck")
        .arg("--leak-check=no")
        .arg("--num-callers=30")
        // Without this VEX may translate a small function together with its caller, and a
        // report then names the caller: the plants below are found by their function's name.
        .arg("--vex-guest-chase=no")
        .arg(format!("--log-file={}", log.display()))
        .arg(&exe)
        .args(args)
        .output()
        .expect(
            "valgrind could not be started: the `valgrind` feature's tests need it on the PATH",
        );
    let text = std::fs::read_to_string(&log).expect("memcheck's log");
    let _ = std::fs::remove_file(&log);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the run under memcheck failed: {:?}\n{stdout}\n{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (text, stdout)
}

/// Memcheck's error reports in a log: each is its first line (the kind) and the lines after it.
fn errors(log: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in log.lines() {
        // "==PID== text": strip the prefix.
        let text = match line.split_once("==") {
            Some(("", rest)) => rest
                .split_once("==")
                .map_or("", |(_, t)| t.strip_prefix(' ').unwrap_or(t)),
            _ => line,
        };
        if text.trim().is_empty() {
            if let Some(e) = cur.take() {
                out.push(e);
            }
        } else if let Some(e) = cur.as_mut() {
            e.push('\n');
            e.push_str(text);
        } else if is_error_kind(text) {
            cur = Some(text.to_string());
        }
    }
    out.extend(cur);
    out
}

fn is_error_kind(text: &str) -> bool {
    [
        "Invalid read",
        "Invalid write",
        "Invalid free",
        "Conditional jump or move depends on uninitialised",
        "Use of uninitialised value",
        "Syscall param",
        "Mismatched free",
        "Source and destination overlap",
        "Argument 'size' of function",
    ]
    .iter()
    .any(|k| text.starts_with(k))
}

#[test]
fn core_tests_are_clean_under_memcheck() {
    // `zero_sizes_and_absurd_sizes` writes one byte into a block of 0 bytes (to see that a
    // failed realloc left it valid): memcheck rightly reports that write, so it is left out.
    let (log, stdout) = under_memcheck(
        "core",
        &[
            "--test-threads=1",
            "--skip",
            "tests_valgrind::",
            "--skip",
            "zero_sizes_and_absurd_sizes",
        ],
    );
    let errs = errors(&log);
    assert!(
        errs.is_empty(),
        "memcheck reported {} errors in the core's tests:\n{}",
        errs.len(),
        errs.join("\n\n")
    );
    assert!(
        log.contains("ERROR SUMMARY: 0 errors"),
        "no clean summary in memcheck's log:\n{log}"
    );
    // The run really ran the core's tests (the randomized model among them).
    assert!(
        stdout.contains("test tests::randomized_model ... ok")
            && stdout
                .contains("test tests::trim_returns_free_os_pages_inside_partly_used_pages ... ok"),
        "the core's tests did not run under memcheck:\n{stdout}"
    );
}

/// What memcheck must say about each planted bug: the function it happens in, and the start of
/// the report's first line (and, for address errors, its "Address ..." line).
const EXPECTED: &[(&str, &str, &str)] = &[
    (
        "plant_read_past_small",
        "Invalid read of size 1",
        "is 0 bytes after a block of size 24 alloc'd",
    ),
    (
        "plant_write_after_free",
        "Invalid write of size 1",
        "is 0 bytes inside a block of size 40 free'd",
    ),
    (
        "plant_uninitialised_small",
        "Conditional jump or move depends on uninitialised",
        "",
    ),
    (
        "plant_read_past_large",
        "Invalid read of size 1",
        "is 0 bytes after a block of size 100,000 alloc'd",
    ),
    (
        "plant_read_past_huge",
        "Invalid read of size 1",
        "is 0 bytes after a block of size 5,242,881 alloc'd",
    ),
    (
        "plant_grown_in_place",
        "Conditional jump or move depends on uninitialised",
        "",
    ),
    (
        "plant_shrunk_in_place",
        "Invalid read of size 1",
        "is 2 bytes after a block of size 20 alloc'd",
    ),
    (
        "plant_moved_tail",
        "Conditional jump or move depends on uninitialised",
        "",
    ),
    (
        "plant_huge_moved_tail",
        "Conditional jump or move depends on uninitialised",
        "",
    ),
    (
        "plant_calloc_past_end",
        "Invalid read of size 1",
        "is 0 bytes after a block of size 30 alloc'd",
    ),
];

#[test]
fn planted_bugs_are_reported_by_memcheck() {
    let (log, stdout) = under_memcheck(
        "planted",
        &[
            "--exact",
            "tests_valgrind::planted_bugs_child",
            "--ignored",
            "--test-threads=1",
        ],
    );
    assert!(
        stdout.contains("1 passed"),
        "the planted-bugs child did not run:\n{stdout}"
    );
    let errs = errors(&log);
    for (func, kind, address) in EXPECTED {
        let hits: Vec<_> = errs
            .iter()
            .filter(|e| first_function(e).contains(func))
            .collect();
        assert!(
            hits.len() == 1 && hits[0].starts_with(kind) && hits[0].contains(address),
            "expected one report '{kind}' ... '{address}' in {func}, got {}:\n{}\n\nthe whole log:\n{log}",
            hits.len(),
            hits.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n\n")
        );
    }
    assert_eq!(
        errs.len(),
        EXPECTED.len(),
        "memcheck reported more than the planted bugs (the clean_* reads, or the allocator):\n{}",
        errs.join("\n\n")
    );
}

/// The function a report's stack is in: the first "at"/"by" frame of ours below the request.
fn first_function(report: &str) -> String {
    report
        .lines()
        .filter(|l| l.trim_start().starts_with("at ") || l.trim_start().starts_with("by "))
        .find(|l| l.contains("plant_") || l.contains("clean_"))
        .unwrap_or("")
        .to_string()
}

// ---- the child: one function per bug, none inlined so that each shows in the stacks ----------
//
// # Safety (of every `plant_*` and `clean_*` function): `p` is a block of ours as the child
// hands it over, whose page or mapping is still mapped; the `plant_*` functions then read or
// write where the block's contract forbids (past its end, after its free, uninitialised bytes),
// which is what memcheck must report; the memory touched is mapped, so natively nothing breaks.

/// # Safety
/// See above.
#[inline(never)]
unsafe fn plant_read_past_small(p: *mut u8) -> u8 {
    read_volatile(p.add(24))
}

/// # Safety
/// See above.
#[inline(never)]
unsafe fn plant_write_after_free(p: *mut u8) {
    write_volatile(p, 1)
}

/// Memcheck reports a branch on an undefined value (not the load itself): branch on the byte.
#[inline(always)]
fn branch_on(v: u8) {
    if v == 0x77 {
        println!("(a byte was 0x77)");
    }
}

/// # Safety
/// See above.
#[inline(never)]
unsafe fn plant_uninitialised_small(p: *mut u8) {
    branch_on(read_volatile(p.add(5)))
}

/// # Safety
/// See above.
#[inline(never)]
unsafe fn plant_read_past_large(p: *mut u8) -> u8 {
    read_volatile(p.add(100_000))
}

/// # Safety
/// See above.
#[inline(never)]
unsafe fn plant_read_past_huge(p: *mut u8) -> u8 {
    read_volatile(p.add((5 << 20) + 1))
}

/// # Safety
/// See above.
#[inline(never)]
unsafe fn clean_kept_in_place(p: *mut u8) {
    branch_on(read_volatile(p.add(23)))
}

/// # Safety
/// See above.
#[inline(never)]
unsafe fn plant_grown_in_place(p: *mut u8) {
    branch_on(read_volatile(p.add(29)))
}

/// # Safety
/// See above.
#[inline(never)]
unsafe fn plant_shrunk_in_place(p: *mut u8) -> u8 {
    read_volatile(p.add(22))
}

/// # Safety
/// See above.
#[inline(never)]
unsafe fn clean_kept_when_moved(p: *mut u8, n: usize) {
    (0..n).for_each(|i| branch_on(read_volatile(p.add(i))))
}

/// # Safety
/// See above.
#[inline(never)]
unsafe fn plant_moved_tail(p: *mut u8) {
    branch_on(read_volatile(p.add(100)))
}

/// # Safety
/// See above.
#[inline(never)]
unsafe fn plant_huge_moved_tail(p: *mut u8) {
    branch_on(read_volatile(p.add(6 << 20)))
}

/// # Safety
/// See above.
#[inline(never)]
unsafe fn clean_calloc_zeroed(p: *mut u8, n: usize) {
    (0..n).for_each(|i| assert_eq!(read_volatile(p.add(i)), 0))
}

/// # Safety
/// See above.
#[inline(never)]
unsafe fn plant_calloc_past_end(p: *mut u8) -> u8 {
    read_volatile(p.add(30))
}

#[test]
#[ignore = "run under memcheck by planted_bugs_are_reported_by_memcheck"]
fn planted_bugs_child() {
    assert!(
        valgrind::running(),
        "run by planted_bugs_are_reported_by_memcheck, under valgrind"
    );
    // SAFETY: the blocks come from the domain API and go back to it once; the planted bugs
    // touch only memory that stays mapped (see the `plant_*` functions).
    unsafe {
        // Small blocks: 24 bytes in the 32-byte class, so a read at 24 lands in the class's slack.
        let p = gil_malloc(OBJ, 24);
        core::ptr::write_bytes(p, 0x11, 24);
        black_box(plant_read_past_small(p));
        let q = gil_malloc(MEM, 40);
        gil_free(MEM, q);
        plant_write_after_free(q);
        let u = raw_malloc(64);
        plant_uninitialised_small(u);
        raw_free(u);
        // A large span and a huge mapping.
        let l = gil_malloc(OBJ, 100_000);
        black_box(plant_read_past_large(l));
        gil_free(OBJ, l);
        let h = raw_malloc((5 << 20) + 1);
        black_box(plant_read_past_huge(h));
        raw_free(h);
        // Realloc in place: 24 -> 30 bytes stays in the 32-byte class; the 24 written bytes
        // stay defined, the 6 new ones are undefined. Then 30 -> 20: bytes past 20 are gone.
        let r = gil_realloc(OBJ, p, 30);
        assert_eq!(r, p, "24 -> 30 bytes is a realloc in place");
        clean_kept_in_place(r);
        plant_grown_in_place(r);
        let r = gil_realloc(OBJ, r, 20);
        assert_eq!(r, p, "30 -> 20 bytes is a realloc in place");
        black_box(plant_shrunk_in_place(r));
        // Realloc that moves: the 20 kept bytes stay defined, the rest is undefined.
        let m = gil_realloc(OBJ, r, 4000);
        assert_ne!(m, r, "20 -> 4000 bytes moves the block");
        clean_kept_when_moved(m, 20);
        plant_moved_tail(m);
        gil_free(OBJ, m);
        // A huge block grown past its mapping (mremap, in place or moved): its written bytes
        // stay defined, the new ones are not.
        let hb = raw_malloc(5 << 20);
        core::ptr::write_bytes(hb, 0x22, 5 << 20);
        let hb = raw_realloc(hb, 9 << 20);
        clean_kept_when_moved(hb, 5 << 20);
        plant_huge_moved_tail(hb);
        raw_free(hb);
        // calloc: zeroed (defined) bytes, and nothing past them.
        let c = raw_calloc(3, 10);
        clean_calloc_zeroed(c, 30);
        black_box(plant_calloc_past_end(c));
        raw_free(c);
    }
}
