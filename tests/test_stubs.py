"""The type stubs (``__init__.pyi``, ``_rustmalloc.pyi``) agree with the installed package.

mypy's stubtest imports the package and compares every name, signature and class the stubs
declare with what exists at run time (frozen dataclasses included), and reports names the
stubs leave out. No install() happens: importing rustmalloc installs nothing.
"""

import subprocess
import sys

import pytest

pytest.importorskip("mypy", reason="mypy is in the [test] extra: pip install '.[test]'")

CONFIG = """\
[mypy]
ignore_missing_imports = True
[mypy-rustmalloc.__main__]
# runs a program as `python` would, through subprocess's private flag helper
ignore_errors = True
"""

# The native module's `__all__` (PyO3 fills it) lists every private helper; the stub declares
# the names themselves.
ALLOWLIST = "rustmalloc._rustmalloc.__all__\n"


def test_stubs_match_the_runtime(tmp_path):
    (tmp_path / "mypy.ini").write_text(CONFIG)
    (tmp_path / "allowlist.txt").write_text(ALLOWLIST)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "rustmalloc", "--mypy-config-file",
         str(tmp_path / "mypy.ini"), "--allowlist", str(tmp_path / "allowlist.txt")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_typed_use_of_the_api_passes_mypy_strict(tmp_path):
    use = tmp_path / "use.py"
    use.write_text(
        "import rustmalloc\n"
        "rustmalloc.install(('mem', 'obj'), check='warn')\n"
        "snap: rustmalloc.Snapshot = rustmalloc.stats()\n"
        "peak: int = snap.domains['obj'].peak_bytes_in_use\n"
        "os_stats = rustmalloc.OsStats(1, 2, 3, 4, 5, 6, 7)\n"
        "with rustmalloc.track() as t:\n"
        "    pass\n"
        "n: int = t.peak_bytes + rustmalloc.trim()\n"
        "settings: dict[str, object] = rustmalloc.configure(retain_bytes='8 MiB')\n"
    )
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import rustmalloc\n"
        "snap = rustmalloc.stats()\n"
        "snap.os.bytes_mapped = 3\n"  # frozen at run time: the stubs must say so
    )
    ok = subprocess.run([sys.executable, "-m", "mypy", "--strict", str(use)],
                        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    frozen = subprocess.run([sys.executable, "-m", "mypy", "--strict", str(bad)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert frozen.returncode != 0 and "bytes_mapped" in frozen.stdout, frozen.stdout
