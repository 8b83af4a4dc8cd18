"""pytest plugin of rustmalloc, registered through the ``pytest11`` entry point.

``pytest --rustmalloc`` installs rustmalloc in the pytest process as early as a plugin can, before
the initial conftest files and the test modules are imported, and prints rustmalloc's statistics
at the end of the session. Without the option the plugin does nothing. (Subprocesses the tests
start are not covered: for them, run ``RUSTMALLOC=1 pytest``.)

It also gives tests two tools, active only where a test asks for them:

- ``@pytest.mark.limit_memory("24 MB")`` fails the test when the peak of the net bytes it
  allocated (every domain, every thread, as ``rustmalloc.track()`` measures) exceeds the limit,
  saying what the peak was. Units: B, KB, MB, GB, KiB, MiB, GiB.
- the ``rustmalloc_stats`` fixture gives the test a ``rustmalloc.track()`` entered around its body.

Both install rustmalloc (all domains) if it is not yet installed: blocks allocated before are
still freed correctly, but only allocations after the install are measured, so a whole session
measures best under ``--rustmalloc``.

Sections: command line options; installing; memory limits and the fixture; the session summary.
"""

from __future__ import annotations

import pytest

_OPTION = "rustmalloc"


def _requested(config: pytest.Config) -> bool:
    # known_args_namespace holds the options parsed ahead of pytest_load_initial_conftests.
    namespace = getattr(config, "known_args_namespace", None)
    return bool(getattr(config.option, _OPTION, False) or getattr(namespace, _OPTION, False))


# ---- command line options ----------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rustmalloc", "rustmalloc memory allocator")
    group.addoption(
        "--rustmalloc",
        action="store_true",
        dest=_OPTION,
        default=False,
        help="install rustmalloc (all domains) before the tests are collected and print its "
        "statistics at the end of the session",
    )


# ---- installing --------------------------------------------------------------------------


def _install(config: pytest.Config) -> None:
    if not _requested(config):
        return
    import rustmalloc

    try:
        rustmalloc.install()
    except (RuntimeError, ValueError) as exc:
        raise pytest.UsageError(f"--rustmalloc: cannot install rustmalloc: {exc}") from None


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list) -> None:
    _install(early_config)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "limit_memory(limit): fail the test if the peak of the net bytes it allocates exceeds "
        "limit (an int of bytes or a string such as '24 MB'; units B, KB, MB, GB, KiB, MiB, GiB)",
    )
    # Covers a plugin registered too late for pytest_load_initial_conftests (e.g. through a
    # conftest's pytest_plugins); install() is idempotent.
    _install(config)


# ---- memory limits and the fixture ---------------------------------------------------------


def _limit_of(item: pytest.Item):
    marker = item.get_closest_marker("limit_memory")
    if marker is None:
        return None
    from rustmalloc._config import parse_size

    if len(marker.args) != 1 or marker.kwargs:
        raise pytest.UsageError(
            f"{item.nodeid}: use @pytest.mark.limit_memory('24 MB') with exactly one limit"
        )
    try:
        return parse_size(marker.args[0], "limit_memory")
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(f"{item.nodeid}: {exc}") from None


def _ensure_installed() -> None:
    import rustmalloc

    if not rustmalloc.installed():
        rustmalloc.install()


_LIMIT = pytest.StashKey[int]()


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    # Read every limit before any test runs, so a malformed one is a usage error of the session.
    for item in items:
        limit = _limit_of(item)
        if limit is not None:
            item.stash[_LIMIT] = limit


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    limit = item.stash.get(_LIMIT, None)
    if limit is None:
        yield
        return
    _ensure_installed()
    import rustmalloc

    with rustmalloc.track() as measured:
        outcome = yield
    if outcome.excinfo is None and measured.peak_bytes > limit:
        from rustmalloc._stats import format_bytes

        try:
            pytest.fail(
                f"{item.nodeid} allocated a peak of {measured.peak_bytes:,} bytes "
                f"({format_bytes(measured.peak_bytes)}), over its limit_memory of {limit:,} "
                f"bytes ({format_bytes(limit)})",
                pytrace=False,
            )
        except pytest.fail.Exception as failure:
            # The test's outcome, set through pluggy (1.1+): raised here, in a hook wrapper's
            # teardown, it would also come out as a PluggyTeardownRaisedWarning (an error under
            # `-W error`).
            if not hasattr(outcome, "force_exception"):
                raise
            outcome.force_exception(failure)


@pytest.fixture
def rustmalloc_stats():
    """A ``rustmalloc.track()`` entered around the test body: read ``allocated_bytes``,
    ``peak_bytes``, ... while the test runs or after."""
    _ensure_installed()
    import rustmalloc

    with rustmalloc.track() as measured:
        yield measured


# ---- the session summary -----------------------------------------------------------------


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _requested(config):
        return
    import rustmalloc
    from rustmalloc.__main__ import report_text

    if not rustmalloc.installed():
        return
    terminalreporter.write_sep("=", "rustmalloc")
    terminalreporter.write_line(report_text("rustmalloc statistics at the end of the session:"))
