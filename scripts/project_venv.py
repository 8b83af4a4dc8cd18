"""A virtual environment of a script's own with this checkout installed in it (shared by
``cpython_regrtest.py`` and ``memcheck.py``), and the clean environment their children run in."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def clean_env() -> dict[str, str]:
    """This environment without PYTHON* variables (these machines export PYTHONUNBUFFERED and
    PYTHONDONTWRITEBYTECODE, which break some CPython tests), without rustmalloc's and without
    the calling venv's."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "RUSTMALLOC")) and k not in ("VIRTUAL_ENV", "__PYVENV_LAUNCHER__")}


def prepare(base_python: str, venv: Path, install: bool, *, spec: str = str(ROOT),
            build_env: dict[str, str] | None = None, what: str = "pip install: a release build") -> Path:
    """The venv's interpreter: ``venv`` is created from ``base_python`` if missing, and ``spec``
    (this checkout) is pip-installed into it when ``install``, with ``build_env`` added to the
    environment (e.g. maturin's feature arguments). The caller checks what it needs is there."""
    python = venv / "bin" / "python"
    env = clean_env()
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if not python.exists():
        print(f"== creating the virtual environment {venv} (from {base_python})", flush=True)
        subprocess.run([base_python, "-m", "venv", str(venv)], check=True, env=env)
    if install:
        print(f"== installing {spec} into it ({what})", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", spec], check=True,
                       env={**env, **(build_env or {})})
    return python
