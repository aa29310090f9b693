"""Save / load posteriors: `arrays.safetensors` (plain float arrays) + `header.json`. No pickle.

The one entry point for persistence: `save_posterior` writes what `posterior.to_state()`
returns, `load_posterior` finds the class by its registry kind and calls `from_state`. Both
files are written atomically (`alkit.atomic`), arrays first: a directory with a header always
has its arrays, and a crash leaves the old files or none, never a partial one.

The header records the registry kind, provenance, the embedding spec key the features came
from, the ordered class list, settings and the parent version. `load_posterior` refuses a
posterior whose spec or class list differs from what the caller expects: scoring with the
wrong embedding space or class order would silently produce wrong numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from alkit.atomic import atomic_write_bytes, atomic_write_text
from alkit.errors import IntegrityError
from alkit.jsonable import jsonable
from alkit.posterior.base import PosteriorProvenance

FORMAT_VERSION = 1
ARRAYS_FILE = "arrays.safetensors"
HEADER_FILE = "header.json"


def save_posterior(posterior: Any, directory: Path) -> None:
    """Write `posterior.to_state()` arrays and a JSON header into `directory` (created)."""
    from safetensors.numpy import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays, state = posterior.to_state()
    provenance = posterior.provenance
    header = {
        "format_version": FORMAT_VERSION,
        "kind": posterior.kind,
        "embedding_spec_key": posterior.embedding_spec_key,
        "classes": list(posterior.classes),
        "parent_version": provenance.parent_version,
        "provenance": {
            "kind": provenance.kind,
            "curvature_source": provenance.curvature_source,
            "labels_used": provenance.labels_used,
            "parent_version": provenance.parent_version,
            "settings": provenance.settings,
        },
        "state": state,
    }
    atomic_write_bytes(directory / ARRAYS_FILE, save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))
    atomic_write_text(directory / HEADER_FILE, json.dumps(jsonable(header), indent=2, sort_keys=True))


def read_header(directory: Path) -> dict[str, Any]:
    path = Path(directory) / HEADER_FILE
    if not path.is_file():
        raise IntegrityError(f"no posterior header at {path}; run `alkit fit` to create a posterior")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise IntegrityError(f"posterior header {path} is not valid JSON ({error}); run `alkit fit` again") from None


def load_posterior(
    directory: Path, expected_spec_key: str | None = None, expected_classes: list[str] | tuple[str, ...] | None = None
) -> Any:
    """Load a saved posterior; IntegrityError if its spec key or class list is not the expected one."""
    from safetensors.numpy import load_file

    from alkit.posterior.registry import posterior_class

    directory = Path(directory)
    header = read_header(directory)
    if header.get("format_version") != FORMAT_VERSION:
        raise IntegrityError(
            f"posterior at {directory} has format {header.get('format_version')}, this alkit reads {FORMAT_VERSION}; "
            "run `alkit fit` again"
        )
    if expected_spec_key is not None and header["embedding_spec_key"] != expected_spec_key:
        raise IntegrityError(
            f"posterior at {directory} was fitted on embedding spec {header['embedding_spec_key']!r} "
            f"but the pool uses {expected_spec_key!r}; run `alkit fit` again"
        )
    if expected_classes is not None and list(header["classes"]) != list(expected_classes):
        saved = header["classes"]
        raise IntegrityError(
            f"posterior at {directory} has {len(saved)} classes {saved[:5]}... but the project has "
            f"{len(expected_classes)} classes {list(expected_classes)[:5]}...; run `alkit fit` again"
        )
    cls = posterior_class(header["kind"])
    try:  # safetensors never unpickles; anything else in the file (a pickle, garbage) is refused
        arrays = load_file(str(directory / ARRAYS_FILE))
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise IntegrityError(
            f"cannot read posterior arrays {directory / ARRAYS_FILE} ({reason}); it is not a safetensors file: "
            "run `alkit fit` again"
        ) from None
    info = header["provenance"]
    provenance = PosteriorProvenance(
        kind=info["kind"],
        curvature_source=info["curvature_source"],
        labels_used=int(info["labels_used"]),
        parent_version=info["parent_version"],
        settings=info["settings"],
    )
    return cls.from_state(arrays, header["state"], provenance, tuple(header["classes"]), header["embedding_spec_key"])
