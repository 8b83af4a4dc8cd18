"""The allocator configurations the suite compares, each run in a fresh interpreter.

A configuration is an environment for the worker process (``PYTHONMALLOC``, ``LD_PRELOAD``)
plus, for rustmalloc, how the worker installs it as its first statement
(``RMBENCH_INSTALL``, read by ``worker.py``).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple


@dataclass(frozen=True)
class Config:
    name: str
    description: str
    env: Dict[str, str] = field(default_factory=dict)
    #: None, "install" (rustmalloc.install()), "check" (rustmalloc.install(check=True)) or
    #: "forward" (rustmalloc._install_forward_only())
    install: Optional[str] = None
    #: A peer: the allocators rustmalloc's goals are measured against.
    peer: bool = True
    #: The library LD_PRELOADed, if any (also what the worker checks is really mapped).
    preload: Optional[str] = None


# (configuration name, Debian package, file name patterns in the multiarch library directory)
PRELOADED = [
    ("jemalloc", "libjemalloc2", ["libjemalloc.so.2"]),
    ("tcmalloc", "libtcmalloc-minimal4", ["libtcmalloc_minimal.so.4"]),
    ("mimalloc", "libmimalloc2.0", ["libmimalloc.so.2", "libmimalloc.so.2.*"]),
]

LIB_DIRS = ["/usr/lib/*-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"]


def find_library(patterns: List[str]) -> Optional[str]:
    for d in LIB_DIRS:
        for pat in patterns:
            hits = sorted(glob.glob(os.path.join(d, pat)))
            if hits:
                return hits[0]
    return None


def all_configs() -> Tuple[List[Config], List[str]]:
    """Every configuration available on this machine, and notes on those skipped."""
    configs = [
        Config("pymalloc", "CPython's default allocator (pymalloc over libc malloc)"),
        Config("glibc", "PYTHONMALLOC=malloc: libc (glibc) malloc for every domain", {"PYTHONMALLOC": "malloc"}),
    ]
    notes = []
    for name, package, patterns in PRELOADED:
        path = find_library(patterns)
        if path is None:
            notes.append(f"{name} skipped: {package} is not installed (apt-get install {package})")
            continue
        configs.append(
            Config(
                name,
                f"PYTHONMALLOC=malloc LD_PRELOAD={path}",
                {"PYTHONMALLOC": "malloc", "LD_PRELOAD": path},
                preload=path,
            )
        )
    configs.append(
        Config("rustmalloc", "rustmalloc.install() as the worker's first statement (all three domains)", install="install", peer=False)
    )
    configs.append(
        Config(
            "rustmalloc-check",
            "rustmalloc.install(check=True): the checking mode (canaries, fill patterns, quarantine), to measure its cost",
            install="check",
            peer=False,
        )
    )
    configs.append(
        Config(
            "rustmalloc-fwd",
            "rustmalloc._install_forward_only(): hooks that forward every call to pymalloc (the floor cost of a hook)",
            install="forward",
            peer=False,
        )
    )
    return configs, notes


#: rustmalloc's automatic purge runs at most once per ``purge_delay_ms`` (250) of wall time, and
#: callgrind runs a program about 50 times slower: with the default delay a run under callgrind
#: would count some 50 times the purge passes the same work gets natively (measured on
#: pyperformance's xml_etree_parse: 0.8% more instructions than pymalloc, and 0.02% with the
#: delay scaled). Under callgrind the delay is scaled by 50, unless the environment sets it.
CALLGRIND_PURGE_DELAY_MS = 250 * 50

#: One hash seed for every run under callgrind: with random seeds the dicts of a Python program
#: differ from run to run, and so did its instruction count (by up to 0.7% for the workloads,
#: pymalloc against itself), as much as the differences being measured.
CALLGRIND_HASH_SEED = "0"


def other_build_pythonpath(pythonpath: Optional[str] = None) -> str:
    """``PYTHONPATH`` for ``rustmalloc-other``: another build of rustmalloc, its wheel unpacked
    into the directory ``$RUSTMALLOC_OTHER_BUILD``, first on the path (before ``pythonpath``).
    Exits with what to do if that variable does not name a directory."""
    other = os.environ.get("RUSTMALLOC_OTHER_BUILD", "")
    if not os.path.isdir(other):
        raise SystemExit("rustmalloc-other: set RUSTMALLOC_OTHER_BUILD to the directory of another build's unpacked wheel")
    return os.pathsep.join(filter(None, [other, pythonpath]))


#: Variables that choose the allocator, or put hooks or debug checks around it, in a worker:
#: every configuration starts without them and sets its own. (``RUSTMALLOC`` or
#: ``RUSTMALLOC_CHECK`` left set would make every configuration rustmalloc, through the startup
#: hook; ``PYTHONDEVMODE`` would make pymalloc pymalloc_debug.) The ``RUSTMALLOC_*`` tuning
#: variables (purge delay, retained bytes, idle purger) are kept: runs set them on purpose, and
#: ``tuning_env`` records them.
ALLOCATOR_VARS = (
    "PYTHONMALLOC", "LD_PRELOAD", "RMBENCH_INSTALL", "PYTHONTRACEMALLOC", "PYTHONDEVMODE", "PYTHONMALLOCSTATS",
    "RUSTMALLOC", "RUSTMALLOC_CHECK", "RUSTMALLOC_STATS",
)


def clean_env(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """``base`` (default: this process's environment) without ``ALLOCATOR_VARS``."""
    env = dict(os.environ if base is None else base)
    for var in ALLOCATOR_VARS:
        env.pop(var, None)
    return env


def tuning_env(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The ``RUSTMALLOC_*`` settings a run passes on to its rustmalloc workers."""
    env = os.environ if base is None else base
    return {k: v for k, v in sorted(env.items()) if k.startswith("RUSTMALLOC_") and k not in ALLOCATOR_VARS}


def state_problem(state: dict, env: Dict[str, str]) -> Optional[str]:
    """What is wrong with a worker's ``allocator_state()`` (``worker.py``) for the configuration
    its environment ``env`` asks for, or None. rustmalloc installed by the worker
    (``RMBENCH_INSTALL``: install, check, forward) or at startup (``RUSTMALLOC=1``): all three
    domains, in the mode asked for; otherwise CPython's ``PYTHONMALLOC`` (pymalloc when unset),
    no rustmalloc, and the ``LD_PRELOAD``ed library mapped, or no other malloc library when none
    is."""
    install = env.get("RMBENCH_INSTALL") or ("install" if env.get("RUSTMALLOC") == "1" else None)
    served = state["rustmalloc_installed"]
    if install:
        want_check = 1 if install == "check" else 0
        want_forward = install == "forward"
        if served != ["raw", "mem", "obj"] or state["cpython_allocator"] is not None:
            return f"rustmalloc {install}: rustmalloc serves {served or 'nothing'}, CPython's allocator is {state['cpython_allocator']}"
        # None: a build older than the getter (cannot tell; its install call was still checked).
        check, forward = state.get("check_mode"), state.get("forward_only")
        if (check is not None and check != want_check) or (forward is not None and forward != want_forward):
            return (f"rustmalloc {install}: the checking mode is {state.get('check_mode')} and forward-only "
                    f"{state.get('forward_only')}; expected {want_check} and {want_forward}")
        return None
    want = env.get("PYTHONMALLOC") or "pymalloc"
    if served or state["cpython_allocator"] != want:
        return f"expected CPython's {want} alone; it is {state['cpython_allocator']}, rustmalloc serves {served or 'nothing'}"
    others = [lib for lib in state["malloc_libraries"] if lib.startswith(("libjemalloc", "libtcmalloc", "libmimalloc"))]
    # valgrind puts its own libraries in the guest's LD_PRELOAD: only the configuration's count.
    preloads = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if "vgpreload" not in p]
    for preload in preloads:
        if os.path.basename(os.path.realpath(preload)) not in state["malloc_libraries"]:
            return f"{preload} is not mapped (mapped: {', '.join(state['malloc_libraries']) or 'none'})"
    if not preloads and others:
        return f"no library preloaded, yet {', '.join(others)} is mapped"
    return None


def worker_env(config: Config, base: Optional[Dict[str, str]] = None, callgrind: bool = False) -> Dict[str, str]:
    env = clean_env(base)
    env.update(config.env)
    if config.install:
        env["RMBENCH_INSTALL"] = config.install
    if callgrind:
        env.setdefault("PYTHONHASHSEED", CALLGRIND_HASH_SEED)
        if config.install:
            env.setdefault("RUSTMALLOC_PURGE_DELAY_MS", str(CALLGRIND_PURGE_DELAY_MS))
    return env
