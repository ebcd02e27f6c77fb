"""Regenerates testdata/events/sample: a few tenants, surfaces, days and users, with one bad
line of every kind per file. Deterministic; run `python testdata/make_sample.py`."""

import datetime as dt
import json
import random
from pathlib import Path

ROOT = Path(__file__).parent / "events" / "sample"
TARGETS = [("demo", "home"), ("demo", "pdp"), ("acme", "home")]
DAYS = [dt.date(2026, 1, 1) + dt.timedelta(days=i) for i in range(3)]
ITEMS = [f"item-{i:03d}" for i in range(40)]
USERS = [f"user-{i:02d}" for i in range(12)]


def events(rng: random.Random, tenant: str, surface: str, day: dt.date) -> list[str]:
    lines = []
    for s in range(25):
        user = rng.choice(USERS) if rng.random() > 0.3 else None
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) + dt.timedelta(
            seconds=rng.randrange(0, 86_000)
        )
        for position in range(rng.randint(2, 9)):
            item = ITEMS[
                min(int(rng.paretovariate(1.2)) - 1, len(ITEMS) - 1)
                if rng.random() < 0.6
                else rng.randrange(len(ITEMS))
            ]
            event = {
                "v": 1,
                "ts": (start + dt.timedelta(seconds=position * 7)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "tenant": tenant,
                "surface": surface,
                "session_id": f"{tenant}-{surface}-{day:%m%d}-s{s:02d}",
                "item_id": item,
                "request_id": f"req-{day:%m%d}-{s:02d}",
                "rank": position,
            }
            if user:
                event["user_id"] = user
            lines.append(json.dumps(event, separators=(",", ":")))
    return lines


def bad_lines(tenant: str, surface: str, day: dt.date) -> list[str]:
    ok = {
        "v": 1,
        "ts": f"{day}T12:00:00Z",
        "tenant": tenant,
        "surface": surface,
        "session_id": "bad",
        "item_id": "X",
    }

    def variant(**changes: object) -> str:
        event = {**ok, **changes}
        return json.dumps({k: v for k, v in event.items() if v is not ...}, separators=(",", ":"))

    return [
        '{"v":1,"ts":"' + f"{day}" + 'T12:00:00Z","tenant":',  # malformed (truncated)
        '["not", "an", "object"]',
        variant(v=2),
        variant(v="1"),
        variant(item_id=...),
        variant(session_id="   "),
        variant(item_id=42),
        variant(rank=-1),
        variant(ts="yesterday"),
        variant(ts=f"{day - dt.timedelta(days=1)}T23:59:59Z"),
        variant(tenant="other"),
        "",
    ]


def main() -> None:
    rng = random.Random(20260101)
    for tenant, surface in TARGETS:
        for day in DAYS:
            lines = events(rng, tenant, surface, day)
            lines.append(lines[3])  # an exact duplicate
            lines += bad_lines(tenant, surface, day)
            path = ROOT / tenant / surface / f"exposure.{day}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
