"""A description of the machine and software a run measured, for the results' header."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
from typing import Dict

HERE = os.path.dirname(os.path.abspath(__file__))


def _first(path: str, key: str) -> str:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip() if ":" in line else line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "?"


def _run(cmd) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def load_average() -> str:
    """1, 5 and 15 minute load averages: how busy the (shared) machine was."""
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def describe(python: str) -> Dict[str, str]:
    cpus = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cpus
    mem_kib = _first("/proc/meminfo", "MemTotal").split()[0] if os.path.exists("/proc/meminfo") else "0"
    info = {
        "cpu": _first("/proc/cpuinfo", "model name"),
        "cores": f"{cpus} logical ({usable} usable)",
        "memory": f"{int(mem_kib) / 2**20:.1f} GiB" if mem_kib.isdigit() else "?",
        "kernel": f"{platform.system()} {platform.release()}",
        "os": _first("/etc/os-release", "PRETTY_NAME"),
        "python": _run([python, "-c", "import sys, platform; print(platform.python_implementation(), sys.version.split()[0])"]),
        "glibc": " ".join(platform.libc_ver()),
        "load average at start": load_average(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    # The build measured is the one installed in `python`, which records the commit it was built
    # from (`build.rs`); the checkout's commit is named only where it differs.
    build = _run([python, "-c", "from rustmalloc import _rustmalloc; print(_rustmalloc.BUILD)"]) or "unknown"
    info["rustmalloc"] = f"build {build} (installed in {python})"
    rev = _run(["git", "-C", HERE, "rev-parse", "--short=12", "HEAD"])
    if rev:
        dirty = _run(["git", "-C", HERE, "status", "--porcelain", "--untracked-files=no"])
        checkout = rev + ("+dirty" if dirty else "")
        if checkout != build:
            info["rustmalloc"] += f"; NOT the checkout's commit ({checkout}): reinstall with `pip install .` to measure it"
    versions = []
    for pkg in ("libjemalloc2", "libtcmalloc-minimal4", "libmimalloc2.0"):
        v = _run(["dpkg-query", "-W", "-f", "${Version}", pkg])
        if v:
            versions.append(f"{pkg} {v}")
    if versions:
        info["peers"] = ", ".join(versions)
    if shutil.which("valgrind"):
        info["valgrind"] = _run(["valgrind", "--version"])
    return info
