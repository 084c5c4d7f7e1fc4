"""Shared pytest configuration.

Sections below are independent; add new fixtures and hooks in their own section.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.engines import make_engine
from tests.support.postgres import PostgresCluster, postgres_skip_reason
from vmledger import Engine, FakeClock
from vmledger.api import create_app
from vmledger.api.testing import ApiClient

# --------------------------------------------------------------------------------------
# PostgreSQL: one throwaway cluster per session, one fresh database per test.
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster started from the machine's binaries for this test session.

    Skips (with a reason) when initdb/pg_ctl are not installed.
    """
    reason = postgres_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with PostgresCluster() as cluster:
        yield cluster


def _unique_database_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", test_name.lower()).strip("_")[:40]
    return f"t_{slug}_{uuid.uuid4().hex[:12]}"  # at most 57 chars (limit is 63)


@pytest.fixture
def postgres_url(
    postgres_cluster: PostgresCluster, request: pytest.FixtureRequest
) -> Iterator[str]:
    """URL of a fresh, empty database in the session cluster; dropped after the test."""
    name = _unique_database_name(request.node.name)
    yield postgres_cluster.create_database(name)
    try:
        postgres_cluster.drop_database(name)
    except psycopg.Error as exc:  # best effort: the whole cluster is thrown away anyway
        warnings.warn(f"could not drop test database {name!r}: {exc}", stacklevel=1)


# --------------------------------------------------------------------------------------
# VMLEDGER_REQUIRE_ALL=1 (set by CI): a skipped test fails the run instead of passing
# silently. Without the variable, skips are only reported (with reasons, via -ra).
# --------------------------------------------------------------------------------------

_REQUIRE_ALL_ENV = "VMLEDGER_REQUIRE_ALL"
_skipped: list[tuple[str, str]] = []  # (nodeid, reason), reset at every session start
_require_all_message_key = pytest.StashKey[list[str]]()


def _require_all() -> bool:
    return os.environ.get(_REQUIRE_ALL_ENV) == "1"


def _record_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):  # xfail is not a skip
        return
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2]).removeprefix("Skipped: ")
    else:
        reason = str(longrepr)
    _skipped.append((report.nodeid, reason))


def pytest_sessionstart(session: pytest.Session) -> None:
    _skipped.clear()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _record_skip(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _record_skip(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int | pytest.ExitCode) -> None:
    if not _require_all() or hasattr(session.config, "workerinput"):  # xdist: controller only
        return
    skipped = list(_skipped)
    if not skipped:
        return
    lines = [
        f"{_REQUIRE_ALL_ENV}=1 is set and {len(skipped)} test(s) were skipped; "
        "failing the run (install what they need, or unset the variable locally):",
        *(f"  SKIPPED {nodeid}: {reason}" for nodeid, reason in skipped),
    ]
    session.config.stash[_require_all_message_key] = lines
    if exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if session.config.pluginmanager.get_plugin("terminalreporter") is None:
        print("\n".join(lines), file=sys.stderr)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    lines = config.stash.get(_require_all_message_key, [])
    if lines:
        terminalreporter.write_sep("=", f"{_REQUIRE_ALL_ENV}: skipped tests", red=True)
        for line in lines:
            terminalreporter.write_line(line)


# --------------------------------------------------------------------------------------
# Backends: tests that take ``url`` run on SQLite and on a real PostgreSQL; ``engine`` is
# an engine on it with a fake clock. Engines of other kinds get fixtures of their own
# names: a test module never redefines one of these (tests/test_fixtures.py checks).
# --------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vmledger.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(url: str, clock: FakeClock) -> Iterator[Engine]:
    with make_engine(url, clock=clock) as e:
        yield e


@pytest.fixture
def memory_engine(clock: FakeClock) -> Iterator[Engine]:
    """An engine on an in-process database (the API tests' default)."""
    with Engine("memory", clock=clock) as e:
        yield e


@pytest.fixture
def system_clock_engine() -> Iterator[Engine]:
    """An engine on an in-process database and the system clock: servers made one after
    the other get distinct creation times, which some list-order tests rely on."""
    with Engine("memory") as e:
        yield e


@pytest.fixture
def noauth_client(memory_engine: Engine) -> ApiClient:
    """The Compute API over ``memory_engine`` in noauth mode, called in process."""
    return ApiClient(create_app(memory_engine))
