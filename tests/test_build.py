"""The installed extension is built as the project's build configuration says."""

from __future__ import annotations

import shutil
import subprocess

import pytest

import rustmalloc._rustmalloc as ext

HOOKS = {f"rustmalloc::python::{domain}_{fn}" for domain in ("raw", "mem", "obj") for fn in ("malloc", "free")}


def _symbols(path: str) -> dict[str, int]:
    out = subprocess.run(["nm", "-C", path], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[2] in HOOKS:
            found[parts[2]] = int(parts[0], 16)
    return found


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils)")
def test_hooks_start_on_64_byte_lines():
    # `.cargo/config.toml` aligns every function to 64 bytes, so a hook's fast path never starts
    # late in an instruction-fetch line by the accident of the code around it (README, "Code
    # alignment"). An explicit RUSTFLAGS replaces that setting and would fail this.
    found = _symbols(ext.__file__)
    assert set(found) == HOOKS, f"hook symbols missing from {ext.__file__}: {sorted(HOOKS - set(found))}"
    misaligned = {name: hex(addr) for name, addr in found.items() if addr % 64}
    assert not misaligned, (f"hooks not on 64-byte boundaries: {misaligned}; rebuild with "
                            "`pip install .` and no RUSTFLAGS in the environment")
