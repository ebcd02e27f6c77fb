"""Tolerant, fast parsing of exposure JSON Lines (SPEC §2) into typed columns.

Every non-blank line comes out as one row, either with its fields or with the reason it
failed. A file is decoded a block of lines at a time, so that only one block's scratch
columns are in memory at once. polars parses a block in one vectorized pass; msgspec is the
strict gate for the lines polars would be lenient with (it turns `"item_id": 5` into "5") or
would fail on (one malformed line fails a whole `read_ndjson`). Both paths end in the same
polars parse, so a line's verdict never depends on its neighbours, nor on its block.
"""

from __future__ import annotations

import functools
import io
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, BinaryIO, TypeVar

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
FRAME_SCHEMA = {"line_no": pl.Int64, **JSON_SCHEMA, "reason": pl.String, "detail": pl.String}

# Lines that polars would coerce or misread go through the strict gate: an object, array or
# boolean value anywhere (polars turns them into strings), any \u escape (keys can be escaped
# too, and polars turns lone surrogates into NUL). A number where a string belongs is caught
# after parsing (see `_coerced`).
_SUSPECT = r'":\s*[\[{tf]|\\u'

# When a block fails to parse, also the lines that may fail it: an integer field holding
# something polars' Int64 parse refuses, or a line whose first or last non-blank character
# is not a brace. One pattern, so that the text is read once.
_NOT_AN_INT = r'"(?:v|rank)"\s*:\s*(?:[^-\d\sn]|-?\d+[.eE])'
_UNSAFE = "|".join([_SUSPECT, r"^\s*[^\s{]", r"[^\s}]\s*$", _NOT_AN_INT])

# About 90k events. A block's text, its parsed columns and their scratch copies are what
# decoding holds beyond the file's bytes and what it keeps; blocks this small also reuse the
# memory the previous ones freed rather than fault in fresh pages.
BLOCK_BYTES = 16 * 1024 * 1024

# Lines of a block that failed to parse together are retried in groups of this many.
RETRY_LINES = 50_000

Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
T = TypeVar("T")


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
    """One block of lines: a row per non-blank line in `frame` (`line_no` in the file, the
    JSON fields, `reason`, `detail`), by line.

    The raw text of a line is cut from `data` (the block's bytes) only when needed
    (rejects): a column of every line's text would double the memory of a block.
    `line_lengths` are the lines' byte lengths when decoding needed them. `plain` says that
    every line is an ASCII JSON object without escapes, so that a string value can hold no
    white space but spaces.
    """

    frame: pl.DataFrame
    data: bytes
    first_line: int
    total_lines: int
    blank_lines: int
    line_lengths: pl.Series | None = None
    plain: bool = False

    @functools.cached_property
    def _line_ends(self) -> np.ndarray:
        """Offset of each line's end: its line break, or the end of `data`."""
        if self.line_lengths is not None:
            return np.cumsum(self.line_lengths.to_numpy().astype(np.int64) + 1) - 1
        ends = np.flatnonzero(np.frombuffer(self.data, np.uint8) == ord("\n"))
        return ends if ends.size == self.total_lines else np.append(ends, len(self.data))

    def raw_lines(self, line_nos: list[int]) -> list[str]:
        """The text of the given lines (numbered in the file), without the line break."""
        if not line_nos:
            return []
        ends = self._line_ends
        out = []
        for line_no in line_nos:
            index = line_no - self.first_line
            start = 0 if index == 0 else int(ends[index - 1]) + 1
            line = self.data[start : int(ends[index])]
            out.append(line.decode("utf-8", "replace").removesuffix("\r"))
        return out


def split_lines(data: bytes, first_line: int = 1) -> pl.DataFrame:
    """Number every line (from `first_line`); `utf8` is false where the line is not valid
    UTF-8; `length` is its length in bytes, without the line break.

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
            length = raw.str.len_bytes()
            if b"\r" in data:  # polars drops the \r of a \r\n break: measure from the bytes
                ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
                if ends.size < raw.len():
                    ends = np.append(ends, len(data))
                starts = np.concatenate([[0], ends[:-1] + 1])
                length = pl.Series("raw", ends - starts, dtype=pl.UInt32)
                raw = raw.str.strip_chars_end("\r")
            return pl.DataFrame(
                {
                    "line_no": pl.int_range(
                        first_line, first_line + raw.len(), dtype=pl.Int64, eager=True
                    ),
                    "raw": raw,
                    "utf8": pl.repeat(True, raw.len(), eager=True),
                    "length": length,
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
            "line_no": pl.int_range(
                first_line, first_line + len(lines), dtype=pl.Int64, eager=True
            ),
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


# A string field's value that polars may have made of a JSON number (it starts with a digit,
# a minus or anything below ":"), boolean, object or array, or a `ts` that is not date-like.
# Comparisons, not regular expressions: this runs on every row.
_CANDIDATES = [
    (pl.col(name) < ":")
    | pl.col(name).is_in(["true", "false"])
    | pl.col(name).is_between(pl.lit("["), pl.lit("\\"), closed="left")
    | pl.col(name).is_between(pl.lit("{"), pl.lit("|"), closed="left")
    for name in ID_FIELDS
] + [~pl.col("ts").str.contains(r"^\d{4}-")]
_CANDIDATE = pl.any_horizontal(_CANDIDATES).fill_null(False)

# ... and really was one: the raw line does not hold it as a JSON string (`"field":"value"`).
_COERCED = pl.any_horizontal(
    [
        pl.col(name).is_not_null()
        & ~pl.col("raw").str.contains(pl.format('"{}":"{}"', pl.lit(name), name), literal=True)
        for name in STRING_FIELDS
    ]
)


def _coerced(parsed: pl.DataFrame, raw: pl.Series) -> pl.Series:
    """A mask of the rows where polars filled a string field from another JSON type; `raw`
    is the text of each row's line, read only for the candidates."""
    candidates = parsed.select(_CANDIDATE.arg_true()).to_series()
    mask = np.zeros(parsed.height, dtype=bool)
    if candidates.len():
        suspects = parsed.select(STRING_FIELDS)[candidates].with_columns(raw.gather(candidates))
        mask[candidates.filter(suspects.select(_COERCED).to_series()).to_numpy()] = True
    return pl.Series("coerced", mask)


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


def map_blocks(
    source: bytes | BinaryIO,
    check: Callable[[DecodedLines], T],
    *,
    block_bytes: int = BLOCK_BYTES,
    workers: int = 3,
) -> list[T]:
    """`iter_blocks` as a list: every block's result, in block order."""
    return list(iter_blocks(source, check, block_bytes=block_bytes, workers=workers))


def iter_blocks(
    source: bytes | BinaryIO,
    check: Callable[[DecodedLines], T],
    *,
    block_bytes: int = BLOCK_BYTES,
    workers: int = 3,
) -> Iterator[T]:
    """Decode JSON Lines (bytes, or a binary stream read as it goes) a block of lines (about
    `block_bytes`) at a time and map each block through `check`, `workers` blocks at once;
    the results come in block order, as they are ready.

    A block and its scratch columns live only until `check` returns, so what stays in memory
    is what `check` keeps and the caller holds on to. polars releases the GIL: while one
    block is in its Python steps (the gate, cutting raw text) and this thread reads the next
    block, the others keep the cores busy.
    """
    if block_bytes < 1:
        raise ValueError(f"block_bytes must be >= 1, got {block_bytes}")
    pending: deque[Future[T]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        try:
            first_line = 1
            for block in _blocks(source, block_bytes):
                lines = block.count(b"\n") + (not block.endswith(b"\n"))
                pending.append(pool.submit(_decode_and_check, block, first_line, lines, check))
                while len(pending) > workers:  # bounds the blocks read but not yet decoded
                    yield pending.popleft().result()
                first_line += lines
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _blocks(source: bytes | BinaryIO, block_bytes: int) -> Iterator[bytes]:
    """The source in blocks of whole lines: about `block_bytes`, then up to a line break."""
    if isinstance(source, bytes):
        start = 0
        while start < len(source):
            cut = source.find(b"\n", start + block_bytes - 1)
            end = len(source) if cut < 0 else cut + 1
            yield source[start:end]
            start = end
        return
    while block := source.read(block_bytes):
        yield block if block.endswith(b"\n") else block + source.readline()


def _decode_and_check(
    data: bytes, first_line: int, lines: int, check: Callable[[DecodedLines], T]
) -> T:
    return check(decode_lines(data, first_line, lines))


def decode_lines(data: bytes, first_line: int = 1, lines: int | None = None) -> DecodedLines:
    """Parse JSON Lines bytes whose first line is `first_line` of its file (and which hold
    `lines` lines, when counted already); blank lines are counted, every other line gets a
    row."""
    if lines is None:
        lines = data.count(b"\n") + (bool(data) and not data.endswith(b"\n"))
    try:
        # One parse of the bytes as they are; its rows are the non-blank lines in order.
        whole = pl.read_ndjson(data, schema=JSON_SCHEMA) if data else None
    except pl.exceptions.PolarsError:
        whole = None
    plain = data.isascii() and b"\\" not in data
    if plain and whole is not None and whole.height == lines and _compact(data, whole):
        fields = whole.with_columns(
            line_no=pl.int_range(first_line, first_line + lines, dtype=pl.Int64)
        )
        block = DecodedLines(_assemble([fields]), data, first_line, lines, 0, plain=True)
    else:
        block = _decode_mixed(data, first_line, whole, plain)
    if block.total_lines != lines:
        raise RuntimeError(f"decoded {block.total_lines} of {lines} lines from line {first_line}")
    return block


def _compact(data: bytes, fields: pl.DataFrame) -> bool:
    """Whether every line is exactly its fields' parse written compactly: no other key, no
    repeated key, no null, no white space, no escape, every string field a JSON string.

    `fields` has a row per line. A line is never shorter than the compact form of its parse
    unless polars made a string field of another JSON type (all of which `_CANDIDATES`
    flags), so equal lengths in total mean that every line is compact: such lines need
    neither the gate (no object, array or boolean anywhere) nor their text (no coerced
    value).
    """
    if any(fields.select([candidate.any() for candidate in _CANDIDATES]).row(0)):
        return False
    written = [  # each present field is `"name":value,` (a string quoted, an integer as is)
        (pl.col(name).str.len_bytes().sum() + pl.col(name).count() * (len(name) + 6)).alias(name)
        if name in STRING_FIELDS
        else (
            pl.col(name).cast(pl.String).str.len_bytes().sum()
            + pl.col(name).count() * (len(name) + 4)
        ).alias(name)
        for name in JSON_SCHEMA
    ]
    bare = pl.all_horizontal([pl.col(name).is_null() for name in JSON_SCHEMA]).sum()
    *text, bare = fields.select(*written, bare.alias("bare")).row(0)
    # a line is `{...}`, without a comma after its last field (`{}` has none)
    expected = sum(text) + 2 * fields.height - (fields.height - bare)
    return expected + data.count(b"\n") == len(data)


def _decode_mixed(
    data: bytes, first_line: int, whole: pl.DataFrame | None, plain: bool
) -> DecodedLines:
    """Any lines: those that may not parse alone, or that polars may misread, are found on
    their text and judged by the gate."""
    lines = split_lines(data, first_line)
    lengths = lines["length"]
    lines = lines.drop("length")
    total = lines.height
    nonblank = ~pl.col("utf8") | pl.col("raw").str.contains(r"\S")
    if lines.select(nonblank.all()).item() is False:
        lines = lines.filter(nonblank)
    blank = total - lines.height
    whole_ok = whole is not None and whole.height == lines.height
    # when some line is not an object, find those too before parsing block by block
    suspect = ~pl.col("utf8") | pl.col("raw").str.contains(_SUSPECT if whole_ok else _UNSAFE)
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
        for start in range(0, clean.height, RETRY_LINES):
            block = clean.slice(start, RETRY_LINES)
            try:
                blocks.append((block, _read_json(block["raw"])))
            except pl.exceptions.PolarsError:
                gated.append(block)
    del lines
    for block, fields in blocks:
        parsed = pl.concat([block.select("line_no", "raw", "utf8"), fields], how="horizontal")
        coerced = _coerced(parsed, parsed["raw"])
        parts.append(parsed.filter(~coerced).drop("utf8", "raw"))
        gated.append(parsed.filter(coerced).select("line_no", "raw", "utf8"))
    parts += _gate(gated)
    return DecodedLines(_assemble(parts), data, first_line, total, blank, lengths, plain)


def _gate(blocks: list[pl.DataFrame]) -> list[pl.DataFrame]:
    """Judge lines (`line_no`, `raw`, `utf8`) one by one with msgspec; those that pass are
    parsed by polars, the others are rows with their reason."""
    parts = []
    for block in blocks:
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
    return parts


def _assemble(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """The rows of the parts in `FRAME_SCHEMA`, by line."""
    parts = [p for p in parts if p.height] or parts[:1]
    if not parts:
        return pl.DataFrame(schema=FRAME_SCHEMA)
    frame = pl.concat(parts, how="diagonal_relaxed") if len(parts) > 1 else parts[0]
    frame = frame.select(
        [
            pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
            for name, dtype in FRAME_SCHEMA.items()
        ]
    )
    return frame.sort("line_no") if len(parts) > 1 else frame
