"""What a server list may be filtered by, as SQL: a regular expression's literal prefix
and required substrings (what an index can find), and :class:`ColumnFilter`, the
filters the Compute API's list takes (exact columns, name patterns, change times) with
their SQL conditions and their check on a row already read.

The servers view's queries (:mod:`vmledger.projections.server_queries`) take these.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vmledger.projections.store import time_text

#: the standard library's parser of regular expressions (private, stable in 3.11+)
_parser: Any = importlib.import_module("re._parser")
_constants: Any = importlib.import_module("re._constants")
_REPEATS = tuple(getattr(_constants, name) for name in (
    "MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") if hasattr(_constants, name))
_ATOMIC = getattr(_constants, "ATOMIC_GROUP", object())

#: characters with a meaning in a regular expression
_METACHARACTERS = frozenset(".^$*+?{}[]\\|()")
#: characters that make the one before them optional or repeated
_QUANTIFIERS = frozenset("*?{")


def literal_prefix(pattern: re.Pattern[str]) -> str:
    """The text every string ``pattern`` finds something in starts with: the literal
    characters after a leading ``^`` (``"^web-1"`` → ``"web-1"``; ``"^ab*"`` → ``"a"``);
    ``""`` when there is none (no anchor, an alternation, flags)."""
    text = pattern.pattern
    if pattern.flags & (re.IGNORECASE | re.MULTILINE | re.VERBOSE) or not text.startswith(
            "^") or "|" in text:
        return ""
    prefix = []
    for index, char in enumerate(text[1:], start=1):
        following = text[index + 1:index + 2]
        if char in _METACHARACTERS or (following and following in _QUANTIFIERS):
            break  # the character is not literal, or may be left out
        prefix.append(char)
    return "".join(prefix)


def required_literals(pattern: re.Pattern[str]) -> list[str]:
    """Texts every string ``pattern`` finds something in contains (``"ench-12"`` →
    ``["ench-12"]``; ``"web-\\d+x"`` → ``["web-", "x"]``), read from the parsed
    expression conservatively: runs of literal characters in its top-level sequence (in
    a group too, and in a repeat that must happen at least once); nothing from an
    alternation, an optional part, a lookaround or a case-insensitive part, and nothing
    at all under a global ``IGNORECASE``."""
    if pattern.flags & re.IGNORECASE:
        return []
    try:
        parsed = _parser.parse(pattern.pattern, pattern.flags & ~re.DEBUG)
    except Exception:  # what compiled parses; never narrow on a surprise
        return []
    found: list[str] = []
    _literal_runs(list(parsed), found)
    return [text for text in found if text]


def _literal_runs(items: list[Any], found: list[str]) -> None:
    run: list[str] = []
    for op, arg in items:
        if op is _constants.LITERAL:
            run.append(chr(arg))
            continue
        found.append("".join(run))
        run = []
        if op is _constants.SUBPATTERN:
            _group, add_flags, _del_flags, sub = arg
            if not add_flags & (re.IGNORECASE | _constants.SRE_FLAG_IGNORECASE):
                _literal_runs(list(sub), found)
        elif op in _REPEATS:
            low, _high, sub = arg
            if low >= 1:
                _literal_runs(list(sub), found)
        elif op is _ATOMIC and arg is not None:
            _literal_runs(list(arg), found)
        # anything else (a class, any character, an alternation, an anchor, a
        # lookaround, a backreference) ends a run and adds nothing
    found.append("".join(run))


def prefix_range(pattern: re.Pattern[str]) -> tuple[str, str] | None:
    """[start, end) of the strings ``pattern`` can find something in, in code point
    order (SQLite's binary collation, PostgreSQL's "C"), from its literal prefix: from
    the prefix to the prefix with its last character's code point raised by one (past
    the surrogates UTF-8 cannot hold). None without a prefix."""
    prefix = literal_prefix(pattern)
    if not prefix:
        return None
    following = ord(prefix[-1]) + 1
    following = 0xE000 if 0xD800 <= following < 0xE000 else following
    if following > 0x10FFFF:
        return None
    return prefix, prefix[:-1] + chr(following)


def pattern_conditions(column: str, pattern: re.Pattern[str], dialect: str = "sqlite"
                       ) -> tuple[list[str], list[Any]]:
    """SQL conditions every row whose ``column`` ``pattern`` finds something in meets
    (the pattern itself is applied afterwards): an index range on a literal prefix,
    else a substring test for a pattern without metacharacters, else none."""
    bounds = prefix_range(pattern)
    if bounds is not None:
        target = f'{column} COLLATE "C"' if dialect == "postgres" else column
        return [f"{target} >= ? AND {target} < ?"], list(bounds)
    text = pattern.pattern
    if text and not pattern.flags & (re.IGNORECASE | re.VERBOSE) and not (
            set(text) & _METACHARACTERS):
        test = "strpos" if dialect == "postgres" else "instr"
        return [f"{test}({column}, ?) > 0"], [text]
    return [], []


#: the columns :class:`ColumnFilter` may compare (by name: they are written into SQL)
FILTER_COLUMNS = frozenset({"id", "name", "project_id", "vm_state", "task_state", "host"})


@dataclass(frozen=True)
class ColumnFilter:
    """List filters the view answers from its columns: (vm_state, task_state) pairs (a
    None task_state: any), ``updated_at`` at or after ``since`` / at or before
    ``before``, columns whose text is one of some values (``equal``; a null column
    reads as ``""``) and columns a regular expression finds something in
    (``patterns``, applied in Python to that column only)."""

    states: set[tuple[str, str | None]] | frozenset[tuple[str, str | None]] | None = None
    since: datetime | None = None
    before: datetime | None = None
    equal: tuple[tuple[str, frozenset[str]], ...] = ()
    patterns: tuple[tuple[str, re.Pattern[str]], ...] = ()

    def __post_init__(self) -> None:
        for column, _ in (*self.equal, *self.patterns):
            if column not in FILTER_COLUMNS:
                raise ValueError(f"not a filterable column: {column!r}")

    def sql(self, dialect: str = "sqlite") -> tuple[list[str], list[Any]]:
        """Conditions (``?`` placeholders) every row kept meets; for ``patterns`` only a
        superset of the rows the expressions find something in (see
        :func:`pattern_conditions`)."""
        where: list[str] = []
        params: list[Any] = []
        for column, pattern in self.patterns:
            more, more_params = pattern_conditions(column, pattern, dialect)
            where += more
            params += more_params
        if self.states is not None:
            alternatives = []
            for vm_state, task_state in sorted(self.states, key=str):
                if task_state is None:
                    alternatives.append("vm_state = ?")
                    params.append(vm_state)
                else:
                    alternatives.append("(vm_state = ? AND task_state = ?)")
                    params += [vm_state, task_state]
            where.append("(" + " OR ".join(alternatives or ["1 = 0"]) + ")")
        if self.since is not None:
            where.append("updated_at >= ?")
            params.append(time_text(self.since))
        if self.before is not None:
            where.append("updated_at <= ?")
            params.append(time_text(self.before))
        for column, values in self.equal:
            tests = []
            if values:
                tests.append(f"{column} IN ({', '.join('?' for _ in values)})")
                params += sorted(values)
            if "" in values:
                tests.append(f"{column} IS NULL")
            where.append("(" + " OR ".join(tests or ["1 = 0"]) + ")")
        return where, params

    def finds(self, row: Any) -> bool:
        """Whether every pattern finds something in ``row`` (a mapping with the
        pattern columns)."""
        return all(pattern.search(row[column] or "") is not None
                   for column, pattern in self.patterns)

    def keeps(self, row: dict[str, Any]) -> bool:
        """The same test on a row of :meth:`ServersView.sort_columns`."""
        if self.states is not None and not any(
                vm == row["vm_state"] and (task is None or task == row["task_state"])
                for vm, task in self.states):
            return False
        if self.since is not None and row["updated_at"] < time_text(self.since):
            return False
        if self.before is not None and row["updated_at"] > time_text(self.before):
            return False
        if not all((row[column] or "") in values for column, values in self.equal):
            return False
        return self.finds(row)
