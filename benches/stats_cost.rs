//! What the always-on statistics cost the allocation fast path.
//!
//! The same loops run against two heaps, one through the fast paths with the counters compiled
//! in (`alloc_counted::<true>`, what the hooks use) and one without (`::<false>`), interleaved
//! over several rounds so machine noise hits both alike; the table reports medians and the
//! ratio. Where valgrind is installed it also counts instructions per call, which machine
//! noise does not move: it re-runs itself under `valgrind --tool=callgrind` for one loop at
//! two sizes and divides the difference, so start-up cost cancels out.
//! Run: `cargo bench --bench stats_cost` (writes benches/results/stats_cost.md).

use rustmalloc::heap::{alloc_counted, free_counted, Heap};
use std::hint::black_box;
use std::time::Instant;

const OBJ: usize = rustmalloc::OBJ;
const ROUNDS: usize = 11;

/// Immediate malloc/free pairs of `size` bytes; ns per call (a pair is two calls).
#[inline(never)]
fn pairs<const S: bool>(h: *mut Heap, size: usize, n: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: this thread is the heap's only user.
        unsafe {
            let p = alloc_counted::<S>(h, black_box(size), OBJ);
            *p = 1;
            free_counted::<S>(h, black_box(p), OBJ);
        }
    }
    t.elapsed().as_nanos() as f64 / (2 * n) as f64
}

/// Batches of `n` allocations of mixed small sizes, then freed in order; ns per call.
#[inline(never)]
fn batch<const S: bool>(h: *mut Heap, ptrs: &mut [*mut u8], sizes: &[usize]) -> f64 {
    let t = Instant::now();
    for (p, &size) in ptrs.iter_mut().zip(sizes) {
        // SAFETY: as above.
        unsafe {
            *p = alloc_counted::<S>(h, size, OBJ);
            **p = 1;
        }
    }
    for &p in ptrs.iter() {
        // SAFETY: as above; each block is freed once.
        unsafe { free_counted::<S>(h, p, OBJ) };
    }
    t.elapsed().as_nanos() as f64 / (2 * ptrs.len()) as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn sizes(n: usize) -> Vec<usize> {
    let mut seed = 0x2545_f491u64;
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            16 + (seed % 113) as usize
        })
        .collect()
}

/// Run one loop (`RUSTMALLOC_STATS_COST_ONE=on|off:pairs|batch:N`), for callgrind.
fn run_one(spec: &str) {
    let parts: Vec<&str> = spec.split(':').collect();
    let n: usize = parts[2].parse().unwrap();
    let h: *mut Heap = Box::into_raw(Box::new(Heap::new()));
    let sizes = sizes(n.max(1));
    let mut ptrs = vec![std::ptr::null_mut(); n];
    match (parts[0], parts[1]) {
        ("on", "pairs") => black_box(pairs::<true>(h, 32, n)),
        ("off", "pairs") => black_box(pairs::<false>(h, 32, n)),
        ("on", _) => black_box(batch::<true>(h, &mut ptrs, &sizes)),
        _ => black_box(batch::<false>(h, &mut ptrs, &sizes)),
    };
}

/// Instructions per call of one loop, or None without valgrind.
fn instructions_per_call(variant: &str, pattern: &str) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let (small, large) = (50_000usize, 100_000usize);
    let mut ir = Vec::new();
    for n in [small, large] {
        let out_file = std::env::temp_dir().join(format!("stats_cost.{variant}.{pattern}.{n}.cg"));
        let out = std::process::Command::new("valgrind")
            .args([
                "--tool=callgrind",
                &format!("--toggle-collect=*stats_cost::{pattern}*"),
                &format!("--callgrind-out-file={}", out_file.display()),
            ])
            .arg(&exe)
            .env(
                "RUSTMALLOC_STATS_COST_ONE",
                format!("{variant}:{pattern}:{n}"),
            )
            .output()
            .ok()?;
        let _ = std::fs::remove_file(&out_file);
        let text = String::from_utf8_lossy(&out.stderr);
        // "==123== Collected : 123456"
        let line = text.lines().find(|l| l.contains("Collected :"))?;
        ir.push(
            line.rsplit(':')
                .next()?
                .trim()
                .replace(',', "")
                .parse::<f64>()
                .ok()?,
        );
    }
    Some((ir[1] - ir[0]) / (2 * (large - small)) as f64)
}

fn main() {
    if let Ok(spec) = std::env::var("RUSTMALLOC_STATS_COST_ONE") {
        return run_one(&spec);
    }
    let with: *mut Heap = Box::into_raw(Box::new(Heap::new()));
    let without: *mut Heap = Box::into_raw(Box::new(Heap::new()));
    let n = 100_000;
    let sizes = sizes(n);
    let mut ptrs = vec![std::ptr::null_mut(); n];
    let mut results = Vec::new();
    for (name, run) in [
        ("immediate pairs, 32 B", 0usize),
        ("batches of 100k, 16..128 B", 1),
    ] {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS + 1 {
            let (a, b) = match run {
                0 => (
                    pairs::<true>(with, 32, 2_000_000),
                    pairs::<false>(without, 32, 2_000_000),
                ),
                _ => (
                    batch::<true>(with, &mut ptrs, &sizes),
                    batch::<false>(without, &mut ptrs, &sizes),
                ),
            };
            if round > 0 {
                // round 0 warms both heaps up
                on.push(a);
                off.push(b);
            }
        }
        let (m_on, m_off) = (median(&mut on), median(&mut off));
        let pattern = if run == 0 { "pairs" } else { "batch" };
        let instr = instructions_per_call("on", pattern).zip(instructions_per_call("off", pattern));
        results.push((name, m_on, m_off, instr));
    }
    let mut table = String::from(
        "| fast path | stats on (ns/call) | stats off (ns/call) | on / off | stats on (instr/call) \
         | stats off (instr/call) | on / off |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, on, off, instr) in &results {
        let i = match instr {
            Some((a, b)) => format!("{a:.1} | {b:.1} | {:.3}", a / b),
            None => "n/a (no valgrind) | | ".into(),
        };
        table += &format!("| {name} | {on:.2} | {off:.2} | {:.3} | {i} |\n", on / off);
    }
    println!("{table}");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results/stats_cost.md");
    let doc = format!(
        "# Cost of the always-on statistics\n\n`cargo bench --bench stats_cost`: the allocator \
         core's fast paths with the counters compiled in and out, medians of {ROUNDS} interleaved \
         rounds (release build).\n\n{table}"
    );
    if std::env::var_os("RUSTMALLOC_BENCH_NO_WRITE").is_none() {
        std::fs::write(path, doc).expect("write results");
        println!("written to {path}");
    }
}
