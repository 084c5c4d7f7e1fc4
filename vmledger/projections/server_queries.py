"""Reads of the servers view: a project's servers page by page, a host's work, the
timer's candidates, a project's usage; and the types they take and return
(:class:`StoredServer`; the filters, :class:`ColumnFilter`, are in
:mod:`vmledger.projections.server_filters`).

The queries are answered from the view's indexed columns wherever they can be, and
documents are decoded only when used. They reach the database through the public
:class:`~vmledger.projections.store.ReadStore` interface only; the view
(:mod:`vmledger.projections.servers`) writes the rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from vmledger.projections import name_grams
from vmledger.projections.moves import TABLE as MOVES_TABLE
from vmledger.projections.project_usage import project_usage
from vmledger.projections.server_filters import ColumnFilter, prefix_range, required_literals
from vmledger.projections.store import ReadStore, Row, chunks, loads, time_text

#: the servers view's table
TABLE = "vmledger_servers"


class ServerQueries(ReadStore):
    """The servers view's queries (its backends are :class:`ReadStore` ones)."""

    table = TABLE

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """:meth:`query` with ``{t}`` naming the view's table."""
        return self.query(sql.replace("{t}", self.table), params)

    def get(self, server_id: str) -> dict[str, Any] | None:
        rows = self._read("SELECT doc FROM {t} WHERE id = ?", [server_id])
        return loads(rows[0]["doc"]) if rows else None

    def servers(self, *, project_id: str | None = None, include_deleted: bool = False,
             limit: int | None = None) -> list[dict[str, Any]]:
        return list(self.iter_servers(project_id=project_id, include_deleted=include_deleted,
                                      limit=limit))

    def iter_servers(self, *, project_id: str | None = None, include_deleted: bool = False,
                     limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Server documents newest first (created_at, then id, descending), decoded only
        as they are consumed: a caller that stops after a page decodes only that page."""
        for row in self.rows(project_id=project_id,
                             deleted="both" if include_deleted else "exclude", limit=limit):
            yield row.doc

    def rows(self, *, project_id: str | None = None, deleted: str = "exclude",
             after: str | None = None, limit: int | None = None, docs: bool = True,
             columns: ColumnFilter | None = None) -> list[StoredServer]:
        """Stored servers newest first (created_at, then id, descending), undecoded.

        ``deleted`` is ``"exclude"``, ``"only"`` or ``"both"``; ``after`` is the id of a
        server (visible in the same scope) the page starts after, as a list marker:
        ``KeyError`` when there is none; ``limit`` caps the rows read. Without ``docs``
        only ids and versions are read (see :meth:`fill`); ``columns`` filters further.

        The marker is a keyset condition (a row-value comparison the page index seeks
        to), so a page deep in the list costs what the first one does. Regular
        expressions (``columns.patterns``) are narrowed in SQL where they can be (a
        literal prefix after ``^``: an index range; a pattern without metacharacters:
        a substring test), then applied in Python to chunks of rows read in the page's
        order, the scan stopping as soon as the page is full.
        """
        where, params = self._scope(project_id, deleted)
        start: list[Any] = []  # the marker's (created_at, id): a scan starts after it
        scope = (list(where), list(params))  # the page index's range, before the filters
        if columns is not None:
            more, more_params = columns.sql(self.dialect)
            where += more
            params += more_params
        if after is not None:
            # the marker is looked for where the page would be, deleted servers included
            # unless they are excluded (as Nova's marker lookup)
            marker_where, marker_params = self._scope(
                project_id, "exclude" if deleted == "exclude" else "both")
            found = self._read(
                "SELECT created_at, id FROM {t} WHERE "
                + " AND ".join([*marker_where, "id = ?"]), [*marker_params, after])
            if not found:
                raise KeyError(after)
            where.append("(created_at, id) < (?, ?)")
            params += [found[0]["created_at"], after]
            start = [found[0]["created_at"] or "", after]
            scope[0].append("(created_at, id) < (?, ?)")
            scope[1].extend([found[0]["created_at"], after])
        patterns = columns.patterns if columns is not None else ()
        if not patterns:
            sql = "SELECT id, version, doc FROM {t}" if docs else "SELECT id, version FROM {t}"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY created_at DESC, id DESC"
            if limit is not None:
                sql += f" LIMIT {int(limit)}"
            return self._stored_rows(self._read(sql, params))
        assert columns is not None
        kept = self._scan(where, params, columns, limit, start, scope)
        if docs:
            self.fill(kept)
        return kept

    #: rows a filtered scan reads per query (at least a page)
    SCAN_CHUNK = 500

    def _scan(self, where: list[str], params: list[Any], columns: ColumnFilter,
              limit: int | None, start: list[Any],
              scope: tuple[list[str], list[Any]]) -> list[StoredServer]:
        """The rows ``where`` selects that every pattern of ``columns`` finds something
        in, newest first, up to ``limit``: read in chunks in the page's order, the first
        after ``start`` (a marker's created_at and id, if any), each after the last row
        of the one before, until the page is full. ``scope``: the conditions of the
        page index's range (project, deleted, marker) without the filters."""
        chunk = max(int(limit or 0), self.SCAN_CHUNK)
        names = dict.fromkeys(c for c, _ in columns.patterns)
        picked = self._name_gram(columns, scope, start)
        if picked is None:
            sql = ("SELECT id, version, created_at AS k_at, id AS k_id"
                   + "".join(f", {c} AS p_{c}" for c in names)
                   + " FROM {t}" + self._name_index_hint(columns))
            keyset, order = "(created_at, id) < (?, ?)", "created_at DESC, id DESC"
        else:
            # driven by the rarest gram's rows, in the page's order: only candidates read
            sql = ("SELECT s.id AS id, s.version AS version, g.at AS k_at, g.sid AS k_id"
                   + "".join(f", s.{c} AS p_{c}" for c in names)
                   + f" FROM {name_grams.TABLE} g {self._gram_join} {{t}} s ON s.id = g.sid")
            where, params = ["g.gram = ?", *where], [picked, *params]
            keyset, order = "(g.at, g.sid) < (?, ?)", "g.at DESC, g.sid DESC"
            # each candidate is a row lookup: read about a page first, more if needed
            chunk = min(chunk, max(int(limit or 0), 16))
        kept: list[StoredServer] = []
        last: list[Any] = list(start)
        while True:
            conditions = [*where, *([keyset] if last else [])]
            query = sql + (" WHERE " + " AND ".join(conditions) if conditions else "")
            found = self._read(query + f" ORDER BY {order} LIMIT {chunk}",
                               [*params, *last])
            for row in found:
                if all(pattern.search(row[f"p_{column}"] or "") is not None
                       for column, pattern in columns.patterns):
                    kept.append(StoredServer(row["id"], row["version"], None))
                    if limit is not None and len(kept) >= limit:
                        return kept
            if len(found) < chunk:
                return kept
            last = [found[-1]["k_at"], found[-1]["k_id"]]
            chunk = max(chunk, min(chunk * 2, self.SCAN_CHUNK))

    #: the newest rows of each gram read to weigh it: a gram with fewer is counted
    #: exactly (and the fewest drives the scan)
    GRAM_SAMPLE = 64
    #: a gram whose newest :attr:`GRAM_SAMPLE` rows span at least this many times as
    #: many servers of the scan's scope drives it; a denser one is no cheaper than the
    #: page's order (each of its rows is a lookup, where the page index is read in place)
    GRAM_SPARSER = 2
    #: the required grams weighed at most (spread over the pattern's literals)
    GRAMS_WEIGHED = 12

    def _name_gram(self, columns: ColumnFilter, scope: tuple[list[str], list[Any]],
                   start: Sequence[Any]) -> str | None:
        """The gram whose rows drive a ``name`` pattern's scan, or None (the scan follows
        the page's order). Each gram of the texts every name the pattern finds
        something in holds (see :func:`required_literals`) is weighed by its newest
        :attr:`GRAM_SAMPLE` rows, read newest first (after ``start``, a marker's
        created_at and id, if any) as the scan reads them: a gram with
        fewer is counted exactly, and the fewest drives; otherwise the gram whose
        sample reaches furthest back in the list is the sparsest where the scan starts,
        and drives if it is sparser than the page index's range over the same span
        (``scope``'s servers created since counted, up to :attr:`GRAM_SPARSER` times
        the sample: what a scan in the page's order would read). The cost is a few
        bounded index reads whatever the fleet's size: no gram is counted in full. A
        pattern with a literal prefix takes the name index instead; without the grams
        kept (:mod:`name_grams`), None."""
        grams: dict[str, None] = {}
        for column, pattern in columns.patterns:
            if column == "name" and prefix_range(pattern) is None:
                for text in required_literals(pattern):
                    grams.update(dict.fromkeys(text[i:i + 3] for i in range(len(text) - 2)))
        if not grams:
            return None
        if len(grams) > self.GRAMS_WEIGHED:  # any required gram is a right driver
            pieces = list(grams)
            step = len(pieces) / self.GRAMS_WEIGHED
            grams = dict.fromkeys(pieces[int(i * step)] for i in range(self.GRAMS_WEIGHED))
        sample = self.GRAM_SAMPLE
        enough = sample * self.GRAM_SPARSER
        after = " AND (at, sid) < (?, ?)" if start else ""
        # one statement (a round trip counts on PostgreSQL): each gram's sample (row k),
        # whether the grams are complete (row -1), and the scope's servers created
        # since the oldest of the full samples (row -2), read in the page index's order
        # (a planner without fresh statistics cannot take a table scan for it; a scope
        # of deleted servers too is weighed by those not deleted, the index's first
        # column fixed)
        arms: list[str] = []
        params: list[Any] = []
        for k, gram in enumerate(grams):
            arms.append(
                f"SELECT {k} AS k, COUNT(*) AS n, MIN(at) AS oldest FROM (SELECT at FROM"
                f" {name_grams.TABLE} WHERE gram = ?{after} ORDER BY at DESC, sid DESC"
                f" LIMIT {sample}) AS g{k}")
            params += [gram, *start]
        where, scope_params = scope
        if not any(c.startswith("deleted") for c in where):
            where = [*where, "deleted = 0"]
        statement = (
            "WITH weighed AS (" + " UNION ALL ".join(arms) + ") SELECT k, n, oldest FROM"
            f" weighed UNION ALL SELECT -1, (SELECT COUNT(*) FROM {name_grams.READY}), NULL"
            " UNION ALL SELECT -2, (SELECT COUNT(*) FROM (SELECT 1 FROM {t} WHERE "
            + " AND ".join([*where, "created_at >= (SELECT MIN(oldest) FROM weighed"
                                    f" WHERE n >= {sample})"])
            + f" ORDER BY created_at DESC, id DESC LIMIT {enough}) AS spanned), NULL")
        try:
            rows = {int(r["k"]): r for r in self._read(statement, [*params, *scope_params])}
        except Exception:  # an older database opened without the grams' tables
            return None
        if not int(rows[-1]["n"]):
            return None  # not complete (being indexed, or a name too long for them)
        fewest: tuple[int, str] | None = None
        furthest: tuple[str, str] | None = None
        for k, gram in enumerate(grams):
            found = int(rows[k]["n"])
            if found < sample:
                if fewest is None or found < fewest[0]:
                    fewest = (found, gram)
            elif furthest is None or str(rows[k]["oldest"]) < furthest[0]:
                furthest = (str(rows[k]["oldest"]), gram)
        if fewest is not None:
            return fewest[1]
        assert furthest is not None
        return furthest[1] if int(rows[-2]["n"]) >= enough else None

    @property
    def _gram_join(self) -> str:
        # SQLite's planner is told to walk the gram's rows first (the page's order);
        # PostgreSQL's has statistics
        return "CROSS JOIN" if self.dialect == "sqlite" else "JOIN"

    #: a name prefix shared by at most this many servers is read through the name
    #: index (then sorted); a wider one by the page's order, until the page is full
    NARROW_PREFIX = 2000

    def _name_index_hint(self, columns: ColumnFilter) -> str:
        """SQLite's planner, without statistics, prefers the page's index to the name
        index for a prefix range; told to use the latter when the prefix is narrow
        (counted on the name index, at most :attr:`NARROW_PREFIX` entries read).
        PostgreSQL's planner has statistics: no hint."""
        if self.dialect != "sqlite":
            return ""
        for column, pattern in columns.patterns:
            bounds = prefix_range(pattern) if column == "name" else None
            if bounds is not None:
                found = self._read(
                    "SELECT COUNT(*) AS n FROM (SELECT 1 FROM {t} WHERE name >= ? AND name < ?"
                    f" LIMIT {self.NARROW_PREFIX + 1})", list(bounds))
                if int(found[0]["n"]) <= self.NARROW_PREFIX:
                    return " INDEXED BY {t}_name"
        return ""

    def sort_columns(self, *, project_id: str | None = None, deleted: str = "exclude"
                     ) -> list[dict[str, Any]]:
        """Every server in scope as its indexed columns (id, version, name, project_id,
        vm_state, task_state, host, created_at and updated_at as fixed-width UTC text,
        deleted): enough to sort a list page without decoding documents. Newest first."""
        where, params = self._scope(project_id, deleted)
        sql = ("SELECT id, version, name, project_id, vm_state, task_state, host, created_at,"
               " updated_at, deleted FROM {t}")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC"
        return [dict(row) for row in self._read(sql, params)]

    @staticmethod
    def _stored_rows(found: list[Any]) -> list[StoredServer]:
        if not found:
            return []
        if isinstance(found[0], dict):  # PostgreSQL's rows are dicts
            return [StoredServer(r["id"], r["version"], r.get("doc")) for r in found]
        if len(found[0]) == 3:  # sqlite3.Row, by index
            return [StoredServer(r[0], r[1], r[2]) for r in found]
        return [StoredServer(r[0], r[1], None) for r in found]

    def fill(self, rows: Sequence[StoredServer]) -> None:
        """Read the documents of rows read without them, each with the version it has
        now (which may be newer than the row's). A row whose server is no longer in the
        view keeps no document (``loaded`` is false)."""
        by_id = {row.id: row for row in rows}
        for chunk in chunks(list(by_id), 500):
            marks = ",".join("?" for _ in chunk)
            for found in self._stored_rows(self._read(
                    f"SELECT id, version, doc FROM {{t}} WHERE id IN ({marks})", chunk)):
                row = by_id[found.id]
                row.version, row.text, row._doc = found.version, found.text, None

    @staticmethod
    def _scope(project_id: str | None, deleted: str) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if project_id is not None:
            where.append("project_id = ?")
            params.append(project_id)
        if deleted == "exclude":
            where.append("deleted = 0")
        elif deleted == "only":
            where.append("deleted = 1")
        elif deleted != "both":
            raise ValueError(f"deleted must be exclude, only or both, not {deleted!r}")
        return where, params

    def in_flight(self, host: str | None = None) -> list[tuple[str, str]]:
        """(server id, request id) of every action in flight, or of those ``host``'s
        agent enacts: its own servers' but those another host enacts now, and the
        servers moving between hosts whose step is its own (see
        :mod:`vmledger.projections.moves`)."""
        sql = "SELECT id, pending_request_id FROM {t} WHERE pending_action IS NOT NULL"
        params: list[Any] = []
        if host is not None:
            sql = (f"SELECT id, pending_request_id, updated_at FROM {{t}}"
                   f" WHERE pending_action IS NOT NULL AND host = ? AND id NOT IN"
                   f" (SELECT server_id FROM {MOVES_TABLE})"
                   f" UNION ALL SELECT s.id, s.pending_request_id, s.updated_at"
                   f" FROM {MOVES_TABLE} m JOIN {{t}} s ON s.id = m.server_id"
                   f" WHERE m.host = ? AND s.pending_action IS NOT NULL")
            params.extend([host, host])
        sql += " ORDER BY updated_at, id"
        return [(r["id"], r["pending_request_id"]) for r in self._read(sql, params)]

    def idle_states(self, host: str, *, after: str | None = None, limit: int = 500
                    ) -> list[tuple[str, str, str | None, int]]:
        """(id, vm_state, task_state, power_state) of the servers on ``host`` with no
        action in flight (not deleted), by id, after the id ``after``, at most ``limit``
        of them: what the power-state sync compares, read from the columns and the
        document's power state in SQL (no document decoded)."""
        power = ("((doc::jsonb)->>'power_state')::bigint" if self.dialect == "postgres"
                 else "json_extract(doc, '$.power_state')")
        sql = (f"SELECT id, vm_state, task_state, {power} AS power_state FROM {{t}}"
               " WHERE host = ? AND pending_action IS NULL AND deleted = 0")
        params: list[Any] = [host]
        if after is not None:
            sql += " AND id > ?"
            params.append(after)
        rows = self._read(sql + f" ORDER BY id LIMIT {int(limit)}", params)
        return [(str(r["id"]), str(r["vm_state"]), r["task_state"], int(r["power_state"] or 0))
                for r in rows]

    def any_on_host(self, host: str) -> bool:
        """Whether a server (not deleted) is placed on ``host``."""
        return bool(self._read(
            "SELECT 1 AS one FROM {t} WHERE host = ? AND deleted = 0 LIMIT 1", [host]))

    def workload_on_host(self, host: str, vm_state: str, tasks: Sequence[str],
                         states: Sequence[str], allocations: str) -> int:
        """How many servers holding resources on ``host`` (a row in the ``allocations``
        table) are in ``vm_state`` or, in another of ``states`` (every vm_state), busy
        with one of ``tasks``. Both counts seek the (host, vm_state, task_state) index,
        so they cost what the busy servers number, not the host's servers."""
        join = f"SELECT COUNT(*) AS n FROM {{t}} s JOIN {allocations} a ON a.server_id = s.id"
        building = self._read(join + " WHERE s.host = ? AND s.vm_state = ?", [host, vm_state])
        others = [state for state in states if state != vm_state]
        if not tasks or not others:
            return int(building[0]["n"])
        busy = self._read(
            join + f" WHERE s.host = ? AND s.vm_state IN ({', '.join('?' for _ in others)})"
            f" AND s.task_state IN ({', '.join('?' for _ in tasks)})",
            [host, *others, *sorted(tasks)])
        return int(building[0]["n"]) + int(busy[0]["n"])

    def project_usage(self, project_id: str) -> dict[str, int]:
        """A project's servers that are not deleted: how many, and their flavors' vCPUs
        and RAM (Nova's legacy quota counting), from the sums the read models keep per
        project (:mod:`vmledger.projections.project_usage`). A server being resized
        (from the request until it is confirmed or reverted) counts the larger of its
        two flavors: either may be what it ends with."""
        return project_usage(self, project_id)

    def due_deadlines(self, now: datetime, limit: int = 100) -> list[tuple[str, datetime]]:
        """Open resize confirmations whose deadline is at or before ``now``, oldest first."""
        rows = self._read(
            "SELECT id, doc FROM {t} WHERE confirm_deadline IS NOT NULL AND confirm_deadline <= ?"
            f" ORDER BY confirm_deadline, id LIMIT {int(limit)}", [time_text(now)])
        out = []
        for r in rows:
            deadline = loads(r["doc"]).get("confirm_deadline")
            if deadline is not None:
                out.append((r["id"], deadline))
        return out

    def idle_since(self, vm_state: str, before: datetime, limit: int = 100) -> list[str]:
        """Servers in ``vm_state`` with no task, unchanged since ``before``, longest
        waiting first: the timer's candidates (shelved to offload, soft-deleted to
        reclaim)."""
        rows = self._read(
            "SELECT id FROM {t} WHERE vm_state = ? AND task_state IS NULL AND updated_at <= ?"
            f" ORDER BY updated_at, id LIMIT {int(limit)}", [vm_state, time_text(before)])
        return [r["id"] for r in rows]

    def alive_between(self, start: datetime, end: datetime, *, project_id: str | None = None,
                      after: tuple[str, str] | None = None, limit: int = 500
                      ) -> list[StoredServer]:
        """Servers that may have run between ``start`` and ``end``, deleted ones included,
        by project then id (after ``after``, a (project, id) pair): those created before
        ``end`` and not deleted by ``start``. A superset: a server's own launch and
        termination times (in its document) decide."""
        where = ["created_at < ?", "(deleted = 0 OR updated_at > ?)"]
        params: list[Any] = [time_text(end), time_text(start)]
        if project_id is not None:
            where.append("project_id = ?")
            params.append(project_id)
        if after is not None:
            where.append("(project_id > ? OR (project_id = ? AND id > ?))")
            params.extend([after[0], after[0], after[1]])
        return self._stored_rows(self._read(
            f"SELECT id, version, doc FROM {{t}} WHERE {' AND '.join(where)}"
            f" ORDER BY project_id, id LIMIT {int(limit)}", params))

    def count(self) -> int:
        return int(self._read("SELECT COUNT(*) AS n FROM {t}")[0]["n"])


class StoredServer:
    """A row of the servers view as stored: id, version and the document's JSON, which
    is decoded on first use of :attr:`doc` (a page whose rendering is cached per
    version never decodes it)."""

    __slots__ = ("_doc", "id", "text", "version")

    def __init__(self, server_id: str, version: int, text: str | None,
                 doc: dict[str, Any] | None = None) -> None:
        self.id = server_id
        self.version = version
        self.text = text
        self._doc = doc

    @classmethod
    def of(cls, doc: dict[str, Any]) -> StoredServer:
        """A decoded document, as a row."""
        return cls(doc["id"], doc["version"], None, doc)

    @property
    def loaded(self) -> bool:
        """Whether the document was read (see :meth:`ServersView.fill`)."""
        return self.text is not None or self._doc is not None

    @property
    def doc(self) -> dict[str, Any]:
        if self._doc is None:
            if self.text is None:
                raise LookupError(f"server {self.id}: read without its document")
            self._doc = loads(self.text)
        return self._doc
