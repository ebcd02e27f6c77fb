"""What the UI shows first on a materialization: small previews as Markdown tables.

Dagster renders `MetadataValue.md` on the asset page; a preview is a handful of rows of what
was written (a day's most exposed items, an artifact's first rows with their first entries),
so a user sees what the numbers beside it mean without opening the files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PREVIEW_ROWS = 5
PREVIEW_ENTRIES = 5
KEYS = ("item_id", "user_id")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; `|` in a value is escaped."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _entries(entries: Sequence[Mapping[str, Any]], limit: int) -> str:
    """`item-1 (24), item-2 (12), … (+n)`: the first entries of a nested list, with their value."""
    shown = []
    for entry in entries[:limit]:
        value = next((v for k, v in entry.items() if k not in KEYS), None)
        key = next((entry[k] for k in KEYS if k in entry), "")
        shown.append(f"{key} ({value})" if value is not None else str(key))
    more = len(entries) - limit
    return ", ".join(shown) + (f", … (+{more})" if more > 0 else "")


def rows_preview(
    rows: Sequence[Mapping[str, Any]],
    limit: int = PREVIEW_ROWS,
    entries: int = PREVIEW_ENTRIES,
) -> str:
    """The first `limit` rows of an artifact list as a table: the row's id, its scalar fields
    (lists of strings joined), and each nested list as its first `entries` entries."""
    head = list(rows[:limit]) if not hasattr(rows, "head") else rows.head(limit)
    if not head:
        return "(no rows)"
    columns = list(head[0])
    columns.sort(key=lambda name: name not in KEYS)  # the id first, then as written (stable)
    table = []
    for row in head:
        cells = []
        for name in columns:
            value = row.get(name)
            if isinstance(value, list) and value and isinstance(value[0], Mapping):
                cells.append(_entries(value, entries))
            elif isinstance(value, list):
                cells.append(", ".join(map(str, value)))
            else:
                cells.append(value)
        table.append(cells)
    return markdown_table(columns, table) + f"\n\n{len(rows):,} rows in all."
