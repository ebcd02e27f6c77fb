"""Guards on a canonical partition (SPEC §6): each names its rule and its numbers."""

from __future__ import annotations

from dataclasses import dataclass

from recsys_assets.config import Limits

CANONICAL_CHECKS = {
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


def canonical_guards(counts: dict[str, int], limits: Limits, outside: int) -> list[GuardResult]:
    """Evaluate every canonical guard from a partition's counts."""
    attributed = counts["attributed_lines"]
    rejects = counts["rejects"]
    ratio = rejects / attributed if attributed else 0.0
    events = counts["rows"]
    results = [
        GuardResult(
            "bad_row_ratio",
            ratio <= limits.max_bad_row_ratio,
            f"bad-row ratio {ratio:.6f} ({rejects} rejects / {attributed} lines) "
            f"vs max_bad_row_ratio {limits.max_bad_row_ratio}",
            {"ratio": ratio, "rejects": rejects, "attributed_lines": attributed},
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
