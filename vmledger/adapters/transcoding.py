"""A faster reader and writer of the event log's JSON, writing exactly what the library
writes.

eventsourcing's :class:`~eventsourcing.persistence.JSONTranscoder` decodes with the
standard library's ``json`` and an ``object_hook`` called back into Python for every
JSON object: about 5-10 µs for a typical event, the largest share of replaying a server
or rebuilding the views. :class:`FastJSONTranscoder` keeps the library's encoder (so
the bytes stored — and hashed by the audit chain — are unchanged) and decodes with
``msgspec`` (integers of any size, as the standard library), then turns the library's
``{"_type_": name, "_data_": value}`` objects into values with the same registered
transcodings, innermost first, as the hook would.

Most events hold one such object, their ``timestamp``; the encoded text is scanned once
for the marker so events without nested ones skip the walk. Texts msgspec refuses but
the standard library accepts (``NaN``, ``1e400``, lone surrogates) are decoded by the
library's own path: the result is the same for every input.

Encoding stays the standard library's C encoder with the library's settings (the bytes
are the library's by construction), made once instead of on every call: the library's
``JSONEncoder.encode`` builds a new C encoder and a closure per event, a third of its
cost for a small event. It is made without the circular-reference check: that check
keeps one dictionary of the objects being encoded per call, which a shared encoder
cannot (two threads encoding events that share a nested value would see each other's
entries), and an event's state is never circular (a cyclic value would end in
``RecursionError`` instead of ``ValueError``: neither can be stored).

Selected with the library's ``TRANSCODER_TOPIC`` (see :mod:`vmledger.persistence`).
"""

from __future__ import annotations

import json.encoder
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec
from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder

_MARK = b'"_type_"'
_ESCAPE = b"\\u"
_DECODER = msgspec.json.Decoder()
#: the standard library's C encoder factory (None on an interpreter without it)
_C_MAKE_ENCODER: Callable[..., Callable[[Any, int], list[str]]] | None = getattr(
    json.encoder, "c_make_encoder", None)


class FastJSONTranscoder(JSONTranscoder):
    """The library's JSON transcoder, decoding with msgspec and encoding with one C
    encoder made once."""

    def __init__(self) -> None:
        super().__init__()
        encoder = self.encoder
        # what JSONEncoder.iterencode builds for a one-shot encode, but once
        self._iterencode = None if _C_MAKE_ENCODER is None or encoder.indent is not None \
            else _C_MAKE_ENCODER(
                None, encoder.default,
                json.encoder.encode_basestring_ascii if encoder.ensure_ascii
                else json.encoder.encode_basestring,
                encoder.indent, encoder.key_separator, encoder.item_separator,
                encoder.sort_keys, encoder.skipkeys, encoder.allow_nan)

    def encode(self, obj: Any) -> bytes:
        iterencode = self._iterencode
        if iterencode is None:
            return super().encode(obj)
        return "".join(iterencode(obj, 0)).encode("utf8")

    def decode(self, data: bytes) -> Any:
        try:
            obj = _DECODER.decode(data)
        except msgspec.DecodeError:
            return super().decode(data)  # NaN, Infinity, lone surrogates: the library's rules
        # else an escaped key could still spell _type_ (find: `in` on bytes first tries
        # the operand as an int, raising and clearing a TypeError every time)
        if data.find(_ESCAPE) < 0:
            marks = data.count(_MARK)
            if not marks:
                return obj
            if marks == 1 and type(obj) is dict:
                stamp = obj.get("timestamp")
                if (type(stamp) is dict and len(stamp) == 2 and "_type_" in stamp
                        and "_data_" in stamp):
                    # the common case: the event's timestamp is the only encoded object
                    data_ = stamp["_data_"]
                    if (stamp["_type_"] == "datetime_iso" and type(data_) is str
                            and type(self.names.get("datetime_iso")) is DatetimeAsISO):
                        obj["timestamp"] = datetime.fromisoformat(data_)  # what it does
                    else:
                        obj["timestamp"] = self._decode_obj(stamp)
                    return obj
        return self._walk(obj)

    def _walk(self, value: Any) -> Any:
        kind = type(value)
        if kind is dict:
            for key, item in value.items():
                if type(item) is dict or type(item) is list:
                    value[key] = self._walk(item)
            if len(value) == 2 and "_type_" in value and "_data_" in value:
                return self._decode_obj(value)
            return value
        if kind is list:
            for index, item in enumerate(value):
                if type(item) is dict or type(item) is list:
                    value[index] = self._walk(item)
        return value
