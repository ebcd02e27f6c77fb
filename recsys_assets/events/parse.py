"""Tolerant, fast parsing of exposure JSON Lines (SPEC §2) into typed columns.

Every non-blank line comes out as one row, either with its fields or with the reason it
failed. polars parses the bulk in one vectorized pass; msgspec is the strict gate for the
lines polars would be lenient with (it turns `"item_id": 5` into "5") or would fail on (one
malformed line fails a whole `read_ndjson`). Both paths end in the same polars parse, so a
line's verdict never depends on its neighbours.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import Annotated

import msgspec
import numpy as np
import polars as pl

STRING_FIELDS = ("ts", "tenant", "surface", "session_id", "item_id", "user_id", "request_id")
INT_FIELDS = ("v", "rank")
ID_FIELDS = ("tenant", "surface", "session_id", "item_id", "user_id", "request_id")
REQUIRED_FIELDS = ("v", "ts", "tenant", "surface", "session_id", "item_id")

JSON_SCHEMA = {
    "v": pl.Int64,
    "ts": pl.String,
    "tenant": pl.String,
    "surface": pl.String,
    "session_id": pl.String,
    "item_id": pl.String,
    "user_id": pl.String,
    "request_id": pl.String,
    "rank": pl.Int64,
}

# Lines that polars would coerce or misread go through the strict gate: an object, array or
# boolean value anywhere (polars turns them into strings), any \u escape (keys can be escaped
# too, and polars turns lone surrogates into NUL), anything not shaped `{...}`. A number
# where a string belongs is caught after parsing (see `_coerced`).
_SUSPECT = r'":\s*[\[{tf]'

# An integer field holding something polars' Int64 parse refuses (which fails a whole block).
_NOT_AN_INT = r'"(?:v|rank)"\s*:\s*(?:[^-\d\sn]|-?\d+[.eE])'

BLOCK_LINES = 50_000

Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class _Gate(msgspec.Struct, gc=False):
    """Type gate only: missing fields and nulls are judged later, with their own reasons."""

    v: Int64 | None = None
    ts: str | None = None
    tenant: str | None = None
    surface: str | None = None
    session_id: str | None = None
    item_id: str | None = None
    user_id: str | None = None
    request_id: str | None = None
    rank: Int64 | None = None


_GATE = msgspec.json.Decoder(_Gate)


@dataclass(frozen=True)
class DecodedLines:
    """One row per non-blank line in `frame`: `line_no`, the JSON fields, `reason`, `detail`.

    The raw text of a line is cut from `data` only when needed (rejects): a column of every
    line's text would double the memory of a big partition.
    """

    frame: pl.DataFrame
    data: bytes
    line_lengths: pl.Series
    total_lines: int
    blank_lines: int

    @functools.cached_property
    def _line_ends(self) -> np.ndarray:
        return np.cumsum(self.line_lengths.to_numpy().astype(np.int64) + 1) - 1

    def raw_lines(self, line_nos: list[int]) -> list[str]:
        """The text of the given 1-based lines, without the line break."""
        if not line_nos:
            return []
        ends = self._line_ends
        out = []
        for line_no in line_nos:
            start = 0 if line_no == 1 else int(ends[line_no - 2]) + 1
            line = self.data[start : int(ends[line_no - 1])]
            out.append(line.decode("utf-8", "replace").removesuffix("\r"))
        return out


def split_lines(data: bytes) -> pl.DataFrame:
    """Number every line (1-based); `utf8` is false where the line is not valid UTF-8.

    polars splits the bytes (no Python object per line): the separator is the unit separator
    \x1f, which a valid JSON line cannot hold unescaped. Data holding it, or invalid UTF-8,
    is split in Python instead, so that every raw line is kept whole.
    """
    if not data:
        return pl.DataFrame(
            schema={"line_no": pl.Int64, "raw": pl.String, "utf8": pl.Boolean, "length": pl.UInt32}
        )
    if b"\x1f" not in data:
        try:
            raw = pl.read_csv(
                io.BytesIO(data),
                has_header=False,
                separator="\x1f",
                quote_char=None,
                schema={"raw": pl.String},
                encoding="utf8",
            )["raw"]
        except pl.exceptions.PolarsError:
            raw = None
        if raw is not None:
            raw = raw.fill_null("")
            return pl.DataFrame(
                {
                    "line_no": pl.int_range(1, raw.len() + 1, dtype=pl.Int64, eager=True),
                    "raw": raw.str.strip_chars_end("\r") if b"\r" in data else raw,
                    "utf8": pl.repeat(True, raw.len(), eager=True),
                    "length": raw.str.len_bytes(),
                }
            )
    lines, utf8, lengths = [], [], []
    for chunk in data.split(b"\n"):
        lengths.append(len(chunk))
        try:
            lines.append(chunk.decode("utf-8"))
            utf8.append(True)
        except UnicodeDecodeError:
            lines.append(chunk.decode("utf-8", "replace"))
            utf8.append(False)
    if lines[-1] == "":
        lines.pop()
        utf8.pop()
        lengths.pop()
    return pl.DataFrame(
        {
            "line_no": pl.int_range(1, len(lines) + 1, dtype=pl.Int64, eager=True),
            "raw": pl.Series("raw", lines, dtype=pl.String).str.strip_chars_end("\r"),
            "utf8": pl.Series("utf8", utf8, dtype=pl.Boolean),
            "length": pl.Series("length", lengths, dtype=pl.UInt32),
        }
    )


def _gate_reason(line: str) -> tuple[str, str] | None:
    try:
        _GATE.decode(line)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if message.startswith("Expected `object`"):
            return "not_object", message
        return "bad_type", message
    except msgspec.DecodeError as exc:
        return "malformed_json", str(exc)
    return None


RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$"


def _split_coerced(parsed: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split off rows where polars may have filled a string field from a JSON number.

    A candidate is an id that looks numeric or a `ts` that is not date-like; it is kept only
    when the raw line holds the value as a JSON string (`"field":"value"`).
    """
    candidate = pl.any_horizontal(
        [pl.col(name).str.contains(r"^[-\d]") for name in ID_FIELDS]
        + [~pl.col("ts").str.contains(r"^\d{4}-")]  # a number polars made a string of
    ).fill_null(False)
    parsed = parsed.with_columns(candidate=candidate)
    suspects = parsed.filter(pl.col("candidate")).rechunk()
    if suspects.height == 0:
        return parsed.drop("candidate"), suspects.drop("candidate")
    coerced = pl.any_horizontal(
        [
            pl.col(name).is_not_null()
            & ~pl.col("raw").str.contains(pl.format('"{}":"{}"', pl.lit(name), name), literal=True)
            for name in STRING_FIELDS
        ]
    )
    suspects = suspects.with_columns(coerced=coerced)
    keep = pl.concat(
        [
            parsed.filter(~pl.col("candidate")).drop("candidate"),
            suspects.filter(~pl.col("coerced")).drop("candidate", "coerced"),
        ]
    )
    return keep, suspects.filter(pl.col("coerced")).drop("candidate", "coerced")


def _read_json(lines: pl.Series) -> pl.DataFrame:
    if lines.len() == 0:
        return pl.DataFrame(schema=JSON_SCHEMA)
    buffer = io.BytesIO()
    lines.to_frame().write_csv(buffer, include_header=False, quote_style="never")
    buffer.seek(0)
    parsed = pl.read_ndjson(buffer, schema=JSON_SCHEMA)
    if parsed.height != lines.len():
        raise RuntimeError(f"JSON parser returned {parsed.height} rows for {lines.len()} lines")
    return parsed


def decode_lines(data: bytes) -> DecodedLines:
    """Parse JSON Lines bytes; blank lines are counted, every other line gets a row."""
    lines = split_lines(data)
    lengths = lines["length"]
    lines = lines.drop("length")
    total = lines.height
    nonblank = ~pl.col("utf8") | pl.col("raw").str.contains(r"\S")
    if lines.select(nonblank.all()).item() is False:
        lines = lines.filter(nonblank)
    blank = total - lines.height
    try:
        # One parse of the bytes as they are; its rows are the non-blank lines in order.
        whole = pl.read_ndjson(io.BytesIO(data), schema=JSON_SCHEMA) if data else None
    except pl.exceptions.PolarsError:
        whole = None
    whole_ok = whole is not None and whole.height == lines.height
    suspect = (
        ~pl.col("utf8")
        | pl.col("raw").str.contains(_SUSPECT)
        | pl.col("raw").str.contains("\\u", literal=True)
    )
    if not whole_ok:  # some line is not an object: find them before parsing block by block
        suspect = (
            suspect
            | ~(pl.col("raw").str.contains(r"^\s*\{") & pl.col("raw").str.contains(r"\}\s*$"))
            | pl.col("raw").str.contains(_NOT_AN_INT)
        )
    lines = lines.with_columns(suspect=suspect)

    parts: list[pl.DataFrame] = []
    gated: list[pl.DataFrame] = [lines.filter(pl.col("suspect"))]
    clean = lines.filter(~pl.col("suspect")) if gated[0].height else lines
    blocks = None
    if whole_ok:
        blocks = [
            (clean, whole if clean.height == lines.height else whole.filter(~lines["suspect"]))
        ]
    del whole
    try:
        blocks = blocks or [(clean, _read_json(clean["raw"]))]
    except pl.exceptions.PolarsError:
        blocks = []
        for start in range(0, clean.height, BLOCK_LINES):
            block = clean.slice(start, BLOCK_LINES)
            try:
                blocks.append((block, _read_json(block["raw"])))
            except pl.exceptions.PolarsError:
                gated.append(block)
    del lines
    for block, fields in blocks:
        parsed = pl.concat([block.select("line_no", "raw", "utf8"), fields], how="horizontal")
        keep, coerced = _split_coerced(parsed)
        parts.append(keep.drop("utf8", "raw"))
        gated.append(coerced.select("line_no", "raw", "utf8"))

    for block in gated:
        if block.height == 0:
            continue
        verdicts = [
            _gate_reason(raw) if ok else ("invalid_utf8", "line is not valid UTF-8")
            for raw, ok in zip(block["raw"].to_list(), block["utf8"].to_list(), strict=True)
        ]
        failed = pl.Series("failed", [v is not None for v in verdicts], dtype=pl.Boolean)
        block = block.with_columns(failed)
        passed = block.filter(~pl.col("failed"))
        if passed.height:
            fields = _read_json(passed["raw"])
            parts.append(pl.concat([passed.select("line_no"), fields], how="horizontal"))
        bad = [v for v in verdicts if v is not None]
        if bad:
            rejected = block.filter(pl.col("failed"))
            parts.append(
                pl.DataFrame(
                    {
                        "line_no": rejected["line_no"],
                        "reason": [reason for reason, _ in bad],
                        "detail": [detail for _, detail in bad],
                    },
                    schema={"line_no": pl.Int64, "reason": pl.String, "detail": pl.String},
                )
            )

    schema = {"line_no": pl.Int64, **JSON_SCHEMA}
    schema |= {"reason": pl.String, "detail": pl.String}
    if not parts:
        return DecodedLines(pl.DataFrame(schema=schema), data, lengths, total, blank)
    parts = [p for p in parts if p.height] or parts[:1]
    frame = pl.concat(parts, how="diagonal_relaxed") if len(parts) > 1 else parts[0]
    frame = frame.select(
        [
            pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
            for name, dtype in schema.items()
        ]
    )
    if len(parts) > 1:
        frame = frame.sort("line_no")
    return DecodedLines(frame, data, lengths, total, blank)
