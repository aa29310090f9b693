"""The small tensor files beside a spec's shards: its projections and its class-prompt text
features (one file per class list), as float32 safetensors written atomically.

    projections.safetensors          P (d, D), Q (d_t, D), [P_bias, Q_bias], logit_scale (log s), [logit_bias]
    text-<classes key>.safetensors   text_emb (K, D) unit-norm, [psi (K, d_t)] for one class list
    cvp.safetensors                  CVP specs only: the weight posterior's variances per block and
                                     role, its calibration in the metadata (`alkit.workflows.cvp_posterior`)
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from alkit.atomic import atomic_write

PROJECTIONS_FILE = "projections.safetensors"
CVP_FILE = "cvp.safetensors"
PROJECTIONS_LAYOUT = "P (d, D), Q (d_t, D): g = phi @ P"  # recorded in the file's metadata


def projections_path(directory: Path) -> Path:
    return directory / PROJECTIONS_FILE


def text_features_path(directory: Path, classes_key: str) -> Path:
    """The text-feature file of one class list (a new class list gets a new file)."""
    return directory / f"text-{classes_key}.safetensors"


def save_tensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    from safetensors.numpy import save

    data = save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, metadata=metadata)
    atomic_write(path, lambda handle: handle.write(data))


def load_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def load_tensors_with_metadata(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors of `path` and the string metadata saved with them."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, dict(handle.metadata() or {})


def load_tensors_if_present(path: Path) -> dict[str, np.ndarray]:
    """The tensors of `path`, or {} when the file does not exist (imported specs have no projections)."""
    return load_tensors(path) if path.is_file() else {}


class TextFeatures(NamedTuple):
    """Class-prompt text features of one spec for one class list (any may be None).

    text_emb (K, D) unit-norm; psi (K, d_t) input of the text projection; P (d, D) image
    projection and Q (d_t, D) text projection in open_clip's layout (g = phi @ P,
    h = psi @ Q); logit_scale is open_clip's raw parameter, s = exp(logit_scale).
    """

    text_emb: np.ndarray | None
    psi: np.ndarray | None
    P: np.ndarray | None
    Q: np.ndarray | None
    logit_scale: float | None
