"""What a rebuild of the read models does besides folding the log
(:meth:`~vmledger.projections.runner.ViewUpdater.rebuild`): whether it keeps the
secondary indexes while it folds (:func:`keeps_indexes`), the cyclic garbage collector
paused meanwhile (:func:`collector_paused`), and the tables emptied before the first
pages are folded, or beside them in a thread on PostgreSQL (:func:`emptied`).
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from vmledger.projections.log_reading import more_than_one_connection
from vmledger.projections.servers import ServersView

#: a rebuild on PostgreSQL keeps the secondary indexes while it folds a log of up to this
#: many events: the server's time was lower keeping them up to date as the rows are
#: copied in than building them at the end (with the drops, index builds and a catalog
#: change each): about 2.5 µs less per event at 15,000 events and at 100,000 (the
#: projections benchmark's logs, ``--quick`` and full). Larger logs were not measured:
#: they build them at the end, as before. SQLite builds them faster than it keeps them,
#: at every size measured
KEEP_INDEXES_UP_TO = 200_000

#: the databases on which a rebuild empties the read models' tables in a thread while
#: it reads and folds its first pages (see :func:`emptied`): PostgreSQL, whose TRUNCATE
#: and deletes took 14-16 ms of a 15,000-event rebuild's ~170 (the first transaction
#: waited for them 0-9 ms in a thread). Not SQLite: its clear takes 3-4 ms there, and the
#: thread's process CPU came out no lower
CLEAR_BESIDE = frozenset({"postgres"})


def keeps_indexes(view: ServersView, recorder: Any) -> bool:
    """Whether a rebuild of ``recorder``'s log keeps ``view``'s secondary indexes while
    it folds (see :data:`KEEP_INDEXES_UP_TO`); else they are dropped with the rows and
    built once at the end."""
    return (view.dialect == "postgres"
            and (recorder.max_notification_id() or 0) <= KEEP_INDEXES_UP_TO)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Within: the cyclic garbage collector is off. A fold allocates a few dicts per
    event and keeps a batch of rows and documents alive: the collector's full passes
    over them cost 15-25 % of a rebuild, and nothing a fold makes is cyclic garbage."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


class _InThread:
    """``run()`` in a thread, in the caller's context (its pinned layout, its bulk
    mode); :meth:`wait` joins it and raises its error, once."""

    def __init__(self, run: Callable[[], None], name: str) -> None:
        self._error: BaseException | None = None
        context = contextvars.copy_context()

        def target() -> None:
            try:
                context.run(run)
            except BaseException as error:  # raised by wait(), in the caller's thread
                self._error = error

        self._thread = threading.Thread(target=target, name=name, daemon=True)
        self._thread.start()

    def wait(self) -> None:
        self._thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error


@contextmanager
def emptied(view: ServersView, clear: Callable[[], None], lock: AbstractContextManager[Any]
            ) -> Iterator[Callable[[], None] | None]:
    """Around a rebuild's fold: ``view`` emptied by ``clear``. On the databases of
    :data:`CLEAR_BESIDE`, with a pool of more than one connection, ``clear`` runs in a
    thread (on a connection of its own) while the first pages are read and folded
    (nothing to load from empty tables): yields what returns once the clear has
    committed, raising its error (the first transaction calls it before it opens for its
    writes: the fold's ``cleared``), and joins the thread however the fold ends (the
    fold's error is the one raised). Elsewhere it clears first, holding ``lock`` (the
    updater's, which its catch-ups hold), and yields None."""
    if view.dialect in CLEAR_BESIDE and more_than_one_connection(view):
        clearing = _InThread(clear, "vmledger-clear")
        try:
            yield clearing.wait
        except BaseException:
            # joined, whatever it raises: the fold's error is the one told
            with contextlib.suppress(Exception):
                clearing.wait()
            raise
        clearing.wait()  # (an empty log: no transaction waited for it)
        return
    with lock:
        clear()
    yield None
