"""The contract every posterior satisfies, so acquisition never special-cases one.

A posterior maps per-input features `x (N, F)` to class probabilities. `F` is what the
posterior consumes: `phi` (d, projection input) for BayesVLM, the embedding (D) for the
Laplace head, the embedding for ProbVLM.

Shared samples: `sample_weights(S, seed)` draws S weight samples ONCE; `sample_probs`
applies the same draws to any chunk of inputs (pool chunks and EPIG targets alike), so
`probs (S, N, K)` of different calls are jointly distributed. Independent per-input draws
would make EPIG collapse into BALD.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class PosteriorProvenance:
    """Where a posterior's curvature and MAP came from (shown by `alkit status`)."""

    kind: str  # registry name: "bayesvlm", "laplace_head", "probvlm"
    curvature_source: str  # e.g. "pool images vs 10 class prompts (N=512)", "factors dir", "pairs.csv (N=..)"
    labels_used: int
    parent_version: int | None
    settings: dict[str, Any]


@runtime_checkable
class Posterior(Protocol):
    """Predictive distribution over K classes for inputs `x (N, F)` (float32 numpy or torch)."""

    kind: str
    num_classes: int  # K

    def logit_moments(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of the class logits: `(N, K), (N, K)`."""

    def predict(self, x) -> np.ndarray:
        """Analytic predictive probabilities `(N, K)` (probit approximation where applicable)."""

    def map_predict(self, x) -> np.ndarray:
        """Probabilities `(N, K)` of the MAP (point-estimate) model, for eval comparisons."""

    def sample_weights(self, num_samples: int, seed: int) -> Any:
        """Draw S weight samples once; the result is reused for every chunk of inputs."""

    def sample_probs(self, weights: Any, x) -> np.ndarray:
        """Class probabilities under each shared weight sample: `(S, N, K)`."""

    def save(self, directory: Path) -> None:
        """Write plain arrays (safetensors / npz without pickle) plus a JSON header."""
