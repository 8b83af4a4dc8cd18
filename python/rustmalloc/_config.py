"""Settings: sizes with units, and the purge policy (``configure()``, ``RUSTMALLOC_*``)."""

from __future__ import annotations

import os
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers read it as True)

from . import _rustmalloc as _ext

if TYPE_CHECKING:
    from typing import Optional, Union

_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}
_DIGITS = "0123456789"


def _number_and_unit(text: str) -> Optional[tuple]:
    """``" 1.5 KiB "`` -> ``("1.5", "KiB")``; None unless the text is digits (with at most one
    ``.`` followed by digits) and then letters, spaces around either. By hand rather than with
    ``re``: the startup hook reads ``RUSTMALLOC_*`` sizes through here, and importing ``re`` would
    add its modules and compiled patterns (about 1,600 objects every full collection walks) to
    every interpreter that sets one."""
    s = text.strip()
    i = 0
    while i < len(s) and (s[i] in _DIGITS or s[i] == "."):
        i += 1
    number, unit = s[:i], s[i:].lstrip()
    whole, dot, frac = number.partition(".")
    if not whole or whole.strip(_DIGITS) or (dot and (not frac or frac.strip(_DIGITS))):
        return None
    if unit and not (unit.isascii() and unit.isalpha()):
        return None
    return number, unit


#: The largest size accepted (the allocator keeps sizes in 64-bit counters).
_SIZE_MAX = 2**63 - 1


def parse_size(value: Union[int, str], what: str = "size") -> int:
    """``"24 MB"`` -> 24000000, ``"1.5KiB"`` -> 1536, ``1024`` -> 1024. Units: B, KB, MB, GB
    (powers of 1000) and KiB, MiB, GiB (powers of 1024), any case."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{what} must be an int (bytes) or a string such as '24 MB', not {type(value).__name__}")
    if isinstance(value, int):
        size = value
    else:
        parts = _number_and_unit(value)
        if parts is None or parts[1].lower() not in _UNITS:
            raise ValueError(
                f"{what}: cannot read {value!r} as a size; write a number and a unit, such as "
                "'512 B', '24 MB' or '1.5 GiB' (units: B, KB, MB, GB, KiB, MiB, GiB)"
            )
        size = int(float(parts[0]) * _UNITS[parts[1].lower()])
    if size < 0:
        raise ValueError(f"{what} must not be negative: {value}")
    if size > _SIZE_MAX:
        raise ValueError(f"{what} is too large: {value!r} is over 2**63 - 1 bytes")
    return size


def settings() -> dict:
    """The purge policy in force: ``purge``, ``purge_delay_ms``, ``retain_bytes``, ``idle_purge``."""
    enabled, delay, retain, _ = _ext._purge_settings()
    idle, _running = _ext._idle_purge_state()
    return {"purge": enabled, "purge_delay_ms": delay, "retain_bytes": retain, "idle_purge": idle}


def configure(
    *,
    purge: Optional[bool] = None,
    purge_delay_ms: Optional[int] = None,
    retain_bytes: Union[int, str, None] = None,
    idle_purge: Optional[bool] = None,
) -> dict:
    """Set the policy for giving memory back to the OS; returns the settings now in force.

    - ``purge``: automatic purging on or off (``trim()`` works either way).
    - ``purge_delay_ms``: the shortest time between automatic purge passes of a heap, and the
      shortest time free memory is kept before a pass gives it back (0 to 3600000). A pass runs
      on a heap's slow path, never on the free fast path. Each heap lengthens its delay, up to
      16 times this, while it keeps taking back soon what its passes gave back
      (``stats().os.purge_delay_ms`` shows the MEM/OBJ heap's delay in force).
    - ``retain_bytes``: empty pages a heap keeps committed for reuse after an automatic pass
      (an int, or a string such as ``"8 MiB"``).
    - ``idle_purge``: the idle purger on or off: a thread that runs the automatic passes while
      the program makes no allocation (a service waiting between requests), so memory it dropped
      goes back without waiting for its next allocation burst. On by default; it only gives back
      what the automatic policy would (``purge=False`` stops it too).

    The environment variables ``RUSTMALLOC_PURGE`` (0 or 1), ``RUSTMALLOC_PURGE_DELAY_MS``,
    ``RUSTMALLOC_RETAIN_BYTES`` and ``RUSTMALLOC_IDLE_PURGE`` (0 or 1) set the same at
    ``install()``.
    """
    now = settings()
    if purge is not None:
        if not isinstance(purge, bool):
            raise TypeError(f"purge must be True or False, not {purge!r}")
        now["purge"] = purge
    if purge_delay_ms is not None:
        if isinstance(purge_delay_ms, bool) or not isinstance(purge_delay_ms, int):
            raise TypeError(f"purge_delay_ms must be an int (milliseconds), not {type(purge_delay_ms).__name__}")
        if not 0 <= purge_delay_ms <= 3_600_000:
            raise ValueError(f"purge_delay_ms must be between 0 and 3600000 (one hour), not {purge_delay_ms}")
        now["purge_delay_ms"] = purge_delay_ms
    if retain_bytes is not None:
        now["retain_bytes"] = parse_size(retain_bytes, "retain_bytes")
    if idle_purge is not None:
        if not isinstance(idle_purge, bool):
            raise TypeError(f"idle_purge must be True or False, not {idle_purge!r}")
        now["idle_purge"] = idle_purge
    _ext._configure(now["purge"], now["purge_delay_ms"], now["retain_bytes"])
    _ext._set_idle_purge(now["idle_purge"])
    if now["idle_purge"] and _ext._installed_mask():
        from . import _idle

        _idle.start()
    return settings()


def configure_from_environment(environ: Optional[dict] = None) -> None:
    """Apply ``RUSTMALLOC_PURGE``, ``RUSTMALLOC_PURGE_DELAY_MS``, ``RUSTMALLOC_RETAIN_BYTES`` and
    ``RUSTMALLOC_IDLE_PURGE``; a bad value raises ValueError naming the variable."""
    env = os.environ if environ is None else environ
    kwargs: dict = {}
    for name, key in (("RUSTMALLOC_PURGE", "purge"), ("RUSTMALLOC_IDLE_PURGE", "idle_purge")):
        if name in env:
            value = env[name].strip().lower()
            if value not in ("0", "1", "true", "false", "on", "off"):
                raise ValueError(f"{name}={env[name]!r}: use 1 (on) or 0 (off)")
            kwargs[key] = value in ("1", "true", "on")
    if "RUSTMALLOC_PURGE_DELAY_MS" in env:
        raw = env["RUSTMALLOC_PURGE_DELAY_MS"].strip()
        if not (raw.isascii() and raw.isdigit()):
            raise ValueError(f"RUSTMALLOC_PURGE_DELAY_MS={raw!r}: use a whole number of milliseconds")
        kwargs["purge_delay_ms"] = int(raw)
    if "RUSTMALLOC_RETAIN_BYTES" in env:
        raw = env["RUSTMALLOC_RETAIN_BYTES"]
        digits = raw.strip()
        kwargs["retain_bytes"] = int(digits) if digits.isascii() and digits.isdigit() else raw
    try:
        configure(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid RUSTMALLOC_* setting: {e}") from None
