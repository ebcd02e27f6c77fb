"""The command blocks of the tutorials and how-to guides, run in order on a temp copy of the repo.

Every fenced ``sh``/``bash`` block of a page under ``docs/tutorials/`` or ``docs/how-to/`` is a
command a reader will type, so each one runs here, page by page, in one ``bash -euo pipefail``
script started at the root of a fresh copy of the working tree (its ``.venv`` linked, its own
``DAGSTER_HOME``, its own package first on ``PYTHONPATH``, so that what a page writes lands in
the copy). A block that cannot run on this machine (a cluster, a server that never
returns) says so on the line before it, with its reason::

    <!-- not run: needs a Kubernetes cluster -->

A tutorial whose commands no longer work therefore fails the suite, naming the page, the
block's line and the command's output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("tutorials/*.md")) + sorted((ROOT / "docs").glob("how-to/*.md"))
SHELLS = {"sh", "bash", "shell"}
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\n`]*)$")
PAGE_TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    not_run: str | None  # the reason, when the page says it is not run


def blocks(markdown: str) -> list[Block]:
    """The fenced code blocks of a page, with the ``not run`` reason written just before each."""
    lines = markdown.splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        language = (opening["info"].split() or [""])[0].lstrip(".{").rstrip("}")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][indent:] if lines[j][:indent].isspace() else lines[j])
            j += 1
        previous = next((text for text in reversed(lines[:i]) if text.strip()), "")
        reason = NOT_RUN.search(previous)
        found.append(Block(i + 1, language, "\n".join(body), reason["reason"] if reason else None))
        i = j + 1
    return found


def script(page: Path) -> tuple[str, int]:
    """One bash script of the page's runnable blocks, each announced on stderr; and how many."""
    runnable = [b for b in blocks(page.read_text()) if b.language in SHELLS and not b.not_run]
    parts = [f"echo '>>> {page.relative_to(ROOT)} line {b.line}' >&2\n{b.text}\n" for b in runnable]
    return "set -euo pipefail\n" + "\n".join(parts), len(runnable)


def working_copy(dest: Path) -> None:
    """The repo's tracked and new (not ignored) files, times kept so make's stamps still hold."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    # The compiled loops' cache (numba keeps it beside the sources, keyed by their times), so
    # that the copy's package runs without compiling again.
    for cached in (ROOT / "recsys_assets").rglob("__pycache__/*"):
        target = dest / cached.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(cached, target)
    (dest / ".venv").symlink_to(ROOT / ".venv")


def test_every_guide_has_commands_and_every_skip_a_reason():
    """A page of commands that runs none of them would prove nothing."""
    assert PAGES, "no tutorials or how-to pages under docs/"
    for page in PAGES:
        shell = [b for b in blocks(page.read_text()) if b.language in SHELLS]
        for block in shell:
            assert block.text.strip(), f"{page.name} line {block.line}: empty command block"
    runnable = sum(script(page)[1] for page in PAGES)
    assert runnable >= len(PAGES) // 2, f"only {runnable} runnable blocks in {len(PAGES)} pages"


def test_blocks_parser_reads_fences_and_reasons():
    page = (
        "intro\n\n<!-- not run: needs a cluster -->\n```sh\nkubectl apply\n```\n\n"
        "```bash\necho one\necho two\n```\n\n~~~text\nout\n~~~\n"
    )
    found = blocks(page)
    assert [(b.line, b.language, b.not_run) for b in found] == [
        (4, "sh", "needs a cluster"),
        (8, "bash", None),
        (13, "text", None),
    ]
    assert found[1].text == "echo one\necho two"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_commands_run(page: Path, tmp_path: Path):
    text, count = script(page)
    if not count:
        pytest.skip(f"{page.name} has no command block to run")
    stamp = ROOT / ".venv" / ".installed"
    if not stamp.exists() or stamp.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime:
        # make in the copy would reinstall the linked .venv from the copy, then lose it
        pytest.fail("the .venv is older than pyproject.toml: run `make .venv/.installed` first")
    copy = tmp_path / "repo"
    working_copy(copy)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy2(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "OPENBLAS_NUM_THREADS": "1",
        "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(ROOT / ".venv"),
        # the copy's own package, not the editable install's: paths in a config resolve
        # against the package's repo, which must be the copy
        "PYTHONPATH": str(copy),
    }
    env.pop("RECSYS_CONFIG", None)
    done = subprocess.run(
        ["bash", "-c", text],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT_S,
    )
    if done.returncode:
        ran = [line for line in done.stderr.splitlines() if line.startswith(">>> ")]
        where = ran[-1][4:] if ran else str(page.relative_to(ROOT))
        print(done.stdout[-4000:])
        print(done.stderr[-4000:], file=sys.stderr)
        pytest.fail(f"{where}: exit {done.returncode}\n{done.stderr[-2000:]}")
