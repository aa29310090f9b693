"""`alkit add`: register image files in the pool, idempotently, recording every rejection."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from alkit.arrays import iter_chunks
from alkit.errors import InputError
from alkit.imagefiles import ProbeResult, find_image_files, probe_image
from alkit.jsonable import JsonResult
from alkit.progress import progress_bar
from alkit.project import Project
from alkit.storage.db import utcnow
from alkit.storage.images import ids_by_hash, statuses_by_path, update_by_path
from alkit.storage.inserts import insert_ignoring_conflicts
from alkit.storage.schema import ImageStatus, Split, images

CHUNK_SIZE = 512


@dataclass
class AddResult(JsonResult):
    split: str
    added: int = 0
    duplicates: int = 0  # same content as an image already registered (or earlier in this run)
    already_registered: int = 0  # same path already in the pool
    ignored: int = 0  # non-image suffixes inside walked folders
    rejected: list[dict] = field(default_factory=list)  # {path, reason}


def _probe_threads() -> int:
    return min(8, (os.cpu_count() or 1) * 2)


def add_images(
    project: Project,
    paths: list[str],
    split: str = Split.POOL.value,
    recursive: bool = True,
    show_progress: bool | None = None,
) -> AddResult:
    """Find, probe and register image files; safe to rerun and to kill at any point.

    Work is committed per chunk of files, so a killed run keeps what it finished and the
    next run skips paths already registered (rejected paths are probed again).
    """
    if split not in {s.value for s in Split}:
        raise InputError(f"unknown split {split!r}; valid: {', '.join(s.value for s in Split)}")
    if not paths:
        raise InputError("no paths given; pass image files or folders, e.g. `alkit add ./images`")
    missing = [str(path) for path in paths if not os.path.exists(path)]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise InputError(f"{len(missing)} given path(s) do not exist: {shown}; nothing was added")
    found = find_image_files(paths, recursive=recursive)
    result = AddResult(split=split, ignored=found.ignored)
    # Paths that vanished are only reported; files that exist but cannot be read are recorded.
    result.rejected.extend({"path": p, "reason": r} for p, r in found.rejected if r == "file not found")
    unlisted = [ProbeResult(p, False, r) for p, r in found.rejected if r != "file not found"]

    with project.engine.connect() as connection:
        known = statuses_by_path(connection)
    to_probe = [path for path in found.files if known.get(path) in (None, ImageStatus.REJECTED.value)]
    result.already_registered = len(found.files) - len(to_probe)

    max_pixels = project.settings.max_pixels
    if unlisted:
        _record_chunk(project, unlisted, split, known, result)
    with progress_bar(len(to_probe), "add", show_progress, unit="img") as bar, ThreadPoolExecutor(_probe_threads()) as pool:
        for chunk in iter_chunks(to_probe, CHUNK_SIZE):
            probes = list(pool.map(lambda path: probe_image(path, max_pixels), chunk))
            _record_chunk(project, probes, split, known, result)
            bar.update(len(chunk))
    return result


def _record_chunk(project: Project, probes: list[ProbeResult], split: str, known: dict, result: AddResult) -> None:
    now = utcnow()
    good = [probe for probe in probes if probe.ok]
    bad = [probe for probe in probes if not probe.ok]
    with project.engine.begin() as connection:
        taken = set(ids_by_hash(connection, [probe.content_hash for probe in good]))
        rows = []
        for probe in good:
            if probe.content_hash in taken:
                result.duplicates += 1
                continue
            taken.add(probe.content_hash)
            row = dict(
                path=probe.path,
                content_hash=probe.content_hash,
                size_bytes=probe.size_bytes,
                width=probe.width,
                height=probe.height,
                format=probe.format,
                split=split,
                status=ImageStatus.REGISTERED.value,
                error_reason=None,
                added_at=now,
                updated_at=now,
            )
            if probe.path in known:  # previously rejected, now readable
                update_by_path(connection, probe.path, row)
                result.added += 1
            else:
                rows.append(row)
        inserted = insert_ignoring_conflicts(connection, images, rows)
        result.added += inserted
        result.duplicates += len(rows) - inserted  # lost a race to another process
        rejected_rows = []
        for probe in bad:
            result.rejected.append({"path": probe.path, "reason": probe.reason})
            values = dict(
                status=ImageStatus.REJECTED.value, error_reason=probe.reason, size_bytes=probe.size_bytes, updated_at=now
            )
            if probe.path in known:
                update_by_path(connection, probe.path, values)
            else:
                rejected_rows.append(dict(path=probe.path, split=split, added_at=now, **values))
        insert_ignoring_conflicts(connection, images, rejected_rows)
