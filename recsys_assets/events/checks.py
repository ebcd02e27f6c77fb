"""Guards on a canonical partition (SPEC §6): each names its rule and its numbers."""

from __future__ import annotations

from dataclasses import dataclass

from recsys_assets.config import Limits

CANONICAL_CHECKS = {
    "source_present": "the raw source has input for the partition, unless "
    "limits.allow_missing_source",
    "bad_row_ratio": "rejects / lines attributed to the partition <= limits.max_bad_row_ratio",
    "event_volume": "events within [limits.min_events_per_run, limits.max_events_per_run]",
    "cardinality": "distinct sessions, items and users within their limits",
    "events_in_window": "every event lies inside the partition's UTC day",
}


@dataclass(frozen=True)
class GuardResult:
    name: str
    passed: bool
    message: str
    metadata: dict[str, float | int | str]


def canonical_guards(marker: dict, limits: Limits, outside: int) -> list[GuardResult]:
    """Evaluate every canonical guard from a partition's marker (its counts and source) and
    the number of its events outside the day."""
    counts = marker["counts"]
    missing = bool(marker.get("source_missing"))
    if not missing:
        present = f"source {marker['source']} holds input for the partition"
    elif limits.allow_missing_source:
        present = (
            f"source {marker['source']} is missing: accepted as a day without events "
            "(limits.allow_missing_source)"
        )
    else:
        present = (
            f"source {marker['source']} is missing: no input for the partition (a wrong "
            "raw_source, or the day is not delivered yet); limits.allow_missing_source: true "
            "accepts such days as empty"
        )
    attributed = counts["attributed_lines"]
    rejects = counts["rejects"]
    ratio = rejects / attributed if attributed else 0.0
    events = counts["rows"]
    results = [
        GuardResult(
            "source_present",
            not missing or limits.allow_missing_source,
            present,
            {"source_missing": missing, "source": str(marker["source"])},
        ),
        GuardResult(
            "bad_row_ratio",
            ratio <= limits.max_bad_row_ratio,
            f"bad-row ratio {ratio:.6f} ({rejects} rejects / {attributed} lines) "
            f"vs max_bad_row_ratio {limits.max_bad_row_ratio}",
            {"ratio": round(ratio, 6), "rejects": rejects, "attributed_lines": attributed},
        ),
        GuardResult(
            "event_volume",
            limits.min_events_per_run <= events <= limits.max_events_per_run,
            f"{events} events vs [min_events_per_run {limits.min_events_per_run}, "
            f"max_events_per_run {limits.max_events_per_run}]",
            {"events": events},
        ),
    ]
    caps = [
        ("distinct_sessions", "max_sessions_per_run", limits.max_sessions_per_run),
        ("distinct_items", "max_distinct_items_per_run", limits.max_distinct_items_per_run),
        ("distinct_users", "max_users_per_run", limits.max_users_per_run),
    ]
    over = [f"{counts[c]} {c} > {key} {cap}" for c, key, cap in caps if counts[c] > cap]
    results.append(
        GuardResult(
            "cardinality",
            not over,
            "; ".join(over) or ", ".join(f"{counts[c]} {c} <= {key} {cap}" for c, key, cap in caps),
            {c: counts[c] for c, _, _ in caps},
        )
    )
    results.append(
        GuardResult(
            "events_in_window",
            outside == 0,
            f"{outside} events outside the partition's day",
            {"outside": outside},
        )
    )
    return results
