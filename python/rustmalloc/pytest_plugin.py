"""pytest plugin of rustmalloc, registered through the ``pytest11`` entry point.

``pytest --rustmalloc`` installs rustmalloc in the pytest process as early as a plugin can, before
the initial conftest files and the test modules are imported, and prints rustmalloc's statistics
at the end of the session. Without the option the plugin does nothing. (Subprocesses the tests
start are not covered: for them, run ``RUSTMALLOC=1 pytest``.)

Sections: command line options; installing; the session summary.
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
    # Covers a plugin registered too late for pytest_load_initial_conftests (e.g. through a
    # conftest's pytest_plugins); install() is idempotent.
    _install(config)


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
