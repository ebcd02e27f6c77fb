"""The UI as a user sees it: `dagster dev` on the sample config, driven by headless Chromium.

One partition of `canonical_exposures` is materialized from the asset page (Materialize… →
partition dialog → Launch 1 run); the test then reads, in the page text, the run's success,
the partition's metadata (its counts match the files written), its guards' results, and the
manifest the publish asset shows (one partition is published with the CLI beforehand).

Everything lives in a temp folder: the Dagster instance (`DAGSTER_HOME` with the repo's
dagster.yaml) and the outputs (a copy of configs/env/sample.json whose `out_dir` points
there; its other relative paths still resolve against the repo).

Debian's `chromium` is the browser (`make chromium` installs it; Playwright cannot download
its own here); without it the test skips. `RECSYS_SCREENSHOTS=1` also writes the pages'
screenshots into docs/img/ for the docs site.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import polars as pl
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from recsys_assets.events.checks import CANONICAL_CHECKS
from recsys_assets_tests.conftest import REPO

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not on the PATH (`make chromium` installs it with apt-get)",
)

VENV_BIN = Path(sys.executable).parent
SCREENSHOTS = os.environ.get("RECSYS_SCREENSHOTS") == "1"
IMG = REPO / "docs/img"
PUBLISHED_DAY = "2026-01-01"  # demo/home, built and published with the CLI before the UI starts
UI_PARTITION = ("2026-01-02", "demo", "home")  # materialized from the UI
UI_KEY = f"{UI_PARTITION[0]}|{UI_PARTITION[1]}__{UI_PARTITION[2]}"
# The first page load of a fresh server, and a run on a 2-core machine, can take a while.
TIMEOUT_MS = 90_000


@dataclass(frozen=True)
class Ui:
    url: str
    out_dir: Path
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


LOCATIONS = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"


def wait_for_server(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 180):
    """Until the webserver answers and the code location is loaded."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {process.returncode}:\n{log_tail(log)}")
        try:
            entries = graphql(url, LOCATIONS)["data"]["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                return
        except (urllib.error.URLError, OSError, KeyError, TypeError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"dagster dev did not load in {timeout_s:.0f}s:\n{log_tail(log)}")
        time.sleep(0.5)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (dagster dev stops its webserver, daemon and code
    servers), SIGKILL to whatever is left after a grace period."""
    pgid = process.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ui]:
    root = tmp_path_factory.mktemp("browser")
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    config = json.loads((REPO / "configs/env/sample.json").read_text())
    config["out_dir"] = str(root / ".out/sample")  # what the UI shows: the repo's layout
    config_path = root / "sample.json"
    config_path.write_text(json.dumps(config, indent=2))
    env = dict(os.environ)
    env.pop("RECSYS_EXECUTOR", None)
    env |= {
        "DAGSTER_HOME": str(home),
        "RECSYS_CONFIG": str(config_path),
        "OPENBLAS_NUM_THREADS": "1",
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    }
    # A published manifest for the publish page: the whole graph of one partition, by the CLI.
    cli = [str(VENV_BIN / "recsys-assets"), "run", "--config", str(config_path)]
    cli += ["--tenant", "demo", "--surface", "home", "--start", PUBLISHED_DAY]
    done = subprocess.run(cli, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    port = free_port()
    log = root / "dagster-dev.log"
    # Started in the background from a non-interactive shell, dagster dev inherits ignored
    # SIGINT/SIGTERM; `env --default-signal` restores them so that stopping it works.
    args = ["env", "--default-signal=INT,TERM", str(VENV_BIN / "dagster"), "dev"]
    args += ["-m", "recsys_assets", "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            args, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_server(url, process, log)
        yield Ui(url=url, out_dir=root / ".out/sample", log=log)
    finally:
        stop_group(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    # Dagster's "Join the Dagster community" dialog would cover the first page.
    context.add_init_script("window.localStorage.setItem('communityNux', '1')")
    context.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page: Page, name: str) -> None:
    """docs/img/<name>, only with RECSYS_SCREENSHOTS=1 (the suite does not rewrite them)."""
    if not SCREENSHOTS:
        return
    expect(page.get_by_text("Loading", exact=False)).to_have_count(0, timeout=20_000)
    page.wait_for_timeout(800)  # the last layout and fade-ins
    IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMG / name))


def body_text(page: Page) -> str:
    return page.locator("body").inner_text()


def metadata_value(text: str, key: str) -> str:
    """The value beside a metadata key in a table's text (the key on its own line)."""
    match = re.search(
        rf"(?m)^{re.escape(key)}\s*\n\s*(?:[^\n]*\d{{1,2}}:\d{{2}} [AP]M\s*\n\s*)?(\S[^\n]*)", text
    )
    assert match, f"no metadata {key!r} on the page:\n{text[:3000]}"
    return match.group(1).strip()


def test_asset_graph_shows_every_group_and_asset(ui: Ui, page: Page):
    page.set_viewport_size({"width": 1280, "height": 1500})  # tall enough to fit it whole
    page.goto(f"{ui.url}/asset-groups")
    expect(page.get_by_role("button", name=re.compile(r"Materialize all"))).to_be_visible()
    # The graph opens with its groups collapsed: expand them (and hide Dagster's navigation
    # for room), then reload so that it fits the page.
    page.get_by_role("button", name="Hide navigation").click()
    page.get_by_role("button", name="settings", exact=True).last.click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.reload()
    for name in ("artifact_quality", "content_sim", "cooc", "implicit", "popularity"):
        expect(page.get_by_text(name, exact=True).first).to_be_visible()
    text = body_text(page)
    for group in ("events", "aggregates", "artifacts", "quality", "publish", "signals"):
        assert re.search(rf"(?m)^{group}$", text), f"group {group} not on the graph"
    for asset in ("session_seq", "daily_aggregates", "manifest_freshness", "publish"):
        assert asset in text, f"asset {asset} not on the graph"
    screenshot(page, "asset-graph.png")


def test_materialize_one_canonical_partition_from_the_ui(ui: Ui, page: Page):
    day, tenant, surface = UI_PARTITION
    page.goto(f"{ui.url}/assets/canonical_exposures")
    # Its name is the icon's label and the text: "materialization Materialize…".
    page.get_by_role("button", name=re.compile(r"\bMaterialize\b")).first.click()
    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
    expect(dialog).to_be_visible()

    # The partition dialog: one day in the date dimension, one tenant/surface in the other.
    dates = dialog.get_by_placeholder(re.compile(r"^ex: "))
    dates.fill(day)
    dates.press("Enter")
    dialog.get_by_text("Select a partition").click()
    page.get_by_role("menuitem", name=f"{tenant}__{surface}").click()
    dialog.get_by_text("Launch runs to materialize").click()  # closes the tenant_surface menu
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    dialog.get_by_role("button", name="Launch 1 run").click()

    # The toast links to the run; its page says how it ended.
    view = page.locator("a[href*='/runs/']", has_text="View")
    expect(view).to_be_visible()
    run_id = view.get_attribute("href").rsplit("/runs/", 1)[1].split("?")[0]
    view.click()
    ended = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
    expect(ended).to_be_visible(timeout=180_000)
    assert ended.inner_text() == "Success", f"run {run_id}:\n{body_text(page)[:4000]}"
    expect(page.get_by_text(UI_KEY).first).to_be_visible()

    # The partition's page: materialized by that run, with the counts of what it wrote.
    canonical = ui.out_dir / "canonical" / tenant / surface
    rows = pl.read_parquet(canonical / "exposures" / f"{day}.parquet").height
    rejects = len((canonical / "rejects" / f"{day}.jsonl").read_bytes().splitlines())
    page.goto(f"{ui.url}/assets/canonical_exposures?view=partitions&partition={quote(UI_KEY)}")
    expect(page.get_by_text(run_id[:8]).first).to_be_visible()
    expect(page.get_by_text("rejects_path", exact=True).first).to_be_visible()
    text = body_text(page)
    assert UI_KEY in text and "Materialized" in text
    assert metadata_value(text, "rows") == f"{rows:,}", text[:3000]
    assert metadata_value(text, "rejects") == f"{rejects:,}", text[:3000]
    assert str(canonical / "exposures" / f"{day}.parquet") in text
    screenshot(page, "canonical-partition.png")

    # The guards: every one succeeded; bad_row_ratio's latest result is this partition's.
    page.goto(f"{ui.url}/assets/canonical_exposures?view=checks")
    expect(page.get_by_text(f"Checks ({len(CANONICAL_CHECKS)})")).to_be_visible()
    page.get_by_text("bad_row_ratio", exact=True).first.click()
    expect(page.get_by_text("Passed", exact=True).first).to_be_visible()
    expect(page.get_by_text(UI_KEY).first).to_be_visible()
    text = body_text(page)
    for name in CANONICAL_CHECKS:
        assert re.search(rf"(?m)^{name}\n(?:{name}\n)?Succeeded$", text), f"{name}:\n{text}"
    assert re.search(rf"\({rejects} rejects / \d+ lines\)", text), text[:3000]
    screenshot(page, "canonical-checks.png")


def test_publish_page_shows_the_current_manifest(ui: Ui, page: Page):
    manifest_path = ui.out_dir / "registry/current/demo/home/manifest.json"
    manifest = json.loads(manifest_path.read_text())
    page.goto(f"{ui.url}/assets/publish")
    expect(page.get_by_text(f"{PUBLISHED_DAY}|demo__home").first).to_be_visible()
    page.get_by_placeholder("Filter metadata keys").fill("manifest")
    expect(page.get_by_text("manifest_uri", exact=True)).to_be_visible()
    text = body_text(page)
    assert manifest_path.as_uri() in text
    for artifact_type, uri in manifest["current"].items():
        assert uri in text, f"{artifact_type}: {uri} not on the page"
    screenshot(page, "publish-manifest.png")
