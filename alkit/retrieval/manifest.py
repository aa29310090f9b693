"""The manifest written beside a stored index: what it was built from, and checksums to prove it.

`manifest.json` is the last file written, so a manifest that parses describes complete files;
checksums catch a crash between writes, a hand-edited file or disk corruption.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 2
"""Bump when the directory layout or manifest fields change; older manifests are rebuilt."""

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class IndexManifest:
    """Everything needed to decide whether a stored index still fits the pool."""

    format_version: int
    spec_key: str  # embedding spec the vectors came from
    dim: int  # D
    kind: str  # resolved: flat | ivf | hnsw
    settings: dict[str, Any]  # resolved IndexSettings.to_dict()
    requested_settings: dict[str, Any]  # what the caller asked for (e.g. kind auto, nlist None)
    row_count: int  # N
    trained_on: int  # N when the index was built (IVF cells fitted to this many items)
    ids_checksum: str  # ids_checksum(ids): order-independent
    index_file_checksum: str  # file_checksum(index.faiss)
    offset: list[float] | None  # (D,) centring vector of IVF indexes (exact float32 values), else None
    faiss_version: str
    created_at: str  # ISO 8601 UTC, first build
    updated_at: str  # ISO 8601 UTC, last build or extension

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "IndexManifest":
        data = json.loads(text)
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def ids_checksum(ids: np.ndarray) -> str:
    """blake2b over the sorted ids as little-endian int64: equal for equal id sets in any order."""
    ordered = np.sort(np.asarray(ids, dtype=np.int64)).astype("<i8", copy=False)
    return hashlib.blake2b(ordered.tobytes(), digest_size=16).hexdigest()


def file_checksum(path: Path) -> str:
    """blake2b of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
