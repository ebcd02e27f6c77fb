"""The `no_collapse` guard: an artifact far smaller than the version the online service
reads now is not published.

A bug, a config slip or a tenant's bad day can give a well-formed artifact with a fraction
of the rows of yesterday's; `valid` passes it, and the online service would lose most of
its recommendations at once. The guard compares the rows of each list of the staged blob
(items, anchors, users, transitions) with the live version's and fails below
`publish.min_row_ratio` of them, or at zero when live has any. An operator who knows the
drop is real forces it for one run (`--allow-collapse`), and that decision is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

# The lists of each type whose rows are counted (SPEC §4 payloads).
ROW_LISTS: dict[str, tuple[str, ...]] = {
    "popularity": ("items",),
    "cooc": ("neighbors",),
    "implicit": ("users",),
    "content_sim": ("items",),
    "session_seq": ("users", "transitions"),
}


class _Lists(msgspec.Struct):
    """Only the top-level lists; their rows are left undecoded (`Raw`), so counting a
    200 MB blob costs one native scan and a small list, not a parsed document."""

    items: list[msgspec.Raw] | None = None
    neighbors: list[msgspec.Raw] | None = None
    users: list[msgspec.Raw] | None = None
    transitions: list[msgspec.Raw] | None = None


_DECODER = msgspec.json.Decoder(_Lists)


def row_counts(artifact_type: str, blob: Any) -> dict[str, int]:
    """Rows of each counted list of an artifact blob (bytes or a buffer)."""
    lists = _DECODER.decode(blob)
    return {name: len(getattr(lists, name) or ()) for name in ROW_LISTS[artifact_type]}


@dataclass(frozen=True)
class CollapseVerdict:
    passed: bool
    message: str
    collapsed: list[str]  # the lists below the ratio


def no_collapse(
    artifact_type: str,
    rows: dict[str, int],
    live_rows: dict[str, int] | None,
    live_version: str | None,
    min_row_ratio: float,
) -> CollapseVerdict:
    """Whether every list keeps at least `min_row_ratio` of the live version's rows, and
    is not empty where live's is not. Nothing live yet: nothing to collapse from."""
    if live_rows is None or live_version is None:
        counts = ", ".join(f"{n} {name}" for name, n in rows.items())
        return CollapseVerdict(True, f"{artifact_type}: nothing live yet ({counts})", [])
    collapsed, parts = [], []
    for name, count in rows.items():
        live = live_rows.get(name, 0)
        ratio = count / live if live else 1.0
        parts.append(f"{count} {name} vs {live} live ({ratio:.3f})")
        if live and (count == 0 or ratio < min_row_ratio):
            collapsed.append(name)
    detail = "; ".join(parts)
    where = f"live version {live_version}"
    if collapsed:
        return CollapseVerdict(
            False,
            f"{artifact_type} collapsed: {detail} against {where}, below "
            f"publish.min_row_ratio {min_row_ratio}",
            collapsed,
        )
    return CollapseVerdict(True, f"{artifact_type}: {detail} against {where}", [])
