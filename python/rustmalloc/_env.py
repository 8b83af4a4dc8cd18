"""The values of the ``RUSTMALLOC`` and ``RUSTMALLOC_CHECK`` variables (case and spaces ignored),
read by the startup hook, ``install()`` and ``python -m rustmalloc run`` alike. Imports nothing:
the startup hook runs in every interpreter that has the variable set."""

from __future__ import annotations

OFF = frozenset({"", "0", "off", "false", "no"})
ALL = frozenset({"1", "on", "true", "yes", "all"})
DOMAINS = ("raw", "mem", "obj")
SETS = (frozenset({"raw"}), frozenset({"mem", "obj"}), frozenset(DOMAINS))
#: RUSTMALLOC_CHECK: 0 off, 1 report and abort, 2 report and go on.
CHECK = {**{v: 0 for v in OFF}, **{v: 1 for v in ("1", "on", "true", "yes", "abort")}, "warn": 2}
CHECK_HELP = "use 1 (report and abort), warn (report and go on) or 0 (off)"


def parse(value: str) -> tuple | None:
    """The domains a ``RUSTMALLOC`` value asks for: () for off, None if the value is invalid."""
    value = value.strip().lower()
    if value in OFF:
        return ()
    if value in ALL:
        return DOMAINS
    names = [part.strip() for part in value.split(",")]
    if frozenset(names) not in SETS or len(names) != len(set(names)):
        return None
    return tuple(d for d in DOMAINS if d in names)


def parse_check(value: str) -> int | None:
    """The checking mode a ``RUSTMALLOC_CHECK`` value asks for, None if the value is invalid."""
    return CHECK.get(value.strip().lower())
