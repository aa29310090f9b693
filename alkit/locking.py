"""One lock per project and purpose (`fcntl.flock` on `.alkit/<name>.lock`), non-blocking by default.

The kernel drops the lock when the holding process dies, however it dies (kill -9
included), so a stale lock file never blocks the next run. The file records the holder's
pid and start time only to make the "locked" message useful.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from alkit.errors import LockedError


def _holder(handle, attempts: int = 10, pause_s: float = 0.05) -> str:
    """Who holds the lock, from its file. The holder writes its pid just after taking the lock,
    so an empty file is re-read a few times; never "pid ?"."""
    for attempt in range(attempts):
        try:
            handle.seek(0)
            info = json.loads(handle.read() or "{}")
        except (OSError, ValueError):
            info = {}
        if isinstance(info, dict) and info.get("pid") and info.get("since"):
            return f"pid {info['pid']} since {info['since']}"
        if attempt + 1 < attempts:
            time.sleep(pause_s)
    return "another alkit process (starting up)"


@contextmanager
def project_lock(project, name: str = "labelstudio", wait: bool = False, timeout_s: float | None = None) -> Iterator[Path]:
    """Hold `.alkit/<name>.lock` for the duration of the block.

    Non-blocking: raises `LockedError` at once when another process holds it. With `wait`,
    blocks until it is free (or `timeout_s` passes, then `LockedError`).
    """
    path = project.artefact_path(f"{name}.lock")
    handle = open(path, "a+", encoding="utf-8")
    try:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait or (deadline is not None and time.monotonic() >= deadline):
                    raise LockedError(
                        f"project {project.directory} is locked by {_holder(handle)} ({path}); "
                        "it finishes on its own: rerun later, or pass --wait to queue behind it"
                    ) from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
        handle.flush()
        yield path
    finally:
        handle.close()  # closing the descriptor releases the flock
