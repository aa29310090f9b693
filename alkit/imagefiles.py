"""Finding image files and checking them without decoding their pixels.

`probe_image` reads the file once (for the content hash), parses the header for format and
dimensions, and checks the end-of-image marker so truncated PNG/JPEG files are caught
without a full decode. Every problem becomes a `reason` string, never an exception, so one
bad file never stops a run.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from typing import Iterator

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
HASH_NAME = "blake2b-256"


@dataclass(frozen=True)
class ProbeResult:
    path: str
    ok: bool
    reason: str | None = None
    content_hash: str | None = None
    size_bytes: int | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None


@dataclass(frozen=True)
class FoundFiles:
    files: list[str]  # absolute, resolved paths of candidate image files
    rejected: list[tuple[str, str]]  # (path, reason) for paths that could not even be listed
    ignored: int  # files in walked folders without an image suffix


def display_path(path: str | os.PathLike) -> str:
    """A printable, storable form of a path; non-UTF-8 bytes become backslash escapes."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", errors="backslashreplace")


def is_storable(path: str) -> bool:
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _os_reason(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "symlink loop"
    if error.errno == errno.ENOENT:
        return "file not found"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "unreadable: permission denied"
    if error.errno == errno.ENAMETOOLONG:
        return "unreadable: path too long"
    return f"unreadable: {error.strerror or error}"


def find_image_files(paths: list[str | os.PathLike], recursive: bool = True) -> FoundFiles:
    """Expand files and folders into candidate image files.

    Files named explicitly are always probed (whatever their suffix); in folders only
    image suffixes are taken. Folder symlinks are followed once (loops are cut by
    remembering visited directories).
    """
    files: list[str] = []
    rejected: list[tuple[str, str]] = []
    ignored = 0
    seen_dirs: set[tuple[int, int]] = set()

    def resolved(path: str) -> str:
        return os.path.abspath(os.path.realpath(path))

    for given in paths:
        given = os.fspath(given)
        try:
            info = os.stat(given)
        except OSError as error:
            rejected.append((display_path(os.path.abspath(given)), _os_reason(error)))
            continue
        if not os.path.isdir(given):
            files.append(resolved(given))
            continue
        seen_dirs.add((info.st_dev, info.st_ino))
        for root, dirnames, filenames in os.walk(given, followlinks=True):
            kept = []
            for name in sorted(dirnames):
                full = os.path.join(root, name)
                try:
                    dir_info = os.stat(full)
                except OSError as error:
                    rejected.append((display_path(os.path.abspath(full)), _os_reason(error)))
                    continue
                key = (dir_info.st_dev, dir_info.st_ino)
                if key not in seen_dirs and recursive:
                    seen_dirs.add(key)
                    kept.append(name)
            dirnames[:] = kept
            for name in sorted(filenames):
                full = os.path.join(root, name)
                if os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                    ignored += 1
                    continue
                try:
                    os.stat(full)
                except OSError as error:
                    rejected.append((display_path(os.path.abspath(full)), _os_reason(error)))
                    continue
                files.append(resolved(full))
    unique = list(dict.fromkeys(files))
    return FoundFiles(files=unique, rejected=rejected, ignored=ignored)


def _has_end_marker(fmt: str, data: bytes) -> bool:
    if fmt == "PNG":
        return b"IEND" in data[-64:]
    if fmt in ("JPEG", "MPO"):
        return data.rstrip(b"\x00")[-2:] == b"\xff\xd9"
    return True


def probe_image(path: str, max_pixels: int) -> ProbeResult:
    """Hash the file, read its header and check it is a complete, sane image."""
    from PIL import Image, UnidentifiedImageError

    shown = display_path(path)
    if not is_storable(path):
        return ProbeResult(shown, False, "path is not valid UTF-8; rename the file")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        return ProbeResult(shown, False, _os_reason(error))
    if not data:
        return ProbeResult(shown, False, "zero bytes", size_bytes=0)
    digest = hashlib.blake2b(data, digest_size=32).hexdigest()
    common = dict(content_hash=digest, size_bytes=len(data))
    try:
        # The header parse is lazy: pixels are not decoded here. Our own pixel limit is
        # applied below, so PIL's warning for large images is silenced.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        with image:
            fmt = image.format or "unknown"
            width, height = image.size
    except Image.DecompressionBombError:
        return ProbeResult(shown, False, "decompression bomb (too many pixels)", size_bytes=len(data))
    except UnidentifiedImageError:
        return ProbeResult(shown, False, "not an image", size_bytes=len(data))
    except (OSError, SyntaxError, ValueError) as error:
        return ProbeResult(shown, False, f"truncated or corrupt: {error}", size_bytes=len(data))
    if width * height > max_pixels:
        return ProbeResult(
            shown, False, f"decompression bomb ({width}x{height} > {max_pixels} pixels)", size_bytes=len(data)
        )
    if width < 1 or height < 1:
        return ProbeResult(shown, False, f"empty image ({width}x{height})", size_bytes=len(data))
    if not _has_end_marker(fmt, data):
        return ProbeResult(shown, False, f"truncated {fmt} (end marker missing)", size_bytes=len(data))
    return ProbeResult(shown, True, None, width=width, height=height, format=fmt, **common)


def iter_chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

