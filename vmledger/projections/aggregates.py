"""Read models with one row per aggregate of one kind (custom images, key pairs).

Each row is the aggregate's document, folded with its events' own ``apply`` methods on a
plain namespace, plus the columns its queries need. A subclass names the table, the
events, the table's statements and a row's columns; the batch (one per transaction of
the servers view, see :class:`~vmledger.projections.servers.ViewExtension`) loads each
touched row once, skips events a row already has, and writes each changed row once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from vmledger.projections.store import RowWriter, loads

Doc = dict[str, Any]


def fold(doc: Doc | None, event: Any) -> Doc:
    """An aggregate's document after ``event`` (an image's, a key pair's...): the
    event's own ``apply`` on a plain namespace, with id, version and times."""
    target = SimpleNamespace(**(doc or {}))
    event.apply(target)
    result = vars(target)
    result["id"] = str(event.originator_id)
    result["version"] = event.originator_version
    result.setdefault("created_at", event.timestamp)
    result["updated_at"] = event.timestamp
    return result


class AggregateRows:
    table: str
    columns: tuple[str, ...]
    #: the column(s) rows are unique by
    key: str | tuple[str, ...] = "id"
    #: the events this read model folds (the others need not be decoded for it)
    event_types: tuple[type, ...] = ()

    def create_statements(self, sql: Callable[[str], str]) -> list[str]:
        raise NotImplementedError

    def row(self, doc: Doc) -> tuple[Any, ...]:
        """A document's values in :attr:`columns` order."""
        raise NotImplementedError

    def fold(self, doc: Doc | None, event: Any) -> Doc:
        """The document after ``event``: the event's own ``apply`` on a namespace."""
        return fold(doc, event)

    def batch(self, writer: RowWriter, *, empty: bool) -> AggregateRowsBatch:
        return AggregateRowsBatch(self, writer, empty=empty)

    def clear(self, curs: Any, sql: Callable[[str], str]) -> None:
        curs.execute(sql(f"DELETE FROM {self.table}"))


class AggregateRowsBatch:
    """One transaction's fold of an :class:`AggregateRows` read model."""

    def __init__(self, model: AggregateRows, writer: RowWriter, *, empty: bool) -> None:
        self.model = model
        self.writer = writer
        self.empty = empty
        self.docs: dict[str, Doc | None] = {}
        self.changed: list[str] = []

    def fold(self, events: Sequence[Any]) -> None:
        page: list[Any] = [e for e in events if isinstance(e, self.model.event_types)]
        if not page:
            return
        docs = self.docs
        unknown = [i for i in dict.fromkeys(str(e.originator_id) for e in page)
                   if i not in docs]
        for key in unknown:
            docs[key] = None
        if unknown and not self.empty:
            curs, sql = self.writer.curs, self.writer.sql
            for i in range(0, len(unknown), 500):
                chunk = unknown[i:i + 500]
                marks = ",".join("?" for _ in chunk)
                curs.execute(sql(f"SELECT id, doc FROM {self.model.table} "
                                 f"WHERE id IN ({marks})"), chunk)
                docs.update((row["id"], loads(row["doc"])) for row in curs.fetchall())
        for event in page:
            key = str(event.originator_id)
            current = docs[key]
            if current is not None and current["version"] >= event.originator_version:
                continue  # already folded (a rebuild overlapping a live update)
            docs[key] = self.model.fold(current, event)
            self.changed.append(key)

    def write(self) -> None:
        rows = []
        for key in dict.fromkeys(self.changed):
            doc = self.docs[key]
            assert doc is not None
            rows.append(self.model.row(doc))
        self.writer.upsert(self.model.table, self.model.columns, self.model.key, rows)
