#!/usr/bin/env python3
"""Long concurrent stress of rustmalloc: python scripts/stress.py --minutes N

Installs rustmalloc (all three domains), then for N minutes, all at once:

- native RAW stress (src/stress.rs, run without the GIL): --threads native threads allocate,
  calloc, realloc and free RAW blocks of 0 B to 2.3 MiB, hand blocks to each other through
  mailboxes (cross-thread frees and reallocs), and exit and are replaced every --lifetime
  iterations while their blocks live on in other threads (heap abandonment and adoption);
  every block's contents are verified;
- short-lived native threads (batches of 16) that allocate, free, hand a block back after they
  exit, and free and allocate RAW blocks from a pthread TLS destructor that runs after rustmalloc's
  own thread-exit handling;
- the main thread churns Python objects (MEM and OBJ) and checks their digest, reads
  rustmalloc.stats() and checks it is sane, and forks every --fork-every seconds: the child
  churns Python objects, runs a short native RAW stress (adopting the heaps of the parent's
  threads, which do not exist in the child) and exits with the verdict; the parent waits for it
  with a timeout (a hang is a failure: a lock held across the fork).

Prints a summary and exits 0 if no error was found, 1 otherwise. The CI runs a 30-second version
(tests/test_stress.py).
"""

import argparse
import gc
import json
import os
import random
import signal
import sys
import threading
import time


def python_churn(n, seed):
    """Ordinary interpreter work over MEM and OBJ; returns a digest that depends only on (n, seed)."""
    rng = random.Random(seed)
    d = {"k%d" % i: [i] * (i % 7) for i in range(n)}
    for i in range(0, n, 3):
        del d["k%d" % i]
    s = json.dumps({k: v for k, v in d.items() if len(v) % 2}, sort_keys=True)
    junk = [(str(rng.random()), bytes(rng.randrange(1, 3000))) for _ in range(n // 10)]
    big = bytearray(rng.randrange(1, 200_000))
    big[-1] = 7
    sets = [set(range(rng.randrange(50))) for _ in range(n // 50)]
    lst = []
    for i in range(n):
        lst.append((i, str(i)))
    lst.sort(key=lambda t: t[1])
    return (len(s) + sum(len(b) + b[0] for _, b in junk) + big[-1] + sum(len(x) for x in sets)
            + lst[-1][0])


class Failures:
    def __init__(self):
        self.lock = threading.Lock()
        self.items = []

    def add(self, msg):
        with self.lock:
            self.items.append(msg)
        print("stress: FAILURE:", msg, file=sys.stderr, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="how long to run (default 5)")
    ap.add_argument("--threads", type=int, default=8, help="native RAW stress threads (default 8)")
    ap.add_argument("--lifetime", type=int, default=3000,
                    help="iterations after which a native thread exits and is replaced (default 3000)")
    ap.add_argument("--fork-every", type=float, default=2.0, help="seconds between forks (default 2)")
    ap.add_argument("--child-timeout", type=float, default=60.0, help="seconds a child may take")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    import rustmalloc
    from rustmalloc import _rustmalloc as ext

    rustmalloc.install()
    if not ext._stress_make_tls_key():  # made after install(): its destructor runs after ours
        print("stress: could not create a pthread key", file=sys.stderr)
        return 1
    gc.collect()
    raw0 = rustmalloc.stats().to_dict()["domains"]["raw"]["blocks_in_use"]
    start = time.monotonic()
    deadline = start + args.minutes * 60
    failures = Failures()
    totals = {"native_iterations": 0, "native_runs": 0, "short_threads": 0, "forks": 0,
              "python_churns": 0, "stats_reads": 0}
    tlock = threading.Lock()

    def bump(key, n=1):
        with tlock:
            totals[key] += n

    def native_raw():
        k = 0
        while time.monotonic() < deadline - 0.5:
            k += 1
            chunk = max(0.5, min(20.0, deadline - time.monotonic() - 0.5))
            lifetime = args.lifetime if k % 2 else 0
            ops, errors, first = ext._stress_raw(threads=args.threads, seconds=chunk, lifetime=lifetime,
                                                 seed=args.seed * 1000 + k)
            bump("native_iterations", ops)
            bump("native_runs")
            if errors:
                failures.add("native RAW stress (seed %d): %d errors, first: %s"
                             % (args.seed * 1000 + k, errors, first))

    def short_threads():
        k = 0
        while time.monotonic() < deadline - 0.5:
            k += 1
            n, errors, first = ext._stress_thread_churn(total=200, batch=16, seed=args.seed * 1000 + k)
            bump("short_threads", n)
            if errors:
                failures.add("short-lived threads: %d errors, first: %s" % (errors, first))

    workers = [threading.Thread(target=native_raw, name="native-raw"),
               threading.Thread(target=short_threads, name="short-threads")]
    for t in workers:
        t.start()

    expected = {s: python_churn(2000, s) for s in range(8)}
    next_fork = time.monotonic() + args.fork_every
    rng = random.Random(args.seed)
    while time.monotonic() < deadline:
        s = rng.randrange(8)
        if python_churn(2000, s) != expected[s]:
            failures.add("Python object churn gave a different digest (seed %d)" % s)
        bump("python_churns")
        snap = rustmalloc.stats()
        bump("stats_reads")
        d = snap.to_dict()
        for name, dom in d["domains"].items():
            if not (0 <= dom["blocks_in_use"] < 1 << 40 and 0 <= dom["bytes_in_use"] < 1 << 46):
                failures.add("implausible %s stats: %r" % (name, dom))
        if not (0.0 <= d["fragmentation"] <= 1.0 and d["os"]["bytes_mapped"] > 0):
            failures.add("implausible stats: fragmentation %r, os %r" % (d["fragmentation"], d["os"]))
        if time.monotonic() >= next_fork:
            next_fork = time.monotonic() + args.fork_every
            fork_once(ext, rustmalloc, expected, args, failures)
            bump("forks")

    for t in workers:
        t.join(timeout=120)
        if t.is_alive():
            failures.add("thread %s did not finish (hang?)" % t.name)
    gc.collect()
    raw1 = rustmalloc.stats().to_dict()["domains"]["raw"]["blocks_in_use"]
    # Every native block was freed; what Python itself holds in RAW can differ by a few blocks.
    if abs(raw1 - raw0) > 64:
        failures.add("RAW blocks in use %d at the start, %d at the end" % (raw0, raw1))
    elapsed = time.monotonic() - start
    summary = dict(totals, seconds=round(elapsed, 1), raw_blocks_start=raw0, raw_blocks_end=raw1,
                   raw_heaps=rustmalloc.stats().to_dict()["raw_heaps"], errors=len(failures.items))
    print("stress:", json.dumps(summary, sort_keys=True), flush=True)
    if failures.items:
        print("stress: %d failures; first: %s" % (len(failures.items), failures.items[0]), flush=True)
        return 1
    print("stress: ok", flush=True)
    return 0


def fork_once(ext, rustmalloc, expected, args, failures):
    pid = os.fork()
    if pid == 0:  # the child: only this thread exists here
        code = 0
        try:
            for s in range(3):
                if python_churn(2000, s) != expected[s]:
                    code = 3
            ops, errors, first = ext._stress_raw(threads=2, iters=2000, lifetime=500, seed=os.getpid())
            if errors:
                print("stress child: %d errors, first: %s" % (errors, first), file=sys.stderr, flush=True)
                code = 4
            rustmalloc.stats()
        except BaseException as exc:  # never let the child return into the parent's code
            print("stress child: %r" % (exc,), file=sys.stderr, flush=True)
            code = 5
        os._exit(code)
    t_end = time.monotonic() + args.child_timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > t_end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            failures.add("forked child %d did not exit within %ss (deadlock after fork?)"
                         % (pid, args.child_timeout))
            return
        time.sleep(0.005)
    if os.WIFSIGNALED(status):
        failures.add("forked child killed by signal %d" % os.WTERMSIG(status))
    elif os.WEXITSTATUS(status) != 0:
        failures.add("forked child exited with status %d" % os.WEXITSTATUS(status))


if __name__ == "__main__":
    sys.exit(main())
