"""Item catalog parsing and the content-similarity payload (SPEC §4).

Catalog frame (`CATALOG_SCHEMA`): item_id, tags (as given, trimmed, empty ones dropped),
namespace (null: the row takes the surface at use time), price, created_at (UTC).

Similarity: tags are lower-cased, trimmed, de-duplicated and written sorted ascending; items
without tags are skipped; rows whose namespace is set and differs from the surface are
skipped, and an item listed both with the surface as namespace and without one keeps the
explicit row. Of the remaining items, the first `max_items` by id are kept, and similarity
is computed among the kept items only, so every `similar` id also has a row. Each item is a
TF-IDF vector over its tags (binary term frequency, idf = ln((1 + n) / (1 + df)) + 1, rows
L2-normalised: scikit-learn's TfidfVectorizer and `normalize`); similarity is the cosine
(a dot product), rounded to 6 decimals, kept when strictly above `min_similarity`, ranked by
score descending then id, and the item itself excluded.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import orjson
import polars as pl

from recsys_assets.artifacts.envelope import json_scores, round_scores
from recsys_assets.artifacts.ranking import check_cap, gc_paused, ids_at, top_k_per_row
from recsys_assets.config import RFC3339

_RFC3339 = re.compile(RFC3339)

CATALOG_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String(),
    "tags": pl.List(pl.String()),
    "namespace": pl.String(),
    "price": pl.Float64(),
    "created_at": pl.Datetime("us", "UTC"),
}
# Header names (compared lower-cased and trimmed) and JSONL keys -> catalog field.
CATALOG_ALIASES = {
    "item_id": "item_id",
    "itemid": "item_id",
    "id": "item_id",
    "tags": "tags",
    "tag_list": "tags",
    "price": "price",
    "created_at": "created_at",
    "namespace": "namespace",
    "surface": "namespace",
}
_TAG_SEPARATORS = re.compile(r"[,;|]")
# Candidate products (sum of tag document frequencies) per similarity block: bounds memory.
_BLOCK_PRODUCTS = 4_000_000


def parse_catalog(
    data: bytes, fmt: Literal["csv", "jsonl"]
) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Parse a catalog file into a frame sorted by (item_id, namespace) and its rejects.

    A reject is `{"line", "reason", "raw"}`, `line` counting from 1. A catalog whose header
    cannot be used (CSV without an item id column, ambiguous aliases) or that is not UTF-8
    raises ValueError: no row could be read from it.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"catalog is not UTF-8: {exc}") from exc
    if fmt == "csv":
        rows: Iterator[tuple[int, str, dict[str, Any] | str]] = _csv_rows(text)
    elif fmt == "jsonl":
        rows = _jsonl_rows(text)
    else:
        raise ValueError(f"catalog format must be 'csv' or 'jsonl', got {fmt!r}")

    records: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    first_line: dict[tuple[str | None, str], int] = {}
    for line, raw, fields in rows:
        record = _record(fields) if isinstance(fields, dict) else fields
        if isinstance(record, str):
            rejects.append({"line": line, "reason": record, "raw": raw})
            continue
        key = (record["namespace"], record["item_id"])
        if key in first_line:
            where = f"namespace {key[0]!r}" if key[0] is not None else "no namespace"
            rejects.append(
                {
                    "line": line,
                    "reason": f"duplicate item_id {key[1]!r} with {where}"
                    f" (first on line {first_line[key]})",
                    "raw": raw,
                }
            )
            continue
        first_line[key] = line
        records.append(record)
    frame = pl.DataFrame(records, schema=CATALOG_SCHEMA)
    return frame.sort(["item_id", "namespace"], nulls_last=False), rejects


def content_sim_payload(
    catalog: pl.DataFrame,
    *,
    surface: str,
    max_neighbors_per_item: int = 50,
    min_similarity: float = 0.1,
    max_items: int = 100_000,
) -> tuple[dict[str, Any], dict[str, int]]:
    """`{"items": [{"item_id", "tags", "similar": [{"item_id", "score"}]}]}` and stats.

    Stats: catalog_rows, other_namespace_rows, items_without_tags, items (tagged items of the
    surface), items_written, tags (distinct tags of the written items), similar_written.
    """
    check_cap("limits.max_neighbors_per_item", max_neighbors_per_item)
    check_cap("artifacts.content_sim.max_items", max_items)
    if isinstance(min_similarity, bool) or not isinstance(min_similarity, int | float):
        raise ValueError(
            f"artifacts.content_sim.min_similarity must be a number, got {min_similarity!r}"
        )
    if not math.isfinite(min_similarity) or min_similarity < 0:
        raise ValueError(
            f"artifacts.content_sim.min_similarity must be a number >= 0, got {min_similarity!r}"
        )
    for name in ("item_id", "tags", "namespace"):
        if catalog.schema.get(name) != CATALOG_SCHEMA[name]:
            raise ValueError(
                f"catalog needs column {name} of type {CATALOG_SCHEMA[name]},"
                f" got {catalog.schema.get(name)}"
            )

    in_surface = catalog.filter(pl.col("namespace").is_null() | (pl.col("namespace") == surface))
    chosen = in_surface.sort(["item_id", pl.col("namespace").is_null()]).unique(
        "item_id", keep="first", maintain_order=True
    )
    normalized = chosen.select(
        "item_id",
        tags=pl.col("tags")
        .list.eval(pl.element().str.strip_chars().str.to_lowercase())
        .list.eval(pl.element().filter(pl.element() != ""))
        .list.unique()
        .list.sort(),
    )
    tagged = normalized.filter(pl.col("tags").list.len() > 0)
    kept = tagged.head(max_items)

    rows, columns, scores, n_tags = _similar(kept, max_neighbors_per_item, float(min_similarity))
    bounds = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=kept.height)))).tolist()
    similar_ids = ids_at(kept["item_id"], columns)
    with gc_paused():
        entries = [
            {"item_id": item_id, "score": score}
            for item_id, score in zip(similar_ids, json_scores(scores), strict=True)
        ]
        items = [
            {
                "item_id": item_id,
                "tags": tags,
                "similar": entries[bounds[index] : bounds[index + 1]],
            }
            for index, (item_id, tags) in enumerate(
                zip(kept["item_id"].to_list(), kept["tags"].to_list(), strict=True)
            )
        ]
    return {"items": items}, {
        "catalog_rows": catalog.height,
        "other_namespace_rows": catalog.height - in_surface.height,
        "items_without_tags": normalized.height - tagged.height,
        "items": tagged.height,
        "items_written": len(items),
        "tags": n_tags,
        "similar_written": len(entries),
    }


def _similar(
    items: pl.DataFrame, k: int, min_similarity: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(row, column, rounded score) of each item's top-k similar items, ordered by row."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    n_items = items.height
    if n_items < 2:
        vocabulary = items["tags"].explode().drop_nulls().n_unique()
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), vocabulary
    # Smooth IDF (log((1 + n) / (1 + df)) + 1) over binary tag counts (the tags are unique
    # per item), then unit rows. The vectorizer's own l2 step differs from `normalize` in
    # the last bit of some weights, which could move a rounded score: normalize is the one
    # the versions were made with.
    vectorizer = TfidfVectorizer(analyzer=_as_tokens, lowercase=False, norm=None)
    vectors = normalize(vectorizer.fit_transform(items["tags"].to_list()), norm="l2").tocsr()
    vectors.sort_indices()
    row = np.repeat(np.arange(n_items), np.diff(vectors.indptr))
    tag = vectors.indices
    frequency = np.bincount(tag, minlength=vectors.shape[1])
    transposed = vectors.T.tocsr()

    # Blocks of rows whose candidate products (sum of their tags' frequencies) stay bounded.
    products = np.cumsum(np.bincount(row, weights=frequency[tag], minlength=n_items))
    cuts = np.searchsorted(products, np.arange(_BLOCK_PRODUCTS, products[-1], _BLOCK_PRODUCTS))
    bounds = np.unique(np.concatenate(([0], cuts, [n_items]))).tolist()

    def block(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        product = vectors[lo:hi] @ transposed
        # Most products are far below the threshold: drop them before any per-entry work.
        # Rounding can lift a score by at most half a unit of the 6th decimal.
        near = np.flatnonzero(product.data > min_similarity - 1e-6)
        rows = np.searchsorted(product.indptr, near, side="right") - 1 + lo
        columns = product.indices[near].astype(np.int64)
        scores = round_scores(product.data[near])
        keep = (columns != rows) & (scores > min_similarity)
        rows, columns, scores = rows[keep], columns[keep], scores[keep]
        top = top_k_per_row(rows, scores, columns, k)
        return rows[top], columns[top], scores[top]

    workers = max(1, min(pl.thread_pool_size(), len(bounds) - 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(block, bounds[:-1], bounds[1:]))
    rows, columns, scores = (np.concatenate(column) for column in zip(*parts, strict=True))
    return rows, columns, scores, len(vectorizer.vocabulary_)


def _as_tokens(tags: list[str]) -> list[str]:
    """The vectorizer's analyzer: an item's tags are its terms, as they are."""
    return tags


def _csv_rows(text: str) -> Iterator[tuple[int, str, dict[str, Any] | str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str | None] | None = None
    line = 0
    for values in reader:
        start, line = line + 1, reader.line_num
        if not any(value.strip() for value in values):
            continue
        raw = _csv_line(values)
        if header is None:
            header = _header(values)
            continue
        if len(values) != len(header):
            yield start, raw, f"expected {len(header)} fields as in the header, got {len(values)}"
            continue
        yield (
            start,
            raw,
            {name: value for name, value in zip(header, values, strict=True) if name is not None},
        )
    if header is None:
        raise ValueError("catalog CSV has no header row")


def _header(names: list[str]) -> list[str | None]:
    fields: list[str | None] = [CATALOG_ALIASES.get(name.strip().lower()) for name in names]
    seen: dict[str, str] = {}
    for name, field in zip(names, fields, strict=True):
        if field is None:
            continue
        if field in seen:
            raise ValueError(
                f"catalog header columns {seen[field]!r} and {name!r} both give {field}; keep one"
            )
        seen[field] = name
    if "item_id" not in seen:
        raise ValueError(f"catalog header {names} has no item id column (item_id, itemid or id)")
    return fields


def _csv_line(values: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(values)
    return out.getvalue()


def _jsonl_rows(text: str) -> Iterator[tuple[int, str, dict[str, Any] | str]]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            yield line, raw, f"not valid JSON: {exc}"
            continue
        if not isinstance(value, dict):
            yield line, raw, f"expected a JSON object, got {type(value).__name__}"
            continue
        fields: dict[str, Any] = {}
        problem = None
        for key, item in value.items():
            field = CATALOG_ALIASES.get(key.strip().lower())
            if field is None:
                continue
            if field in fields:
                problem = f"two keys give {field}; keep one"
                break
            fields[field] = item
        yield line, raw, problem if problem else fields


def _record(fields: dict[str, Any]) -> dict[str, Any] | str:
    """A catalog record from one row's fields, or the reason it is rejected."""
    item_id = fields.get("item_id")
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if not isinstance(item_id, str) or not item_id.strip():
        return f"item_id must be a non-empty string, got {item_id!r}"

    tags = fields.get("tags")
    if tags is None:
        tags = []
    elif isinstance(tags, str):
        tags = _TAG_SEPARATORS.split(tags)
    elif not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        return f"tags must be a list of strings or a separated string, got {tags!r}"

    price = fields.get("price")
    if isinstance(price, str):
        price = price.strip() or None
    if price is not None:
        try:
            if isinstance(price, bool):
                raise ValueError
            price = float(price)
        except (TypeError, ValueError):
            return f"price must be a number, got {fields.get('price')!r}"
        if not math.isfinite(price):
            return f"price must be a finite number, got {fields.get('price')!r}"

    created_at = fields.get("created_at")
    if isinstance(created_at, str):
        created_at = created_at.strip() or None
    if created_at is not None:
        parsed = _timestamp(created_at)
        if parsed is None:
            return f"created_at must be an RFC 3339 timestamp, got {created_at!r}"
        created_at = parsed

    namespace = fields.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        return f"namespace must be a string, got {namespace!r}"
    namespace = (namespace or "").strip() or None

    return {
        "item_id": item_id.strip(),
        "tags": [tag.strip() for tag in tags if tag.strip()],
        "namespace": namespace,
        "price": price,
        "created_at": created_at,
    }


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str) or not _RFC3339.match(value):
        return None
    try:
        parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC)
