#!/usr/bin/env bash
# Fuzz the allocator core for a set time: fuzz/run.sh SECONDS [extra libFuzzer flags...]
#
# Runs the `alloc_model` target (fuzz_targets/alloc_model.rs) with cargo-fuzz (libFuzzer) on the
# stable toolchain: `-s none` (no sanitizer), because Rust's sanitizers (-Zsanitizer) need a nightly
# compiler; every other instrumentation flag cargo-fuzz passes is stable. Debug assertions are on
# (-a), so the core's debug_assert!s are checked too.
#
# New inputs go to fuzz/corpus/alloc_model (not committed); the committed seeds are read from
# fuzz/seeds/alloc_model. A failing input is written to fuzz/artifacts/alloc_model/ and the script
# exits non-zero; replay it with
#     cargo fuzz run -s none -a alloc_model fuzz/artifacts/alloc_model/crash-...
# and print it as actions with
#     cargo fuzz fmt -s none -a alloc_model fuzz/artifacts/alloc_model/crash-...
#
# Environment: FUZZ_SANITIZER=address (with FUZZ_TOOLCHAIN=+nightly) uses AddressSanitizer where
# a nightly toolchain exists; FUZZ_JOBS=N runs N fuzzing processes (default 1: the machines have 2
# cores, shared).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:?usage: fuzz/run.sh SECONDS [libFuzzer flags...]}"
shift
sanitizer="${FUZZ_SANITIZER:-none}"
toolchain="${FUZZ_TOOLCHAIN:-}"
jobs="${FUZZ_JOBS:-1}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is not installed; installing it (cargo install cargo-fuzz)" >&2
    cargo install --locked cargo-fuzz
fi

mkdir -p fuzz/corpus/alloc_model
flags=(-max_total_time="$secs" -rss_limit_mb=4096 -timeout=60 -max_len=4096 -print_final_stats=1)
if [ "$jobs" -gt 1 ]; then
    flags+=(-fork="$jobs")
fi
# shellcheck disable=SC2086
exec cargo $toolchain fuzz run -s "$sanitizer" -a alloc_model \
    fuzz/corpus/alloc_model fuzz/seeds/alloc_model -- "${flags[@]}" "$@"
