"""``GET /servers`` and ``/servers/detail``: Nova's query rules, filters, sorting, paging.

As ``nova/api/openstack/compute/servers.py`` ``_get_servers`` and its query schemas:

- Every parameter of the list schema is *known*. Before 2.75 unknown parameters are
  dropped; from 2.75 they are a 400 (``Additional properties are not allowed``).
- Non-administrators may use only some filters (more at 2.5, 2.26, 2.66, 2.73, 2.83 and
  2.90); the others are dropped silently. Administrators asking for a joined-table filter
  (``metadata``...) or a parameter starting with ``_`` get 400 ``Invalid filter field``.
- ``all_tenants`` (strict boolean; the empty string is true) lists every project's
  servers for administrators and is a policy 403 for anyone else. Without it
  ``tenant_id``/``project_id`` are ignored.
- Deleted servers: excluded by default; ``changes-since`` / ``changes-before`` (2.66)
  include them; an administrator's ``deleted`` (lenient boolean) lists only the deleted
  (true) or only the others (false); ``status=DELETED`` alone means ``deleted=true`` for
  administrators and 403 for anyone else.
- ``changes-since`` / ``changes-before`` select ``updated_at`` >= / <= the time (ISO 8601;
  a bad one is a 400; a future ``changes-since`` gives an empty list).
- Sorting: ``sort_key``/``sort_dir`` (repeatable), default ``created_at desc`` with
  ``uuid`` as tie-breaker; an unknown key is a 400, a legacy key is ignored (a 400 from
  2.75); sorting by ``host`` or ``node`` is for administrators only (403).
- Paging: ``limit`` (at most 1000) and ``marker`` (a server id; unknown → 400).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vmledger.api import query as q
from vmledger.api import validation as val
from vmledger.api.catalog import MAX_LIMIT
from vmledger.api.faults import ApiError
from vmledger.api.http import Call
from vmledger.api.views import server_hostname, usage_time
from vmledger.domain import lifecycle as lc
from vmledger.domain import status as st
from vmledger.projections.server_filters import ColumnFilter
from vmledger.projections.server_queries import StoredServer

Doc = dict[str, Any]

PAGING_SORTING = ("limit", "marker", "sort_key", "sort_dir")
#: filters on joined tables: Nova's schema knows them, its API refuses them (admins)
JOINED_TABLE_PARAMS = ("block_device_mapping", "services", "metadata", "system_metadata",
                       "info_cache", "security_groups", "pci_devices")
_QUERY_V21 = (
    "user_id", "project_id", "tenant_id", "launch_index", "image_ref", "image", "kernel_id",
    "ramdisk_id", "hostname", "key_name", "power_state", "vm_state", "task_state", "host",
    "node", "flavor", "reservation_id", "launched_at", "terminated_at", "availability_zone",
    "name", "display_name", "description", "display_description", "locked_by", "uuid",
    "root_device_name", "config_drive", "access_ip_v4", "access_ip_v6", "auto_disk_config",
    "progress", "sort_key", "sort_dir", "all_tenants", "soft_deleted", "deleted", "status",
    "changes-since", "ip", "ip6", "created_at", "limit", "marker", *JOINED_TABLE_PARAMS)
TAG_FILTERS = ("tags", "tags-any", "not-tags", "not-tags-any")

#: sort keys Nova accepts and applies
VALID_SORT_KEYS = (
    "access_ip_v4", "access_ip_v6", "auto_disk_config", "availability_zone", "config_drive",
    "created_at", "display_description", "display_name", "host", "hostname", "image_ref",
    "instance_type_id", "kernel_id", "key_name", "launch_index", "launched_at", "locked_by",
    "node", "power_state", "progress", "project_id", "ramdisk_id", "root_device_name",
    "task_state", "terminated_at", "updated_at", "user_id", "uuid", "vm_state")
#: sort keys Nova's schema accepts but ignores (rejected from 2.75); ``locked`` is valid
#: from 2.73
IGNORED_SORT_KEYS = (
    "architecture", "cell_name", "cleaned", "default_ephemeral_device", "default_swap_device",
    "deleted", "deleted_at", "disable_terminate", "ephemeral_gb", "ephemeral_key_uuid", "id",
    "key_data", "launched_on", "locked", "memory_mb", "os_type", "reservation_id", "root_gb",
    "shutdown_terminate", "user_data", "vcpus", "vm_mode")
ADMIN_SORT_KEYS = ("host", "node")


def known_params(call: Call) -> set[str]:
    """Every query parameter the list schema of this microversion knows."""
    known = set(_QUERY_V21)
    if call.at_least(2, 26):
        known.update(TAG_FILTERS)
    if call.at_least(2, 66):
        known.add("changes-before")
    if call.at_least(2, 73):
        known.add("locked")
    return known


def non_admin_filters(call: Call) -> set[str]:
    """The filters a non-administrator may use (Nova's ``_get_server_search_options``)."""
    allowed = {"reservation_id", "name", "status", "image", "flavor", "ip", "changes-since",
               "all_tenants"}
    if call.at_least(2, 5):
        allowed.add("ip6")
    if call.at_least(2, 26):
        allowed.update(TAG_FILTERS)
    if call.at_least(2, 66):
        allowed.add("changes-before")
    if call.at_least(2, 73):
        allowed.add("locked")
    if call.at_least(2, 83):
        allowed.update(("availability_zone", "config_drive", "key_name", "created_at",
                        "launched_at", "terminated_at", "power_state", "task_state",
                        "vm_state", "progress", "user_id"))
    if call.at_least(2, 90):
        allowed.add("hostname")
    return allowed


# --- what each filter and sort key reads from a server document -----------------------
def _attr(name: str, default: Any = None) -> Callable[[Doc], Any]:
    return lambda d: (d.get("attributes") or {}).get(name, default)


def _text_time(key: str) -> Callable[[Doc], Any]:
    def get(d: Doc) -> Any:
        value = d.get(key)
        return usage_time(value) if isinstance(value, datetime) else value
    return get


FIELDS: dict[str, Callable[[Doc], Any]] = {
    "uuid": lambda d: d.get("id"),
    "display_name": lambda d: d.get("name"),
    "display_description": lambda d: d.get("description"),
    "project_id": lambda d: d.get("project_id"),
    "user_id": lambda d: d.get("user_id"),
    "image_ref": lambda d: (d.get("image") or {}).get("id"),
    "instance_type_id": lambda d: str((d.get("flavor") or {}).get("id")),
    "vm_state": lambda d: d.get("vm_state"),
    "task_state": lambda d: d.get("task_state"),
    "power_state": lambda d: d.get("power_state"),
    "progress": lambda d: d.get("progress"),
    "host": lambda d: d.get("host"),
    "node": lambda d: d.get("host"),
    "hostname": server_hostname,
    "key_name": lambda d: d.get("key_name"),
    "availability_zone": lambda d: d.get("availability_zone"),
    "locked": lambda d: bool(d.get("locked")),
    "locked_by": lambda d: d.get("locked_by"),
    "reservation_id": _attr("reservation_id"),
    "access_ip_v4": _attr("access_ip_v4"),
    "access_ip_v6": _attr("access_ip_v6"),
    "config_drive": lambda d: "True" if _attr("config_drive")(d) else "",
    "auto_disk_config": lambda d: _attr("disk_config")(d) == "AUTO",
    "kernel_id": lambda d: "",
    "ramdisk_id": lambda d: "",
    "launch_index": lambda d: 0,
    "root_device_name": lambda d: "/dev/vda",
    "created_at": lambda d: d.get("created_at"),
    "updated_at": lambda d: d.get("updated_at"),
    "launched_at": lambda d: d.get("launched_at"),
    "terminated_at": lambda d: d.get("terminated_at"),
}
#: filters Nova matches exactly (``exact_match_filter_names``); the others are regexes
_EXACT = {"project_id": "project_id", "user_id": "user_id", "image": "image_ref",
          "image_ref": "image_ref", "uuid": "uuid", "host": "host", "vm_state": "vm_state",
          "task_state": "task_state"}
_REGEX = {"name": "display_name", "display_name": "display_name",
          "description": "display_description", "display_description": "display_description",
          "reservation_id": "reservation_id", "key_name": "key_name", "node": "node",
          "availability_zone": "availability_zone", "hostname": "hostname",
          "locked_by": "locked_by", "kernel_id": "kernel_id", "ramdisk_id": "ramdisk_id",
          "root_device_name": "root_device_name", "config_drive": "config_drive",
          "access_ip_v4": "access_ip_v4", "access_ip_v6": "access_ip_v6",
          "auto_disk_config": "auto_disk_config", "progress": "progress",
          "power_state": "power_state", "launch_index": "launch_index",
          "launched_at": "launched_at", "terminated_at": "terminated_at",
          "created_at": "created_at"}
_TIME_FIELDS = ("launched_at", "terminated_at", "created_at")
#: fields the servers view keeps as columns (the same values as the documents'), by
#: column: filters on them decode no document
ROW_FIELDS = {"uuid": "id", "display_name": "name", "project_id": "project_id",
              "vm_state": "vm_state", "task_state": "task_state", "host": "host",
              "node": "host"}


def _pattern(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error:
        return re.compile(re.escape(text))


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, datetime):
        return usage_time(value) or ""
    return str(value)


def _addresses(doc: Doc, version: int) -> list[str]:
    found: list[str] = []
    for entries in (doc.get("addresses") or {}).values():
        for entry in entries:
            if entry.get("version") == version and entry.get("addr"):
                found.append(str(entry["addr"]))
    return found


def _tags(doc: Doc) -> set[str]:
    return set(_attr("tags", [])(doc) or [])


def _split_tags(text: str) -> set[str]:
    return {t.strip() for t in text.split(",") if t.strip()}


# --- the search ---------------------------------------------------------------------------
@dataclass
class Search:
    """What a list request asks for, after Nova's query rules."""

    all_tenants: bool = False
    #: "exclude" (default), "only" or "both"
    deleted: str = "exclude"
    status_pairs: set[tuple[str, str | None]] | None = None
    #: ``changes-since`` / ``changes-before``: ``updated_at`` at or after / before
    since: datetime | None = None
    before: datetime | None = None
    empty: bool = False
    #: filters that look inside documents
    checks: list[Callable[[Doc], bool]] = field(default_factory=list)
    #: filters on fields the view keeps as columns (name, host, states, ids): answered
    #: from the columns (:meth:`columns`), and by these checks on documents
    column_checks: list[Callable[[Doc], bool]] = field(default_factory=list)
    equal: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    patterns: list[tuple[str, re.Pattern[str]]] = field(default_factory=list)

    @property
    def needs_doc(self) -> bool:
        """Whether :meth:`keep` must look inside documents (deleted, status, the update
        times, and the filters on names, hosts, states and ids are answered from the
        view's columns)."""
        return bool(self.checks)

    def exact(self, field_name: str, values: list[str]) -> None:
        """Keep servers whose ``field_name`` (see :data:`FIELDS`), as text, is one of
        ``values`` (Nova's exact-match filters)."""
        column = self._add(field_name, _exact_check(field_name, values))
        if column is not None:
            self.equal.append((column, frozenset(values)))

    def regex(self, field_name: str, text: str) -> None:
        """Keep servers whose ``field_name`` as text the regular expression ``text``
        finds something in (Nova's other filters)."""
        pattern = _pattern(text)
        column = self._add(field_name, _regex_check(field_name, pattern))
        if column is not None:
            self.patterns.append((column, pattern))

    def _add(self, field_name: str, check: Callable[[Doc], bool]) -> str | None:
        """Keep ``check``; the view's column for the field, if it has one."""
        column = ROW_FIELDS.get(field_name)
        (self.checks if column is None else self.column_checks).append(check)
        return column

    def columns(self) -> ColumnFilter:
        return ColumnFilter(states=self.status_pairs, since=self.since, before=self.before,
                            equal=tuple(self.equal), patterns=tuple(self.patterns))

    def keep(self, doc: Doc) -> bool:
        is_deleted = doc.get("vm_state") == lc.DELETED
        if self.deleted == "exclude" and is_deleted:
            return False
        if self.deleted == "only" and not is_deleted:
            return False
        if self.status_pairs is not None and not _matches_status(doc, self.status_pairs):
            return False
        if self.since is not None and doc["updated_at"] < self.since:
            return False
        if self.before is not None and doc["updated_at"] > self.before:
            return False
        return (all(check(doc) for check in self.column_checks)
                and all(check(doc) for check in self.checks))


def _matches_status(doc: Doc, pairs: set[tuple[str, str | None]]) -> bool:
    vm_state, task_state = doc.get("vm_state"), doc.get("task_state")
    return any(vm == vm_state and (task is None or task == task_state) for vm, task in pairs)


def _policy(name: str) -> ApiError:
    return ApiError(403, f"Policy doesn't allow {name} to be performed.")


def _options(call: Call) -> dict[str, list[str]]:
    """The filters of the request after the unknown and not-permitted ones are dropped."""
    query = call.request.query_params
    known = known_params(call)
    if call.at_least(2, 75):
        q.reject_unknown(query, known | {k for k in query if k.startswith("_")})
    options = {k: query.getlist(k) for k in query
               if k not in PAGING_SORTING and (k in known or k.startswith("_"))}
    if call.principal.is_admin:
        for key in options:
            if key in JOINED_TABLE_PARAMS or key.startswith("_"):
                raise ApiError(400, f"Invalid filter field: {key}.")
    else:
        allowed = non_admin_filters(call)
        options = {k: v for k, v in options.items() if k in allowed}
    return options


def _status(call: Call, options: dict[str, list[str]], search: Search) -> None:
    statuses = [s.upper() for s in options.pop("status", [])]
    if not statuses:
        return
    pairs: set[tuple[str, str | None]] = set()
    for status in statuses:
        pairs.update(st.states_for_status(status))
    if not pairs:
        if call.at_least(2, 38):
            raise ApiError(400, "Invalid status value")
        search.empty = True
        return
    search.status_pairs = pairs
    options.pop("vm_state", None)  # the status decides the states
    options.pop("task_state", None)


def _regex_check(field_name: str, pattern: re.Pattern[str]) -> Callable[[Doc], bool]:
    getter = FIELDS[field_name]
    return lambda d: pattern.search(_as_text(getter(d))) is not None


def _exact_check(field_name: str, values: list[str]) -> Callable[[Doc], bool]:
    getter = FIELDS[field_name]
    wanted = set(values)
    return lambda d: _as_text(getter(d)) in wanted


def _last(values: list[str] | None) -> str | None:
    return values[-1] if values else None


def build_search(call: Call) -> Search:
    """Apply Nova's rules to the request's query string."""
    search = Search()
    options = _options(call)
    _status(call, options, search)

    since = q.time_param("changes-since", _last(options.pop("changes-since", None)))
    before = q.time_param("changes-before", _last(options.pop("changes-before", None)))
    if since is not None and before is not None and before < since:
        raise ApiError(400, "The value of changes-since must be less than or equal to "
                            "changes-before.")
    search.since, search.before = since, before

    deleted = options.pop("deleted", None)
    if deleted is not None:
        search.deleted = "only" if q.bool_lenient(deleted[-1]) else "exclude"
    elif since is not None or before is not None:
        search.deleted = "both"
    if search.status_pairs is not None and {vm for vm, _ in search.status_pairs} == {
            lc.DELETED}:
        if not call.principal.is_admin:
            raise ApiError(403, "Only administrators may list deleted instances")
        search.deleted = "only"

    all_tenants = options.pop("all_tenants", None)
    if all_tenants is not None:
        value = all_tenants[-1]
        search.all_tenants = value == "" or q.bool_strict(value)
        if search.all_tenants and not call.principal.is_admin:
            kind = "index" if call.request.url.path.rstrip("/").endswith("/servers") else "detail"
            raise _policy(f"os_compute_api:servers:{kind}:get_all_tenants")
    tenant = options.pop("tenant_id", None)
    project = options.pop("project_id", None) or tenant
    if search.all_tenants and project:
        search.exact("project_id", project)

    locked = options.pop("locked", None)
    if locked is not None:
        wanted_lock = q.bool_strict(locked[-1])
        search.checks.append(lambda d: bool(d.get("locked")) == wanted_lock)

    flavor = options.pop("flavor", None)
    if flavor is not None:
        flavor_id = flavor[-1]
        if not any(f.id == flavor_id for f in call.engine.service.catalog.flavors()):
            search.empty = True
        search.exact("instance_type_id", [flavor_id])

    for key, version in (("ip", 4), ("ip6", 6)):
        raw = options.pop(key, None)
        if raw is not None:
            search.checks.append(_address_check(_pattern(raw[-1]), version))

    _tag_checks(options, search)
    options.pop("soft_deleted", None)  # vmledger has no soft delete
    for key, values in options.items():
        if key in _EXACT:
            search.exact(_EXACT[key], values)
        elif key in _REGEX:
            search.regex(_REGEX[key], values[-1])
    return search


def _address_check(pattern: re.Pattern[str], version: int) -> Callable[[Doc], bool]:
    return lambda d: any(pattern.search(a) for a in _addresses(d, version))


def _tag_check(key: str, wanted: set[str]) -> Callable[[Doc], bool]:
    """``tags``: all of them; ``tags-any``: one; ``not-tags``: not all; ``not-tags-any``: none."""
    if key == "tags":
        return lambda d: wanted <= _tags(d)
    if key == "tags-any":
        return lambda d: bool(wanted & _tags(d))
    if key == "not-tags":
        return lambda d: not wanted <= _tags(d)
    return lambda d: not wanted & _tags(d)


def _tag_checks(options: dict[str, list[str]], search: Search) -> None:
    for key in TAG_FILTERS:
        raw = options.pop(key, None)
        if raw is not None:
            search.checks.append(_tag_check(key, _split_tags(raw[-1])))


# --- sorting --------------------------------------------------------------------------------
def sort_keys(call: Call) -> list[tuple[str, str]]:
    """(key, direction) pairs to sort by, ``uuid`` last; Nova's checks on the keys."""
    query = call.request.query_params
    valid = set(VALID_SORT_KEYS)
    ignored = set(IGNORED_SORT_KEYS)
    if call.at_least(2, 73):
        valid.add("locked")
        ignored.discard("locked")
    if call.at_least(2, 75):
        ignored = set()
    keys: list[str] = []
    for key in query.getlist("sort_key"):
        if key in valid:
            keys.append(key)
        elif key not in ignored:
            choices = sorted(valid | ignored)
            raise val.invalid_query("sort_key", key, f"{key!r} is not one of {choices}")
    if not call.principal.is_admin:
        for key in keys:
            if key in ADMIN_SORT_KEYS:
                raise ApiError(403, f"Only administrators can sort servers by {key}")
    dirs = query.getlist("sort_dir")
    for d in dirs:
        if d not in ("asc", "desc"):
            raise val.invalid_query("sort_dir", d, f"{d!r} is not one of ['asc', 'desc']")
    if not keys:
        keys, dirs = ["created_at"], dirs[:1] or ["desc"]
    directions = [dirs[i] if i < len(dirs) else (dirs[0] if dirs else "desc")
                  for i in range(len(keys))]
    if "uuid" not in keys:
        keys.append("uuid")
        directions.append(directions[0])
    return list(zip(keys, directions, strict=True))


def _sort_key(getter: Callable[[Doc], Any]) -> Callable[[Doc], Any]:
    return lambda d: _comparable(getter(d))


def ordered(docs: Iterable[Doc], keys: list[tuple[str, str]]) -> list[Doc]:
    result = list(docs)
    for key, direction in reversed(keys):
        getter = FIELDS[key]
        present = [d for d in result if getter(d) is not None]
        missing = [d for d in result if getter(d) is None]
        present.sort(key=_sort_key(getter), reverse=direction == "desc")
        # NULLs sort first ascending and last descending, as in MySQL/SQLite
        result = present + missing if direction == "desc" else missing + present
    return result


def _comparable(value: Any) -> Any:
    if isinstance(value, bool | int | float | datetime):
        return value
    return str(value)


# --- the page -------------------------------------------------------------------------------
def select(call: Call) -> tuple[list[StoredServer], int]:
    """The page of servers a list request asks for, and the full page size. Rows may
    come without their documents (``loaded`` false): ``engine.fill_server_docs``."""
    query = call.request.query_params
    limit = MAX_LIMIT
    raw_limit = query.get("limit")
    if raw_limit is not None:
        limit = min(val.non_negative_int(raw_limit, "limit"), MAX_LIMIT)
    search = build_search(call)
    keys = sort_keys(call)
    if search.empty or limit == 0:  # as Nova's database query: nothing, marker unread
        return [], limit
    scope = None if search.all_tenants else call.engine.context(
        project_id=call.principal.project_id, is_admin=False, request_id=call.request_id)
    marker = query.get("marker")
    if keys == DEFAULT_ORDER:
        # the view's own order: the page is read in SQL (only its rows when nothing is
        # filtered in Python), documents decoded only where a filter looks at them
        if not search.needs_doc:
            # ids and versions only: the caller reads the documents it has not rendered
            return _rows(call, scope, search, marker, limit, docs=False,
                         columns=search.columns()), limit
        rows = _rows(call, scope, search, marker, None)
        return [row for row in rows if search.keep(row.doc)][:limit], limit
    include_deleted = search.deleted != "exclude"
    if not search.needs_doc and all(key in COLUMN_SORT_KEYS for key, _ in keys):
        # sorted on the view's columns: no document decoded but the page's (by the caller)
        return _sorted_by_columns(call, scope, search, keys, marker, limit), limit
    sorted_docs = ordered(call.engine.iter_server_docs(ctx=scope,
                                                       include_deleted=include_deleted), keys)
    if marker is not None:
        ids = [d["id"] for d in sorted_docs]
        if marker not in ids:
            raise ApiError(400, f"marker [{marker}] not found")
        sorted_docs = sorted_docs[ids.index(marker) + 1:]
    page: list[StoredServer] = []
    for doc in sorted_docs:
        if search.keep(doc):
            page.append(StoredServer.of(doc))
            if len(page) >= limit:
                break
    return page, limit


def _rows(call: Call, scope: Any, search: Search, marker: str | None, limit: int | None,
          *, docs: bool = True, columns: ColumnFilter | None = None) -> list[StoredServer]:
    try:
        return call.engine.server_rows(ctx=scope, deleted=search.deleted, after=marker,
                                       limit=limit, docs=docs, columns=columns)
    except KeyError:
        raise ApiError(400, f"marker [{marker}] not found") from None


#: sort keys the view keeps as columns, with the same order as the documents' values
#: (times as fixed-width UTC text)
COLUMN_SORT_KEYS = frozenset({"uuid", "display_name", "project_id", "vm_state", "task_state",
                              "host", "node", "created_at", "updated_at"})


def _sorted_by_columns(call: Call, scope: Any, search: Search, keys: list[tuple[str, str]],
                       marker: str | None, limit: int) -> list[StoredServer]:
    # the marker is looked for among every server in scope (deleted ones too unless they
    # are excluded), as on the document path
    rows = ordered(call.engine.server_sort_columns(
        ctx=scope, deleted="exclude" if search.deleted == "exclude" else "both"), keys)
    if marker is not None:
        ids = [r["id"] for r in rows]
        if marker not in ids:
            raise ApiError(400, f"marker [{marker}] not found")
        rows = rows[ids.index(marker) + 1:]
    if search.deleted == "only":
        rows = [r for r in rows if r["deleted"]]
    wanted = search.columns()
    rows = [r for r in rows if wanted.keeps(r)]
    return [StoredServer(r["id"], r["version"], None) for r in rows[:limit]]


#: Nova's default sort, which is also the servers view's index order
DEFAULT_ORDER = [("created_at", "desc"), ("uuid", "desc")]
