"""The msgspec-backed transcoder reads every stored event exactly as the library does."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from eventsourcing.application import Application
from eventsourcing.persistence import JSONTranscoder, TranscodingNotRegisteredError
from hypothesis import given, settings
from hypothesis import strategies as st

from vmledger.adapters.transcoding import FastJSONTranscoder
from vmledger.domain.service import ServerService
from vmledger.persistence import environment
from vmledger.projections.store import isoformat, stored, stored_ts


def _pair() -> tuple[JSONTranscoder, FastJSONTranscoder]:
    app: Application[Any] = Application()
    library, fast = JSONTranscoder(), FastJSONTranscoder()
    app.register_transcodings(library)
    app.register_transcodings(fast)
    return library, fast


LIBRARY, FAST = _pair()


def _same(a: Any, b: Any) -> bool:
    """Equal, with types and NaN compared too (True == 1 must not pass)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


leaves = (st.none() | st.booleans() | st.integers() | st.floats()
          | st.text() | st.uuids() | st.datetimes(timezones=st.just(UTC)))
values = st.recursive(
    leaves,
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.sampled_from(["_type_", "_data_", "a", "timestamp"])
                                        | st.text(max_size=6), children, max_size=4)),
    max_leaves=12)


@settings(max_examples=600)
@given(st.dictionaries(st.text(max_size=8), values, max_size=6),
       st.datetimes(timezones=st.just(UTC)))
def test_decodes_whatever_the_library_encodes_exactly_as_the_library(
        state: dict[str, Any], stamp: datetime) -> None:
    state = {"timestamp": stamp, **state}
    data = LIBRARY.encode(state)
    try:
        expected = LIBRARY.decode(data)
    except (TranscodingNotRegisteredError, TypeError) as error:
        # a generated {"_type_": ..., "_data_": ...} naming nothing, or not a name
        with pytest.raises(type(error)):
            FAST.decode(data)
        return
    assert _same(FAST.decode(data), expected)


@pytest.mark.parametrize("text", [
    '{"a": NaN, "b": Infinity, "c": -Infinity}',
    '{"big": 123456789012345678901234567890}',
    '{"small": -123456789012345678901234567890}',
    '{"edge": -9223372036854775809, "top": 18446744073709551616}',
    '{"huge": 1e400}',
    '{"surrogate": "\\ud800"}',
    '{"\\u005ftype_": "uuid_hex", "_data_": "' + uuid.UUID(int=7).hex + '"}',
    '{"timestamp": {"_type_": "datetime_iso", "_data_": "2026-01-01T00:00:00+00:00"},'
    ' "x": {"\\u005ftype_": "uuid_hex", "_data_": "' + uuid.UUID(int=7).hex + '"}}',
    '{"timestamp": {"_data_": 1, "y": 2}, "z": {"_type_": "uuid_hex", "_data_": "'
    + uuid.UUID(int=9).hex + '"}}',
    '{"a": "\\"_type_\\"", "b": [1, 2.5, true, null]}',
    '[{"_type_": "decimal_str", "_data_": "1.10"}]',
    '{"dup": 1, "dup": 2}',
    '{"nested": {"x": [{"_type_": "decimal_str", "_data_": "1.5"}, '
    '{"_type_": "datetime_iso", "_data_": "2026-02-03T00:00:00"}]}}',
])
def test_edge_cases_match_the_library(text: str) -> None:
    data = text.encode()
    assert _same(FAST.decode(data), LIBRARY.decode(data))


def test_errors_match_the_library() -> None:
    for data in (b"", b"{", b"\xff\xfe", b'{"_type_": "no-such-type", "_data_": 1}'):
        with pytest.raises(Exception) as library_error:
            LIBRARY.decode(data)
        with pytest.raises(type(library_error.value)):
            FAST.decode(data)


encodable = st.recursive(
    leaves | st.text(alphabet=st.characters(codec="utf-8")) | st.sampled_from(
        [math.nan, math.inf, -math.inf, 1e16, -0.0, 2**70, "\x00\x1f\"\\\u2028é😀"]),
    lambda children: (st.lists(children, max_size=4) | st.tuples(children, children)
                      | st.dictionaries(st.text(max_size=6) | st.integers()
                                        | st.booleans() | st.none(), children, max_size=4)),
    max_leaves=16)


@settings(max_examples=600)
@given(st.dictionaries(st.text(max_size=8), encodable, max_size=6))
def test_encodes_every_state_to_the_bytes_the_library_writes(state: dict[str, Any]) -> None:
    # the stored bytes are hashed by the audit chain and replayed forever
    assert FAST.encode(state) == LIBRARY.encode(state)


def test_encoding_errors_match_the_library() -> None:
    for state in ({"x": object()}, {"x": [1, {2, 3}]}, {("a",): 1}, {"x": "\ud800"}):
        with pytest.raises(Exception) as library_error:
            LIBRARY.encode(state)
        with pytest.raises(type(library_error.value)):
            FAST.encode(state)


def test_the_engine_reads_its_log_with_it() -> None:
    service = ServerService(environment("memory"))
    assert isinstance(service.mapper.transcoder, FastJSONTranscoder)
    # the bytes written are the library's encoder's
    state = {"timestamp": datetime(2026, 1, 1, tzinfo=UTC),
             "u": uuid.UUID(int=3), "t": timedelta(0).total_seconds()}
    assert service.mapper.transcoder.encode(state) == LIBRARY.encode(state)
    assert json.loads(LIBRARY.encode(state))["timestamp"]["_type_"] == "datetime_iso"


@given(st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                               timezone(timedelta(hours=-8))])))
@settings(max_examples=300, deadline=None)
def test_stored_times_index_as_their_datetimes(value: datetime) -> None:
    """The text a stored time is indexed by (a cut of its ISO form when it is UTC) is
    the text its datetime is indexed by."""
    assert stored_ts(stored(value)) == stored_ts(value)


@given(st.one_of(
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=1))])),
    st.datetimes(),
    st.datetimes(timezones=st.just(UTC)).map(lambda value: value.replace(microsecond=0))))
@settings(max_examples=500, deadline=None)
def test_times_are_stored_in_the_text_isoformat_gives(value: datetime) -> None:
    """The read models' faster formatting of a time (the instance actions store one per
    event) gives the text ``datetime.isoformat`` gives, and documents store it."""
    assert isoformat(value) == value.isoformat()
    assert stored({"at": value}) == {"at": {"$dt": value.isoformat()}}
