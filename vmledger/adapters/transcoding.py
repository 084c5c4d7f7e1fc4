"""A faster reader for the event log's JSON, writing exactly what the library writes.

eventsourcing's :class:`~eventsourcing.persistence.JSONTranscoder` decodes with the
standard library's ``json`` and an ``object_hook`` called back into Python for every
JSON object: about 5-10 µs for a typical event, the largest share of replaying a server
or rebuilding the views. :class:`FastJSONTranscoder` keeps the library's encoder (so
the bytes stored — and hashed by the audit chain — are unchanged) and decodes with
``orjson``, then turns the library's ``{"_type_": name, "_data_": value}`` objects into
values with the same registered transcodings, innermost first, as the hook would.

Most events hold one such object, their ``timestamp``; the encoded text is scanned once
for the marker so events without nested ones skip the walk. Texts orjson refuses but
the standard library accepts (``NaN``, ``1e400``) or reads differently (integers beyond
64 bits) are decoded by the library's own path: the result is the same for every input.

Selected with the library's ``TRANSCODER_TOPIC`` (see :mod:`vmledger.adapters.persistence`).
"""

from __future__ import annotations

from typing import Any

import orjson
from eventsourcing.persistence import JSONTranscoder

_MARK = b'"_type_"'
_ESCAPE = b"\\u"
#: orjson reads an integer beyond 64 bits as a float; the library keeps it an int. Any
#: run of 19 digits (in a number or a string) sends the text to the library's path.
_DIGITS = bytes(0x30 if 0x30 <= i <= 0x39 else 0x2E for i in range(256))
_LONG_RUN = b"0" * 19


class FastJSONTranscoder(JSONTranscoder):
    """The library's JSON transcoder, decoding with orjson."""

    def decode(self, data: bytes) -> Any:
        if _LONG_RUN in data.translate(_DIGITS):
            return super().decode(data)
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return super().decode(data)  # NaN, Infinity, big integers…: the library's rules
        if _ESCAPE not in data:  # else an escaped key could still spell _type_
            marks = data.count(_MARK)
            if not marks:
                return obj
            if marks == 1 and type(obj) is dict:
                stamp = obj.get("timestamp")
                if (type(stamp) is dict and len(stamp) == 2 and "_type_" in stamp
                        and "_data_" in stamp):
                    # the common case: the event's timestamp is the only encoded object
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
