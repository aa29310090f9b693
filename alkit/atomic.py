"""Crash-safe file writes: a reader sees the old file or the new one, never a partial one."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import BinaryIO, Callable


def fsync_directory(directory: Path) -> None:
    """Make a rename inside `directory` durable (no-op where the OS refuses, e.g. on Windows)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write(handle)` into a temporary file beside `path`, fsync, rename over `path`, fsync the folder.

    A failed write removes the temporary file (freeing the space it held) and leaves `path` untouched.
    """
    path = Path(path)
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.errno is None:  # numpy's tofile reports a full disk without errno
            raise OSError(errno.ENOSPC, f"No space left on device (short write: {error})", str(path)) from error
        raise
    os.replace(temporary, path)
    fsync_directory(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
