"""Install rustmalloc at interpreter startup when the ``RUSTMALLOC`` variable asks for it.

``site`` runs ``rustmalloc.pth`` (shipped at the top of site-packages) at every start, including
under ``-I``, ``-E`` and ``-s``; its one line imports this module only when ``RUSTMALLOC`` is set
to something other than empty or ``0``, so an interpreter without the variable pays for one dict
lookup. Importing this module does the work once: a 3.11 venv processes its ``.pth`` files twice,
and the second import finds the module already in ``sys.modules``.

Values of ``RUSTMALLOC`` (case and spaces ignored):

- unset, empty, ``0``, ``off``, ``false``, ``no``: do nothing;
- ``1``, ``on``, ``true``, ``yes``, ``all``: install all three domains;
- a comma-separated list of domains: ``raw``, ``mem,obj``, ``raw,mem,obj``.

Anything else, or an install that fails (an unsupported interpreter, another allocator hook),
prints one line to stderr and leaves the interpreter on its default allocators: startup never
raises. If tracemalloc is already tracing (``-X tracemalloc``, ``PYTHONTRACEMALLOC``),
``install()`` stops it, installs and restarts it with the same frame limit, printing nothing.

``python -m rustmalloc run`` also sets ``RUSTMALLOC_STATS`` (print the report to stderr at exit)
and ``RUSTMALLOC_STATS_JSON`` (write the snapshot to that file at exit). They concern the process
that reads them: this module removes them from ``os.environ`` so that its children do not report
too, while ``RUSTMALLOC`` itself stays, so that every child process is served by rustmalloc.

``RUSTMALLOC_CHECK=1`` (or ``warn``) with ``RUSTMALLOC`` unset or empty also installs, all
domains, in the checking mode; with ``RUSTMALLOC`` it picks the checking mode for the domains that
names (``install()`` reads the variable). ``RUSTMALLOC=0`` (or ``off``...) turns rustmalloc off
whatever ``RUSTMALLOC_CHECK`` says. An invalid ``RUSTMALLOC_CHECK`` prints one line naming it and
installs nothing.

Only ``os``, ``sys`` (``site`` has loaded both already) and ``rustmalloc._env`` (which imports
nothing) are imported here until an install.
"""

from __future__ import annotations

import os
import sys

from ._env import CHECK_HELP, OFF as _OFF, parse, parse_check

#: What this module did, for tests and for ``python -m rustmalloc``: "off", "installed",
#: "invalid" or "failed".
outcome = "off"


def _warn(message: str) -> None:
    try:
        sys.stderr.write(f"rustmalloc: {message}\n")
        sys.stderr.flush()
    except Exception:  # no usable stderr (pythonw-like embeddings): stay silent
        pass


def _report_at_exit(print_report: bool, json_path: str | None) -> None:
    pid = os.getpid()

    def report() -> None:
        if os.getpid() != pid:  # a fork child that exits through atexit: the parent reports
            return
        try:
            import rustmalloc
            from rustmalloc.__main__ import report_text

            if json_path:
                import json

                with open(json_path, "w", encoding="utf-8") as f:
                    json.dump(rustmalloc.stats().to_dict(), f, indent=2)
                    f.write("\n")
            if print_report:
                sys.stdout.flush()
                sys.stderr.write(report_text("rustmalloc statistics at exit:") + "\n")
                sys.stderr.flush()
        except Exception as exc:
            _warn(f"could not write the statistics at exit: {type(exc).__name__}: {exc}")

    import atexit

    atexit.register(report)


def start() -> None:
    """Read the variables and act on them (idempotent: install() is, and the report variables
    are consumed). Runs when this module is first imported."""
    global outcome
    value = os.environ.get("RUSTMALLOC", "")
    check = os.environ.get("RUSTMALLOC_CHECK", "")
    mode = parse_check(check)
    if mode is None:
        outcome = "invalid"
        _warn(f"ignoring RUSTMALLOC_CHECK={check!r}: {CHECK_HELP}; running on CPython's default "
              "allocators")
        return
    if not value.strip() and mode:
        value = "1"  # RUSTMALLOC_CHECK=1 alone: install all domains in the checking mode
    print_report = os.environ.pop("RUSTMALLOC_STATS", "").strip() not in _OFF
    json_path = os.environ.pop("RUSTMALLOC_STATS_JSON", "") or None
    domains = parse(value)
    if domains is None:
        outcome = "invalid"
        _warn(
            f"ignoring RUSTMALLOC={value!r}: expected 1 (all domains), raw, mem,obj or raw,mem,obj "
            "(mem and obj go together), or 0 for off; running on CPython's default allocators"
        )
        return
    if not domains:
        return
    try:
        import rustmalloc

        rustmalloc.install(domains)
    except Exception as exc:
        outcome = "failed"
        _warn(f"RUSTMALLOC={value!r}: not installed ({type(exc).__name__}: {exc}); "
              "running on CPython's default allocators")
        return
    outcome = "installed"
    if print_report or json_path:
        _report_at_exit(print_report, json_path)


start()
