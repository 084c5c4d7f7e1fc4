"""Counting what SQLite is asked: every ``sqlite3`` connection opened within a block gets
a trace callback, which the benchmarks (statements and commits per action, flushed
commits per round trip) and the statement-budget tests read."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def tracing_connections(trace_for: Callable[[dict[str, Any]], Callable[[str], None]]
                        ) -> Iterator[None]:
    """Every ``sqlite3`` connection opened within gets ``trace_for(its keyword
    arguments)`` as its trace callback, for as long as it lives (a pool's connections
    opened within keep reporting after the block)."""
    real = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = real(*args, **kwargs)
        conn.set_trace_callback(trace_for(kwargs))
        return conn

    sqlite3.connect = connect  # type: ignore[assignment]
    try:
        yield
    finally:
        sqlite3.connect = real
