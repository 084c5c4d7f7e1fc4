"""What a read model written together with the servers view implements: the
:class:`ViewExtension` that defines its tables, and the :class:`ExtensionBatch` that
folds one transaction's pages of the log into it and writes its rows.

The fold that drives them is :mod:`vmledger.projections.folding`; the view they are
written with, :mod:`vmledger.projections.servers`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from vmledger.projections.store import RowWriter


class ViewExtension(Protocol):
    """Another read model written in the same transaction as the servers view.

    All read models share the servers view's tracking position, so a page of the log is
    applied to every one of them exactly once, and a rebuild rebuilds them all.
    ``sql`` turns a statement written with ``?`` placeholders into the backend's dialect.
    """

    def create_statements(self, sql: Callable[[str], str]) -> list[str]: ...

    def batch(self, writer: RowWriter, *, empty: bool) -> ExtensionBatch:
        """The state of one transaction's fold: pages are folded into it one after the
        other, then it writes its rows once (``writer``: the transaction's cursor, the
        dialect, and bulk upserts). ``empty``: the read model has no rows yet (a
        rebuild's first transaction), so nothing needs loading."""
        ...

    def clear(self, curs: Any, sql: Callable[[str], str]) -> None: ...


class ExtensionBatch(Protocol):
    def fold(self, events: Sequence[Any]) -> None:
        """Fold a page: ``events`` are the page's decoded events of the kinds this
        read model declares (its ``event_types``; every kind the view decodes, see
        :meth:`~vmledger.projections.servers.ServersView.wants`, when it declares
        none), in order; not called for a
        page without any."""
        ...

    def write(self) -> None:
        """Write every row the pages changed."""
        ...

    # optional: ``server_folded(server_id, doc, event)``, called after each server event
    # is folded into its document (``doc``, in the servers view's form; a time in it
    # may be a datetime or in stored form, ``{"$dt": ...}``), for read models
    # that follow the servers' documents rather than the events alone;
    # ``unchanged_by``, the server event classes that never change what the read model
    # reads from a document: ``server_folded`` is not called after them, nor
    # ``server_changed`` before them;
    # ``server_changed(server_id, doc)``, called once per server the transaction
    # changes, before its first event not in ``unchanged_by`` is folded (not at all when
    # it has none: what the read model reads of the document is as it was): ``doc`` is
    # the document the fold keeps changing in place, final when ``write`` is called
    # (for read models that only need each changed server's last document: cheaper
    # than a call per event);
    # ``preload(server_ids)``, called once per page with the servers first seen in the
    # transaction (when the view is not empty), to load their rows in bulk; with
    # ``preload_bulk_only`` true, in a bulk load alone (a catch-up, a rebuild: the
    # writer's ``bulk``), not in a command's own fold, which then makes no batch for it;
    # and
    # ``fold_servers(pairs)``, called instead of ``fold`` with a page's server events,
    # as (server id text, event) pairs in order (the id's text made once, by the view).
    #
    # A fold makes a batch only when one of these (or ``fold``) is called on it, and
    # calls ``write`` on the batches it made alone (the first fold of a view makes every
    # one, to learn which of these they implement); an extension whose batch must be
    # written whatever the fold has ``write_always`` true (read at each fold). A batch
    # is never false (no ``__len__`` or ``__bool__``).


#: a read model's ``server_folded`` (see :class:`ExtensionBatch`)
Follow = Callable[[str, dict[str, Any], Any], None]
