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
import stat
import warnings
from dataclasses import dataclass

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
HASH_NAME = "blake2b-256"
MAX_FILE_BYTES = 512 * 1024**2  # larger files are rejected unread (no image alkit embeds needs this much)
MAX_ASPECT_RATIO = 50.0  # longer/shorter side; a 1x60000 strip would need ~9 GB once resized for a model
ERROR_TEXT_CHARS = 200  # longest exception text quoted in a reason

# PNG: an 8-byte signature, then chunks of 4-byte length, 4-byte type, data, 4-byte CRC.
PNG_SIGNATURE_BYTES = 8
PNG_CHUNK_HEADER_BYTES = 8  # length + type
PNG_CHUNK_OVERHEAD_BYTES = 12  # length + type + CRC
# JPEG: segments start with 0xFF and a marker byte; most carry a 2-byte length after it.
JPEG_MARKER_PREFIX = 0xFF
JPEG_START_OF_SCAN = 0xDA
JPEG_END_OF_IMAGE = b"\xff\xd9"
JPEG_STANDALONE_MARKERS = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})  # TEM, SOI, RST0-7: no length field


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


def file_kind_problem(mode: int) -> str | None:
    """Why a file of this `st_mode` is not read (FIFOs block, devices never end); None for regular files."""
    if stat.S_ISREG(mode):
        return None
    kinds = {
        stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a directory",
    }
    kind = next((name for test, name in kinds.items() if test(mode)), "not a regular file")
    return f"not a regular file: {kind}"


def open_regular_file(path: str | os.PathLike):
    """Open a file for reading only if it is a regular file, without ever blocking on a FIFO.

    The kind is checked on the opened descriptor (`fstat`), so a path swapped for a FIFO or a
    link to /dev/zero after listing is still refused. Raises OSError, or ValueError with the reason.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        problem = file_kind_problem(os.fstat(fd).st_mode)
        if problem:
            raise ValueError(problem)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str, limit: int | None = None) -> bytes:
    """The bytes of a regular file of at most `limit` (default MAX_FILE_BYTES) bytes; ValueError with the reason otherwise."""
    limit = MAX_FILE_BYTES if limit is None else limit
    with open_regular_file(path) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"file larger than {limit} bytes; not an image alkit reads")
    return data


def aspect_problem(width: int, height: int, max_ratio: float = MAX_ASPECT_RATIO) -> str | None:
    """A reason when one side is more than `max_ratio` times the other (checked before any decode)."""
    if width >= 1 and height >= 1 and max(width, height) > max_ratio * min(width, height):
        return f"extreme aspect ratio ({width}x{height}, more than {max_ratio:g}:1); crop or resize it"
    return None


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
            problem = file_kind_problem(info.st_mode)
            if problem:
                rejected.append((display_path(os.path.abspath(given)), problem))
            else:
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
                    problem = file_kind_problem(os.stat(full).st_mode)
                except OSError as error:
                    rejected.append((display_path(os.path.abspath(full)), _os_reason(error)))
                    continue
                if problem:
                    rejected.append((display_path(os.path.abspath(full)), problem))
                    continue
                files.append(resolved(full))
    unique = list(dict.fromkeys(files))
    return FoundFiles(files=unique, rejected=rejected, ignored=ignored)


def _png_has_iend(data: bytes) -> bool:
    """Walk the PNG chunks by their lengths; True when an IEND chunk is reached inside the data
    (bytes after it are allowed, as every decoder ignores them)."""
    position = PNG_SIGNATURE_BYTES
    while position + PNG_CHUNK_HEADER_BYTES <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        if data[position + 4 : position + PNG_CHUNK_HEADER_BYTES] == b"IEND":
            return True
        position += PNG_CHUNK_OVERHEAD_BYTES + length
    return False


def _jpeg_has_eoi(data: bytes) -> bool:
    """Skip the marker segments (EXIF thumbnails included) to the first scan, then look for the
    end-of-image marker in the scan data, where 0xFFD9 cannot occur otherwise. Trailing bytes
    after it (some cameras append data) are accepted."""
    position = 2  # after the start-of-image marker
    while position + 4 <= len(data):  # marker (2 bytes) + segment length (2 bytes)
        if data[position] != JPEG_MARKER_PREFIX:
            return False
        marker = data[position + 1]
        if marker == JPEG_MARKER_PREFIX:  # fill byte
            position += 1
            continue
        if marker in JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        if marker == JPEG_START_OF_SCAN:
            return JPEG_END_OF_IMAGE in data[position:]
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return False


def _has_end_marker(fmt: str, data: bytes) -> bool:
    if fmt == "PNG":
        return _png_has_iend(data)
    if fmt in ("JPEG", "MPO"):
        return _jpeg_has_eoi(data)
    return True


def probe_image(path: str, max_pixels: int) -> ProbeResult:
    """Hash the file, read its header and check it is a complete, sane image; never raises."""
    shown = display_path(path)
    try:
        return _probe(path, shown, max_pixels)
    except MemoryError:
        return ProbeResult(shown, False, "unreadable: out of memory while reading it")
    except Exception as error:  # one bad file never costs the others in its chunk
        return ProbeResult(shown, False, f"unreadable: {type(error).__name__}: {str(error).splitlines()[0][:ERROR_TEXT_CHARS] if str(error) else ''}")


def _probe(path: str, shown: str, max_pixels: int) -> ProbeResult:
    from PIL import Image, UnidentifiedImageError

    if not is_storable(path):
        return ProbeResult(shown, False, "path is not valid UTF-8; rename the file")
    try:
        data = read_bounded(path)
    except OSError as error:
        return ProbeResult(shown, False, _os_reason(error))
    except ValueError as error:
        return ProbeResult(shown, False, str(error))
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
    if aspect_problem(width, height):
        return ProbeResult(shown, False, aspect_problem(width, height), size_bytes=len(data))
    if not _has_end_marker(fmt, data):
        return ProbeResult(shown, False, f"truncated {fmt} (end marker missing)", size_bytes=len(data))
    return ProbeResult(shown, True, None, width=width, height=height, format=fmt, **common)
