"""Artifact envelope (SPEC §4): field order, score rounding, JCS bytes, version, blob bytes.

`version` is the SHA-256 of the RFC 8785 (JCS) serialization of the document without its
`build` member. JCS is produced here with orjson (sorted keys, compact) and one correction:
orjson writes some floats differently from ECMAScript's Number.prototype.toString, which JCS
prescribes (`1.0` vs `1`, `1e-6` vs `0.000001`, `1e+16` vs `10000000000000000`). Such number
tokens are located with a vectorized scan, checked to lie outside strings, and rewritten; the
rest of orjson's output (string escaping, UTF-8, no whitespace) already is JCS. Tests compare
the result with the `rfc8785` package over generated documents.

Two limits, irrelevant to the documents built here: keys are sorted by code point (JCS sorts
by UTF-16 code unit; the orders differ only between non-BMP characters and U+E000..U+FFFF),
and NaN or infinities, which JCS rejects, are refused by `round_scores` before a document
exists (orjson would write them as null).
"""

from __future__ import annotations

import decimal
import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime
from typing import Any

import numpy as np
import orjson

from recsys_assets.config import ARTIFACT_TYPES, RFC3339

SCORE_DECIMALS = 6
ENVELOPE_FIELDS = frozenset({"v", "artifact_type", "tenant", "surface", "segment", "window"})
MARKER_FIELDS = frozenset({"enabled", "reason"})

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_RFC3339 = re.compile(RFC3339)
MAX_SAFE_INT = 2**53 - 1
# orjson (and msgspec, which `validate` re-encodes with) write a float differently from JCS
# only when it is integral (`3.0`, `-0.0`) or has an exponent (`1e-6`, `1e+16`, msgspec's
# `1e16`): the token contains `e`, or ends with `.0` before a delimiter. In compact JSON it
# follows `:`, `,` or `[` and precedes `,`, `]` or `}`.
_FLOAT_TO_FIX = re.compile(rb"-?[0-9]+(?:\.0(?=[,\]}])|(?:\.[0-9]+)?e[-+]?[0-9]+(?=[,\]}]))")
_DELIMITERS = np.frombuffer(b",]}", dtype=np.uint8)
_LONGEST_FLOAT = 32
_SCAN_SLICE = 1 << 24


def round_scores(values: Any) -> np.ndarray:
    """Scores as float64 rounded to SCORE_DECIMALS places, -0.0 made 0.0; refuses NaN/inf."""
    scores = np.asarray(values, dtype=np.float64)
    if not np.isfinite(scores).all():
        bad = scores[~np.isfinite(scores)][0]
        raise ValueError(f"scores must be finite numbers, got {bad!r}")
    return np.round(scores, SCORE_DECIMALS) + 0.0


def json_scores(values: Any) -> list[int | float]:
    """Rounded scores as the JSON values to write: integral ones as int, the rest as float.

    JCS prints an integral float without a fraction (`2.0` -> `2`); writing it as an int
    makes the blob read the same way.
    """
    scores = round_scores(values)
    out = scores.astype(object)
    whole = (scores == np.trunc(scores)) & (np.abs(scores) <= MAX_SAFE_INT)
    if whole.any():
        out[whole] = scores[whole].astype(np.int64).astype(object)
    return out.tolist()


def window_json(window_start: date, window_end_exclusive: date) -> dict[str, str]:
    """The envelope's `window`: UTC midnights of the first day and of the day after the last."""
    for name, day in (
        ("window_start", window_start),
        ("window_end_exclusive", window_end_exclusive),
    ):
        if isinstance(day, datetime) or not isinstance(day, date):
            raise TypeError(f"{name} must be a datetime.date (a UTC day), got {day!r}")
    if window_end_exclusive <= window_start:
        raise ValueError(
            f"window end {window_end_exclusive} must be after its start {window_start}"
        )
    return {
        "start": f"{window_start.isoformat()}T00:00:00Z",
        "end": f"{window_end_exclusive.isoformat()}T00:00:00Z",
    }


def _head(
    artifact_type: str,
    tenant: str,
    surface: str,
    segment: str,
    window_start: date,
    window_end_exclusive: date,
) -> dict[str, Any]:
    if artifact_type not in ARTIFACT_TYPES:
        raise ValueError(
            f"artifact_type must be one of {', '.join(ARTIFACT_TYPES)}, got {artifact_type!r}"
        )
    for name, value in (("tenant", tenant), ("surface", surface)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if not isinstance(segment, str):
        raise ValueError(f"segment must be a string ('' for none), got {segment!r}")
    head: dict[str, Any] = {
        "v": 1,
        "artifact_type": artifact_type,
        "tenant": tenant,
        "surface": surface,
    }
    if segment:
        head["segment"] = segment
    head["window"] = window_json(window_start, window_end_exclusive)
    return head


def build_document(
    artifact_type: str,
    tenant: str,
    surface: str,
    segment: str,
    window_start: date,
    window_end_exclusive: date,
    payload: Mapping[str, Any],
    source_hash: str,
    built_at: str,
) -> dict[str, Any]:
    """The artifact document in SPEC §4 field order, with `build.version` computed."""
    clash = sorted(ENVELOPE_FIELDS.union(MARKER_FIELDS, {"build"}).intersection(payload))
    if clash:
        raise ValueError(f"payload fields {clash} would overwrite envelope fields")
    if not isinstance(source_hash, str) or not _HEX64.match(source_hash):
        raise ValueError(f"source_hash must be 64 lower-case hex digits, got {source_hash!r}")
    if not isinstance(built_at, str) or not _RFC3339.match(built_at):
        raise ValueError(f"built_at must be an RFC 3339 timestamp, got {built_at!r}")
    document = _head(artifact_type, tenant, surface, segment, window_start, window_end_exclusive)
    document.update(payload)
    document["build"] = {
        "built_at": built_at,
        "version": version_of(document),
        "source_hash": source_hash,
    }
    return document


def disabled_marker(
    artifact_type: str,
    tenant: str,
    surface: str,
    segment: str,
    window_start: date,
    window_end_exclusive: date,
    reason: str,
) -> dict[str, Any]:
    """The document a switched-off type materializes: envelope head, `enabled: false`, reason.

    It has no payload and no `build` (nothing to version or publish); its schema is
    `schemas/artifacts/disabled.v1.json`.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError(f"a disabled marker needs a non-empty reason, got {reason!r}")
    marker = _head(artifact_type, tenant, surface, segment, window_start, window_end_exclusive)
    marker["enabled"] = False
    marker["reason"] = reason
    return marker


def is_disabled_marker(document: Mapping[str, Any]) -> bool:
    """True for a document made by `disabled_marker`."""
    return document.get("enabled") is False


class EncodedList(Sequence):
    """A long JSON array already written in JCS form, embedded verbatim in a document's bytes.

    Building millions of dicts only to serialize them costs more than the rest of an artifact
    (a window's session_seq users), so a payload may hold such a list as bytes instead: objects
    with sorted keys, strings as orjson writes them, numbers as JCS writes them. The
    blob then carries the same bytes, so its objects in this list have their keys sorted.
    Reading it (len, indexing, iteration, ==) parses it once. The bytes may come in parts
    (`parts`, written one after the other) so that a big list is never copied whole.
    """

    def __init__(self, data: bytes | list[bytes | memoryview], length: int) -> None:
        self.parts = [data] if isinstance(data, bytes) else data
        self._length = length
        self._items: list[Any] | None = None

    @property
    def data(self) -> bytes:
        """The list's bytes, whole."""
        if len(self.parts) == 1 and isinstance(self.parts[0], bytes):
            return self.parts[0]
        return b"".join(self.parts)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: Any) -> Any:
        return self.items()[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EncodedList):
            return self.data == other.data
        return isinstance(other, list) and self.items() == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        size = sum(len(part) for part in self.parts)
        return f"EncodedList({self._length} items, {size:,} bytes)"

    def items(self) -> list[Any]:
        if self._items is None:
            self._items = orjson.loads(self.data)
        return self._items

    def head(self, n: int) -> list[Any]:
        """The first `n` objects, parsed from the start of the bytes only (a preview)."""
        if self._items is not None or n >= self._length:
            return self.items()[:n]
        decoder = json.JSONDecoder()
        size = 1 << 14
        while True:
            prefix = bytes(self.parts[0][:size]).decode("utf-8", errors="ignore")
            found, index = [], 1
            try:
                while len(found) < n:
                    value, index = decoder.raw_decode(prefix, index)
                    found.append(value)
                    index += 1  # the comma
                return found
            except ValueError:
                if size >= len(self.parts[0]):
                    return self.items()[:n]
                size *= 4


def canonical_bytes(document: Any) -> bytes:
    """RFC 8785 (JCS) serialization of `document` (see the module docstring for its limits)."""
    return b"".join(_pieces(document, sort_keys=True))


def version_of(document: Mapping[str, Any]) -> str:
    """SHA-256 hex of the JCS bytes of `document` without its `build` member."""
    unbuilt = {key: value for key, value in document.items() if key != "build"}
    digest = hashlib.sha256()
    for piece in _pieces(unbuilt, sort_keys=True):
        digest.update(piece)
    return digest.hexdigest()


def serialize(document: Mapping[str, Any]) -> bytes:
    """The blob bytes: compact JSON in the document's own field order, numbers as JCS writes."""
    return b"".join(serialized_parts(document))


def serialized_parts(document: Mapping[str, Any]) -> list[bytes | memoryview]:
    """`serialize` in pieces, to be written one after the other: an embedded `EncodedList`
    (hundreds of MB for a window's session_seq) is not copied into one whole first."""
    return _pieces(document, sort_keys=False)


# Where an EncodedList goes: NUL never appears in orjson's output (strings escape it).
_SLOT = b"\x00"


def _pieces(document: Any, *, sort_keys: bool) -> list[bytes | memoryview]:
    """The document's bytes in pieces: the embedded `EncodedList`s as they are, the text
    around them written by orjson with floats corrected; the lists are neither copied nor
    scanned for floats (their numbers are in JCS form already)."""
    embedded: list[list[bytes | memoryview]] = []

    def slot(value: Any) -> orjson.Fragment:
        if isinstance(value, EncodedList):
            embedded.append(value.parts)
            return orjson.Fragment(_SLOT)
        raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")

    option = orjson.OPT_STRICT_INTEGER | (orjson.OPT_SORT_KEYS if sort_keys else 0)
    try:
        text = jcs_numbers(orjson.dumps(document, default=slot, option=option))
    except orjson.JSONEncodeError as exc:
        what = "has no JCS form" if sort_keys else "cannot be serialized"
        raise ValueError(f"document {what}: {exc}") from exc
    if not embedded:
        return [text]
    around = text.split(_SLOT)
    pieces = [around[0]]
    for parts, after in zip(embedded, around[1:], strict=True):
        pieces += [*parts, after]
    return pieces


def verify_blob(blob: bytes) -> tuple[bool, str | None, list[str]]:
    """Recompute a blob's version: (matches build.version, recomputed version, problems)."""
    try:
        document = orjson.loads(blob)
    except orjson.JSONDecodeError as exc:
        return False, None, [f"blob is not valid JSON: {exc}"]
    if not isinstance(document, dict):
        return False, None, [f"blob must hold a JSON object, got {type(document).__name__}"]
    try:
        recomputed = version_of(document)
    except ValueError as exc:
        return False, None, [str(exc)]
    build = document.get("build")
    stated = build.get("version") if isinstance(build, dict) else None
    if not isinstance(stated, str):
        return False, recomputed, ["document has no build.version to verify"]
    if stated != recomputed:
        return (
            False,
            recomputed,
            [f"build.version {stated} does not match the recomputed version {recomputed}"],
        )
    return True, recomputed, []


def es6_number(value: float) -> str:
    """`value` as ECMAScript's Number.prototype.toString writes it (RFC 8785 §3.2.2.3)."""
    if not math.isfinite(value):
        raise ValueError(f"{value!r} has no JSON form (RFC 8785 forbids NaN and infinities)")
    if value == 0:
        return "0"
    if value < 0:
        return "-" + es6_number(-value)
    # repr gives the shortest digits that round-trip, the digits ECMAScript also picks.
    _, digit_tuple, exponent = decimal.Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    point = len(digit_tuple) + exponent  # value = 0.<digits> * 10**point
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    count = len(digits)
    if count <= point <= 21:
        return digits + "0" * (point - count)
    if 0 < point <= 21:
        return f"{digits[:point]}.{digits[point:]}"
    if -6 < point <= 0:
        return f"0.{'0' * -point}{digits}"
    power = point - 1
    mantissa = digits if count == 1 else f"{digits[0]}.{digits[1:]}"
    return f"{mantissa}e{'+' if power >= 0 else '-'}{abs(power)}"


def jcs_numbers(text: bytes) -> bytes:
    """Rewrite the float tokens of compact JSON `text` whose form differs from JCS."""
    if text[:1] in b"-0123456789":  # a bare number: the whole text is the token
        return es6_number(float(text)).encode() if b"." in text or b"e" in text else text
    spans: list[tuple[int, int]] = []
    for at in _suspects(text).tolist():
        if spans and at < spans[-1][1]:
            continue
        low = max(0, at - _LONGEST_FLOAT)
        start = max(text.rfind(b":", low, at), text.rfind(b",", low, at), text.rfind(b"[", low, at))
        token = _FLOAT_TO_FIX.match(text, start + 1) if start >= 0 else None
        if token is not None and token.end() > at:
            spans.append(token.span())
    if not spans:
        return text
    pieces: list[bytes] = []
    last = 0
    for (start, end), is_number in zip(spans, _outside_strings(text, spans), strict=True):
        if is_number:
            pieces.append(text[last:start])
            pieces.append(es6_number(float(text[start:end])).encode())
            last = end
    pieces.append(text[last:])
    return b"".join(pieces)


def _suspects(text: bytes) -> np.ndarray:
    """Sorted positions of `e` before a sign or a digit and of `.0` before a delimiter:
    where such floats are.

    A vectorized scan, several times faster than a regular expression over big documents,
    made slice by slice: masks of a whole 100 MB artifact would cost more than the scan.
    """
    chars = np.frombuffer(text, dtype=np.uint8)
    found = []
    for start in range(0, chars.size, _SCAN_SLICE):
        window = chars[start : start + _SCAN_SLICE + 2]  # two bytes of look-ahead
        exponent = np.flatnonzero(window[:-1] == ord("e"))
        exponent = exponent[exponent < _SCAN_SLICE]
        following = window[exponent + 1]
        exponent = exponent[
            (following == ord("-"))
            | (following == ord("+"))
            | ((following >= ord("0")) & (following <= ord("9")))
        ]
        point = np.flatnonzero(window[:-2] == ord("."))
        point = point[point < _SCAN_SLICE]
        point = point[(window[point + 1] == ord("0")) & np.isin(window[point + 2], _DELIMITERS)]
        found += [exponent + start, point + start]
    return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def _outside_strings(text: bytes, spans: list[tuple[int, int]]) -> list[bool]:
    """For each span (ascending) of valid compact JSON `text`, whether it is outside strings."""
    # Blanking escape pairs left to right (`\\` first, then `\"`) leaves exactly the quotes
    # that open and close strings; a position is outside when an even number precede it.
    blanked = text.replace(b"\\\\", b"__").replace(b'\\"', b"__") if b"\\" in text else text
    outside = []
    quotes = previous = 0
    for start, _ in spans:
        quotes += blanked.count(b'"', previous, start)
        previous = start
        outside.append(quotes % 2 == 0)
    return outside
