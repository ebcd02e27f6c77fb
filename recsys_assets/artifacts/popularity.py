"""Popularity payload (SPEC §4): exposures per item over the window."""

from __future__ import annotations

from typing import Any

import polars as pl

from recsys_assets.artifacts.ranking import check_cap


def popularity_payload(
    item_counts: pl.DataFrame, *, max_items_per_artifact: int
) -> tuple[dict[str, Any], dict[str, int]]:
    """`{"items": [{"item_id", "count"}]}`, count descending then item_id, capped; and stats.

    `item_counts` is the merged `item_counts` aggregate. Stats: items (distinct items seen),
    items_written, events (exposures in the window).
    """
    check_cap("limits.max_items_per_artifact", max_items_per_artifact)
    top = item_counts.sort(["count", "item_id"], descending=[True, False]).head(
        max_items_per_artifact
    )
    entries = [
        {"item_id": item_id, "count": count}
        for item_id, count in zip(top["item_id"].to_list(), top["count"].to_list(), strict=True)
    ]
    stats = {
        "items": item_counts.height,
        "items_written": len(entries),
        "events": int(item_counts["count"].sum()),
    }
    return {"items": entries}, stats
