"""Validation of an artifact document against what its partition expects (SPEC §6).

`validate_document` returns human-readable problems, empty when the document is good:
its JSON Schema (`schemas/artifacts/<type>.v1.json`, or `disabled.v1.json` for a disabled
marker), type/tenant/surface/segment/window, the version, caps, and the sort orders of SPEC §4
(with the uniqueness they imply). The checks after the schema run only on a document that
matches it.

`check_blob` is what the checks and publish call: the blob's verdict (its recomputed version
and its problems), computed once per blob and kept by its SHA-256 for the rest of the
process, so that publish, running after the `valid` check, re-reads the bytes but does not
redo the work.

Speed: a big artifact has millions of entries, and walking them in Python costs more than
building them. So a blob is first checked natively (`_fast_verdict`): msgspec decodes it
into structs that mirror the schema (`_ENTRY`, `_ROW`, `_DOCUMENT`; a test holds them to
agreement with the JSON Schema on good and bad documents), jsonschema checks the envelope
with the lists emptied, the version is recomputed from the structs, and caps, orders,
floors and self-references are compared as arrays. Only a blob that fails there takes the
slow path (`validate_document`), which finds and words every problem: the fast path says
whether a document is good, the slow path says what is wrong with it.

Slow-path schema speed: jsonschema needs ~20 µs per object, so the schema is applied to the
document with its innermost entry lists emptied, and each entry is checked by `_entry_ok`, a
direct transcription of the schema's `counted`/`scored` definitions (tests hold the two to
agreement); an entry that fails is then validated with jsonschema, which writes the message.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import jsonschema
import msgspec
import numpy as np
import orjson

from recsys_assets.artifacts.envelope import (
    ARTIFACT_TYPES,
    MAX_SAFE_INT,
    is_disabled_marker,
    jcs_numbers,
    version_of,
    window_json,
)

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas" / "artifacts"
# Examples reported per kind of problem before the rest are only counted.
_EXAMPLES = 5


@dataclass(frozen=True)
class _Layout:
    """One list of a payload: where its entries are and what bounds and orders them.

    `entries` None means the payload list itself holds the entries; otherwise it holds rows
    `{row_key, entries: [...]}`. Caps and floors name a `Caps` attribute and its config key.
    """

    field: str
    entries: str | None
    definition: str  # "counted" or "scored" in the schema's $defs
    entry_cap: tuple[str, str]
    row_key: str | None = None
    row_cap: tuple[str, str] | None = None
    no_self: bool = False
    floor: tuple[str, str, bool] | None = None  # (attribute, key, strictly above)

    @property
    def value(self) -> str:
        return "count" if self.definition == "counted" else "score"


_PER_ITEM = ("max_neighbors_per_item", "limits.max_neighbors_per_item")
_PER_USER = ("max_items_per_user", "limits.max_items_per_user")
_ROWS = ("max_items_per_artifact", "limits.max_items_per_artifact")
_LAYOUTS: dict[str, tuple[_Layout, ...]] = {
    "popularity": (_Layout("items", None, "counted", _ROWS),),
    "cooc": (
        _Layout("neighbors", "items", "counted", _PER_ITEM, "item_id", _ROWS, no_self=True,
                floor=("min_cooc_support", "limits.min_cooc_support", False)),
    ),
    "implicit": (
        _Layout("users", "items", "scored", _PER_USER, "user_id",
                ("max_users", "artifacts.implicit.max_users")),
    ),
    "content_sim": (
        _Layout("items", "similar", "scored", _PER_ITEM, "item_id",
                ("max_items", "artifacts.content_sim.max_items"), no_self=True,
                floor=("min_similarity", "artifacts.content_sim.min_similarity", True)),
    ),
    "session_seq": (
        _Layout("users", "items", "scored", _PER_USER, "user_id",
                ("max_users", "artifacts.session_seq.max_users")),
        _Layout("transitions", "items", "scored", _PER_ITEM, "item_id", _ROWS, no_self=True),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Expected:
    """What the partition being checked says the document must be."""

    artifact_type: str
    tenant: str
    surface: str
    segment: str
    window_start: date
    window_end_exclusive: date


@dataclass(frozen=True)
class Caps:
    """Caps (SPEC §6, defaults of SPEC §9) and, when set, the filters the builder applied.

    max_users is artifacts.<implicit|session_seq>.max_users; max_items is
    artifacts.content_sim.max_items.
    """

    max_items_per_artifact: int = 1000
    max_neighbors_per_item: int = 50
    max_items_per_user: int = 50
    max_users: int = 100_000
    max_items: int = 100_000
    min_cooc_support: int | None = None
    min_similarity: float | None = None


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """`schemas/artifacts/<name>.v1.json` (an artifact type, `disabled` or `manifest`)."""
    path = SCHEMA_DIR / f"{name}.v1.json"
    return json.loads(path.read_text())


@functools.cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema(name))


@functools.cache
def _entry_validator(name: str, definition: str) -> jsonschema.Draft202012Validator:
    schema = load_schema(name)
    return jsonschema.Draft202012Validator(
        {**schema["$defs"][definition], "$defs": schema["$defs"]}
    )


@dataclass(frozen=True)
class Verdict:
    """A blob's recomputed version (None when it has none) and its problems (empty: good)."""

    version: str | None
    problems: list[str] = field(default_factory=list)


# Verdicts of the last blobs checked in this process, by (SHA-256, expected, caps).
_VERDICTS: OrderedDict[tuple[str, Expected, Caps], Verdict] = OrderedDict()
_KEPT_VERDICTS = 64


def check_blob(blob: bytes, expected: Expected, caps: Caps) -> Verdict:
    """The verdict on an artifact blob: every check of `validate_document` (schema, identity,
    version, caps, orders), once per distinct blob in a process."""
    key = (hashlib.sha256(blob).hexdigest(), expected, caps)
    verdict = _VERDICTS.get(key)
    if verdict is None:
        verdict = _fast_verdict(blob, expected, caps) or _slow_verdict(blob, expected, caps)
        _VERDICTS[key] = verdict
        while len(_VERDICTS) > _KEPT_VERDICTS:
            _VERDICTS.popitem(last=False)
    return verdict


def validate_blob(blob: bytes, expected: Expected, caps: Caps) -> list[str]:
    """Problems of the document in `blob` (see `validate_document`), parse errors included."""
    return check_blob(blob, expected, caps).problems


def _slow_verdict(blob: bytes, expected: Expected, caps: Caps) -> Verdict:
    try:
        document = orjson.loads(blob)
    except orjson.JSONDecodeError as exc:
        return Verdict(None, [f"blob is not valid JSON: {exc}"])
    problems = validate_document(document, expected, caps)
    try:
        version = version_of(document) if isinstance(document, dict) else None
    except ValueError:
        version = None
    return Verdict(version, problems)


def validate_manifest(manifest: Any) -> list[str]:
    """Problems of a ManifestV1 document against `schemas/artifacts/manifest.v1.json`."""
    return _schema_problems(_validator("manifest"), manifest, "$")


def validate_document(document: Any, expected: Expected, caps: Caps) -> list[str]:
    """Problems of an artifact document (or disabled marker); empty when it is good."""
    if expected.artifact_type not in ARTIFACT_TYPES:
        raise ValueError(
            f"expected.artifact_type must be one of {', '.join(ARTIFACT_TYPES)},"
            f" got {expected.artifact_type!r}"
        )
    if not isinstance(document, dict):
        return [f"artifact must be a JSON object, got {type(document).__name__}"]
    if is_disabled_marker(document):
        problems = _schema_problems(_validator("disabled"), document, "$")
        return problems or _identity_problems(document, expected)

    problems = _artifact_schema_problems(document, expected.artifact_type)
    if problems:
        return problems
    problems = _identity_problems(document, expected)
    try:
        recomputed = version_of(document)
    except ValueError as exc:  # e.g. an integer beyond 2**53, which JCS cannot write
        return [*problems, str(exc)]
    stated = document["build"]["version"]
    if stated != recomputed:
        problems.append(
            f"build.version {stated} does not match the recomputed version {recomputed}"
        )
    return problems + _payload_problems(document, expected.artifact_type, caps)


def _schema_problems(
    validator: jsonschema.Draft202012Validator, value: Any, where: str
) -> list[str]:
    problems = []
    for error in sorted(validator.iter_errors(value), key=lambda error: list(error.absolute_path)):
        path = where + error.json_path[1:]
        problems.append(f"schema: {path}: {error.message}")
    return problems


def _artifact_schema_problems(document: dict[str, Any], artifact_type: str) -> list[str]:
    skeleton = dict(document)
    entry_lists: list[tuple[str, list[Any], str]] = []
    for layout in _LAYOUTS[artifact_type]:
        field, inner, definition = layout.field, layout.entries, layout.definition
        rows = document.get(field)
        if not isinstance(rows, list):
            continue
        if inner is None:
            skeleton[field] = []
            entry_lists.append((f"$.{field}", rows, definition))
            continue
        emptied = []
        for index, row in enumerate(rows):
            if isinstance(row, dict) and isinstance(row.get(inner), list):
                entry_lists.append((f"$.{field}[{index}].{inner}", row[inner], definition))
                row = {**row, inner: []}
            emptied.append(row)
        skeleton[field] = emptied

    problems = _schema_problems(_validator(artifact_type), skeleton, "$")
    bad_entries = 0
    for where, entries, definition in entry_lists:
        for index, entry in enumerate(entries):
            if _entry_ok(entry, definition):
                continue
            bad_entries += 1
            if bad_entries <= _EXAMPLES:
                path = f"{where}[{index}]"
                found = _schema_problems(_entry_validator(artifact_type, definition), entry, path)
                problems.extend(found or [f"schema: {path}: does not match $defs/{definition}"])
    if bad_entries > _EXAMPLES:
        problems.append(f"schema: {bad_entries - _EXAMPLES} more entries do not match their schema")
    return problems


def _entry_ok(entry: Any, definition: str) -> bool:
    """The schema's `counted` / `scored` definitions, checked directly."""
    if type(entry) is not dict or len(entry) != 2:
        return False
    item_id = entry.get("item_id")
    if type(item_id) is not str or not item_id:
        return False
    if definition == "counted":
        count = entry.get("count")
        kind = type(count)
        # JSON Schema's integer includes floats with a zero fraction.
        return (kind is int or (kind is float and count.is_integer())) and not count < 0
    score = entry.get("score")
    kind = type(score)
    return (kind is int or kind is float) and not score < 0


def _identity_problems(document: Mapping[str, Any], expected: Expected) -> list[str]:
    problems = []
    for name in ("artifact_type", "tenant", "surface"):
        if document.get(name) != getattr(expected, name):
            problems.append(
                f"{name} is {document.get(name)!r}, expected {getattr(expected, name)!r}"
            )
    segment = document.get("segment", "")
    if segment != expected.segment:
        problems.append(f"segment is {segment!r}, expected {expected.segment!r} ('' means absent)")
    window = window_json(expected.window_start, expected.window_end_exclusive)
    if document.get("window") != window:
        problems.append(f"window is {document.get('window')}, expected {window}")
    return problems


class _Findings:
    """Problems grouped by kind: a few examples each, then a count."""

    def __init__(self) -> None:
        self.kinds: dict[str, list[str]] = {}

    def add(self, kind: str, message: str) -> None:
        self.kinds.setdefault(kind, []).append(message)

    def messages(self) -> list[str]:
        out = []
        for messages in self.kinds.values():
            out.extend(messages[:_EXAMPLES])
            if len(messages) > _EXAMPLES:
                out.append(f"... and {len(messages) - _EXAMPLES} more like the above")
        return out


def _payload_problems(document: dict[str, Any], artifact_type: str, caps: Caps) -> list[str]:
    findings = _Findings()
    for layout in _LAYOUTS[artifact_type]:
        rows = document[layout.field]
        where = f"$.{layout.field}"
        if layout.entries is None:
            _check_entries(findings, where, rows, layout, caps)
            continue
        assert layout.row_key is not None and layout.row_cap is not None
        attribute, name = layout.row_cap
        if len(rows) > getattr(caps, attribute):
            findings.add(
                "row cap", f"{where}: {len(rows)} rows exceed {name} = {getattr(caps, attribute)}"
            )
        _check_order(
            findings,
            where,
            [row[layout.row_key] for row in rows],
            f"{layout.row_key} ascending, unique",
        )
        for index, row in enumerate(rows):
            entries = row[layout.entries]
            _check_entries(findings, f"{where}[{index}].{layout.entries}", entries, layout, caps)
            anchor = row[layout.row_key]
            if layout.no_self and any(entry["item_id"] == anchor for entry in entries):
                findings.add("self", f"{where}[{index}]: {anchor!r} lists itself")
    if artifact_type == "content_sim":
        for index, row in enumerate(document["items"]):
            tags = row["tags"]
            if tags != sorted(tags) or any(tag != tag.strip().lower() for tag in tags):
                findings.add(
                    "tags",
                    f"$.items[{index}].tags {tags} must be trimmed, lower-case, sorted ascending",
                )
    return findings.messages()


def _check_entries(
    findings: _Findings, where: str, entries: list[dict[str, Any]], layout: _Layout, caps: Caps
) -> None:
    """An entry list's cap, order (value descending, then id, ids unique) and floor."""
    attribute, name = layout.entry_cap
    cap = getattr(caps, attribute)
    if len(entries) > cap:
        findings.add("entry cap", f"{where}: {len(entries)} entries exceed {name} = {cap}")
    value = layout.value
    keys = [(-entry[value], entry["item_id"]) for entry in entries]
    _check_order(findings, where, keys, f"{value} descending, then item_id ascending, unique ids")
    if layout.floor is None or getattr(caps, layout.floor[0]) is None:
        return
    attribute, name, strict = layout.floor
    floor = getattr(caps, attribute)
    for index, entry in enumerate(entries):
        if entry[value] < floor or (strict and entry[value] == floor):
            relation = "above" if strict else "at least"
            findings.add(
                "floor",
                f"{where}[{index}]: {value} {entry[value]} is not {relation} {name} = {floor}",
            )


def _check_order(findings: _Findings, where: str, keys: list[Any], order: str) -> None:
    for index in range(1, len(keys)):
        if not keys[index - 1] < keys[index]:
            findings.add(
                "order",
                f"{where}[{index}]: breaks the order ({order}): {_show(keys[index - 1])}"
                f" then {_show(keys[index])}",
            )
            return


def _show(key: Any) -> str:
    if isinstance(key, tuple):
        return repr((-key[0], key[1]))
    return repr(key)


# The fast path's structs: the schemas' `counted`/`scored` entries and list rows, strict
# (unknown fields refused, types exact, `minLength`/`minimum` as msgspec constraints). An
# integral float count (`3.0`, which JSON Schema's integer admits) fails here and is judged
# by the slow path. The envelope fields stay untyped: jsonschema checks them, lists emptied.
_Id = Annotated[str, msgspec.Meta(min_length=1)]
_NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
# A score written as an integer stays one: re-encoded as a float it would need a JCS fix.
_NonNegative = _NonNegativeInt | Annotated[float, msgspec.Meta(ge=0)]


class _Counted(msgspec.Struct, forbid_unknown_fields=True, gc=False, rename={"value": "count"}):
    item_id: _Id
    value: _NonNegativeInt


class _Scored(msgspec.Struct, forbid_unknown_fields=True, gc=False, rename={"value": "score"}):
    item_id: _Id
    value: _NonNegative


class _CoocRow(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    item_id: _Id
    items: list[_Counted]


class _UserRow(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    user_id: _Id
    items: list[_Scored]


class _TransitionRow(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    item_id: _Id
    items: list[_Scored]


class _SimilarRow(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    item_id: _Id
    tags: Annotated[list[_Id], msgspec.Meta(min_length=1)]
    similar: list[_Scored]


_UNSET: Any = msgspec.UNSET
_ENVELOPE = ("v", "artifact_type", "tenant", "surface", "segment", "window", "build")


def _document_struct(artifact_type: str, lists: dict[str, Any]) -> type[msgspec.Struct]:
    """A document of one type: envelope fields as decoded JSON, its lists typed; a field
    left out stays UNSET (jsonschema then names the missing one) and is not encoded."""
    fields = [(name, Any, _UNSET) for name in _ENVELOPE]
    fields += [(name, list[row] | msgspec.UnsetType, _UNSET) for name, row in lists.items()]
    return msgspec.defstruct(
        f"_{artifact_type}_document", fields, forbid_unknown_fields=True, gc=False
    )


_DOCUMENT: dict[str, type[msgspec.Struct]] = {
    "popularity": _document_struct("popularity", {"items": _Counted}),
    "cooc": _document_struct("cooc", {"neighbors": _CoocRow}),
    "implicit": _document_struct("implicit", {"users": _UserRow}),
    "content_sim": _document_struct("content_sim", {"items": _SimilarRow}),
    "session_seq": _document_struct(
        "session_seq", {"users": _UserRow, "transitions": _TransitionRow}
    ),
}
_DECODERS = {name: msgspec.json.Decoder(struct) for name, struct in _DOCUMENT.items()}
_SORTED = msgspec.json.Encoder(order="sorted")


def _fast_verdict(blob: bytes, expected: Expected, caps: Caps) -> Verdict | None:
    """The verdict on a good blob, natively; None when anything is off (or the blob is a
    disabled marker): the slow path then finds and words the problems."""
    decoder = _DECODERS.get(expected.artifact_type)
    if decoder is None:
        return None
    try:
        document = decoder.decode(blob)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    lists = _lists(expected.artifact_type)
    skeleton = {
        name: [] if name in lists else value
        for name in document.__struct_fields__
        if (value := getattr(document, name)) is not msgspec.UNSET
    }
    if _schema_problems(_validator(expected.artifact_type), skeleton, "$"):
        return None
    if _identity_problems(skeleton, expected):
        return None
    if not all(_layout_ok(getattr(document, layout.field), layout, caps)
               for layout in _LAYOUTS[expected.artifact_type]):  # fmt: skip
        return None
    if expected.artifact_type == "content_sim" and not _tags_ok(document.items):
        return None
    unbuilt = msgspec.structs.replace(document, build=msgspec.UNSET)
    digest = hashlib.sha256(jcs_numbers(_SORTED.encode(unbuilt))).hexdigest()
    if document.build.get("version") != digest:
        return None
    return Verdict(digest)


def _lists(artifact_type: str) -> set[str]:
    return {layout.field for layout in _LAYOUTS[artifact_type]}


def _layout_ok(rows: list[Any], layout: _Layout, caps: Caps) -> bool:
    """One list's caps, orders, floor and self-references, compared as arrays."""
    if layout.entries is None:
        return _entries_ok([rows], None, layout, caps)
    assert layout.row_key is not None and layout.row_cap is not None
    if len(rows) > getattr(caps, layout.row_cap[0]):
        return False
    anchors = np.array([getattr(row, layout.row_key) for row in rows], dtype=object)
    if anchors.size > 1 and not (anchors[:-1] < anchors[1:]).all():
        return False
    return _entries_ok([getattr(row, layout.entries) for row in rows], anchors, layout, caps)


def _entries_ok(
    lists: list[list[Any]], anchors: np.ndarray | None, layout: _Layout, caps: Caps
) -> bool:
    """Entry lists (of the rows `anchors`, when they have rows): caps, (value descending,
    then id ascending) within each list, no list naming its anchor, the floor, JCS-safe
    counts. Laid end to end as arrays, the entries are read once each."""
    lengths = np.array([len(entries) for entries in lists], dtype=np.int64)
    if lengths.size and lengths.max(initial=0) > getattr(caps, layout.entry_cap[0]):
        return False
    if not lengths.sum():
        return True
    ids = np.array([e.item_id for entries in lists for e in entries], dtype=object)
    values = np.array([e.value for entries in lists for e in entries], dtype=np.float64)
    if values.max() > MAX_SAFE_INT:  # an integer JCS cannot write (the slow path says so)
        return False
    starts = np.zeros(ids.size, dtype=bool)
    starts[np.cumsum(lengths)[:-1][lengths[1:] > 0]] = True
    later = ~starts[1:]  # pairs of neighbours within one list
    before, after = values[:-1], values[1:]
    ordered = (before > after) | ((before == after) & (ids[:-1] < ids[1:]))
    if not ordered[later].all():
        return False
    if layout.no_self and anchors is not None and (ids == np.repeat(anchors, lengths)).any():
        return False
    if layout.floor is not None and getattr(caps, layout.floor[0]) is not None:
        floor = getattr(caps, layout.floor[0])
        if (values < floor).any() or (layout.floor[2] and (values == floor).any()):
            return False
    return True


def _tags_ok(rows: list[_SimilarRow]) -> bool:
    """content_sim's tags: trimmed, lower-case, strictly ascending (so unique)."""
    for row in rows:
        tags = row.tags
        if any(tag != tag.strip().lower() for tag in tags):
            return False
        if any(a >= b for a, b in zip(tags, tags[1:], strict=False)):
            return False
    return True
