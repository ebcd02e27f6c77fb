"""Raw event sources (SPEC §2), one resource per backend behind one interface."""

from __future__ import annotations

import hashlib
import io
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import dagster as dg

from recsys_assets.events.canonical import Partition

DAY_FILE = "exposure.{day}.jsonl"
FLAT_FILE = "exposure.jsonl"


@dataclass(frozen=True)
class RawInput:
    """What a source holds for one partition: a per-day file, the flat file, a table's rows,
    or nothing.

    Its bytes are `data`, or the local file at `path` (then `data` is empty), which `open`
    streams so that a big file is never in memory whole.
    """

    layout: str  # "day" | "flat" | "table" | "none"
    data: bytes
    name: str
    # What a source could not turn into lines (a database row: `id`, `request_id`, `reason`,
    # `detail`), merged into the partition's rejects.
    source_rejects: list[dict] = field(default_factory=list)
    path: Path | None = None

    def open(self) -> BinaryIO:
        """The bytes, as a binary stream."""
        return self.path.open("rb") if self.path is not None else io.BytesIO(self.data)

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path is not None else len(self.data)

    def missing(self, attributed_lines: int) -> bool:
        """Whether the source is absent for the partition, as opposed to holding a day without
        events: no per-day file and no flat file, or a flat file or table with no line at all
        for the partition. A per-day file that exists speaks for its day even when empty."""
        return self.layout == "none" or (self.layout != "day" and attributed_lines == 0)

    def sha256_hex(self) -> str:
        with self.open() as stream:
            return hashlib.file_digest(stream, "sha256").hexdigest()


class RawEventSource(dg.ConfigurableResource, ABC):
    """Where raw exposure JSON Lines come from."""

    @abstractmethod
    def read(self, partition: Partition) -> RawInput: ...


class FilesystemEventSource(RawEventSource):
    """`<dir>/<tenant>/<surface>/exposure.YYYY-MM-DD.jsonl`, else the flat `<dir>/exposure.jsonl`.

    A per-day file wins over the flat file for its partition.
    """

    dir: str

    def read(self, partition: Partition) -> RawInput:
        root = Path(self.dir)
        day_file = root / partition.tenant / partition.surface / DAY_FILE.format(day=partition.day)
        if day_file.is_file():
            return RawInput("day", b"", day_file.relative_to(root).as_posix(), path=day_file)
        flat = root / FLAT_FILE
        if flat.is_file():
            return RawInput("flat", b"", FLAT_FILE, path=flat)
        # Named in full: a mistyped raw_source.dir shows in the guard's message.
        return RawInput("none", b"", f"{day_file} (nor {flat})")
