"""Which runbook page of the docs (docs/runbooks/) answers a failing check or step.

Check descriptions and failure messages name the page, so that a user who sees a red check in
the UI or a failed day in the CLI's summary knows where to read what it means and what to do.
"""

from __future__ import annotations

# check or step name -> page under docs/runbooks/
RUNBOOKS = {
    "source_present": "source-present",
    "bad_row_ratio": "bad-row-ratio",
    "event_volume": "event-volume",
    "cardinality": "cardinality",
    "events_in_window": "events-in-window",
    "excluded_event_ratio": "excluded-event-ratio",
    "valid": "valid",
    "no_collapse": "no-collapse",
    "beats_baseline": "beats-baseline",
    "no_regression": "no-regression",
    "fresh": "fresh",
    "publish": "publish",
    "step": "step-failed",
    "database": "database",
    "config": "config-errors",
}


def runbook(name: str) -> str:
    """The page (a path in the repo, as in the docs site) for a check or step name.

    Quality checks are named `<type>_<check>`; they share their check's page.
    """
    for check, page in RUNBOOKS.items():
        if name == check or name.endswith(f"_{check}"):
            return f"docs/runbooks/{page}.md"
    raise KeyError(f"no runbook for {name!r}; add one to RUNBOOKS and docs/runbooks/")


def with_runbook(text: str, name: str) -> str:
    """`text`, then the runbook page that explains it."""
    return f"{text} (runbook: {runbook(name)})"
