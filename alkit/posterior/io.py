"""Save / load posteriors: `arrays.safetensors` (plain float arrays) + `header.json`. No pickle.

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

from alkit.errors import IntegrityError
from alkit.posterior.base import PosteriorProvenance
from alkit.registry import Registry

FORMAT_VERSION = 1
ARRAYS_FILE = "arrays.safetensors"
HEADER_FILE = "header.json"

POSTERIORS: Registry[type] = Registry("posterior")


def _register_builtin() -> None:
    from alkit.posterior.bayesvlm import BayesVLMPosterior
    from alkit.posterior.ensemble import EnsemblePosterior
    from alkit.posterior.hetsngp import HetSNGPPosterior
    from alkit.posterior.laplace_head import LaplaceHeadPosterior
    from alkit.posterior.mimo import MimoPosterior
    from alkit.posterior.probvlm import ProbVLMPosterior

    POSTERIORS.register("bayesvlm", BayesVLMPosterior, "Kronecker Laplace over the CLIP image projection (needs phi)")
    POSTERIORS.register("laplace_head", LaplaceHeadPosterior, "Laplace linear head on imported embeddings")
    POSTERIORS.register("probvlm", ProbVLMPosterior, "ProbVLM generalised-Gaussian adapters on frozen embeddings")
    POSTERIORS.register("ensemble", EnsemblePosterior, "Anchored ensemble of linear heads on embeddings (optionally a hyperparameter ensemble)")
    POSTERIORS.register("mimo", MimoPosterior, "MIMO subnetworks in one MLP on embeddings")
    POSTERIORS.register("hetsngp", HetSNGPPosterior, "Spectral-norm MLP + random-feature GP (Laplace) + heteroscedastic noise")


_register_builtin()


def get_posterior_class(name: str) -> type:
    """The posterior class registered under `name` (UnknownNameError lists valid names)."""
    return POSTERIORS.get(name)


def save_posterior(posterior: Any, directory: Path) -> None:
    """Write `posterior.to_state()` arrays and a JSON header into `directory` (created)."""
    from safetensors.numpy import save_file

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
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(directory / ARRAYS_FILE))
    (directory / HEADER_FILE).write_text(json.dumps(header, indent=2, sort_keys=True, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


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
    cls = get_posterior_class(header["kind"])
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
