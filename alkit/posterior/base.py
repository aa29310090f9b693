"""The contract every posterior satisfies, so acquisition never special-cases one.

A posterior maps per-input features `x (N, F)` to class probabilities. `F` is what the
posterior consumes, its `feature_kind`: `phi` (d, the projection input) for BayesVLM, the
embedding (D) for every other kind.

Shared samples: `sample_weights(S, seed)` draws S posterior samples ONCE (head weights,
projections, ensemble members, or for ProbVLM the shared noise that turns each input's
distribution into draws); `sample_probs` applies the same draws to any chunk of inputs (pool
chunks and EPIG targets alike), so `probs (S, N, K)` of different calls are jointly
distributed. Independent per-input draws would make EPIG collapse into BALD.

Saving and loading go through `alkit.posterior.io` only (`save_posterior`, `load_posterior`):
a posterior gives its plain arrays and JSON state (`to_state`) and is rebuilt from them
(`from_state`), so no posterior module imports `io`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np


class FeatureKind(StrEnum):
    """Which stored vectors of an image a posterior consumes (the `kind` of `storage.vectors`)."""

    PHI = "phi"  # projection input phi (d): the pooled features that enter open_clip's visual.proj
    EMBEDDING = "embedding"  # the embedding (D), open_clip or imported
    PHI_WITH_VARIANCE = "phi+phi_var"  # phi and its CVP variance side by side (2d): BayesVLM on a CVP spec


@dataclass(frozen=True)
class PosteriorProvenance:
    """Where a posterior's curvature and MAP came from (shown by `alkit status`)."""

    kind: str  # registry name: "bayesvlm", "laplace_head", "probvlm", ...
    curvature_source: str  # e.g. "pool images vs 10 class prompts (N=512)", "factors dir", "pairs.csv (N=..)"
    labels_used: int
    parent_version: int | None
    settings: dict[str, Any]


@runtime_checkable
class Posterior(Protocol):
    """Predictive distribution over K classes for inputs `x (N, F)` (float32 numpy or torch)."""

    kind: str  # registry name (`alkit.posterior.registry.POSTERIORS`)
    feature_kind: ClassVar[FeatureKind]
    # True: `sample_logits` is the cheap path (one matmul per chunk, a strided view), so scorers
    # of logits read it instead of `sample_probs`; False: it exists but costs as much as
    # `sample_probs`, which scorers then use.
    fast_sample_logits: ClassVar[bool]
    classes: tuple[str, ...]  # ordered class names, checked on load
    embedding_spec_key: str  # the embedding spec the features come from, checked on load
    provenance: PosteriorProvenance
    prior_precision: float | None  # lam of a Laplace prior; None for kinds without one

    @property
    def num_classes(self) -> int:
        """K."""

    def logit_moments(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of the class logits: `(N, K), (N, K)`."""

    def predict(self, x) -> np.ndarray:
        """Predictive probabilities `(N, K)`."""

    def map_predict(self, x) -> np.ndarray:
        """Probabilities `(N, K)` of the MAP (point-estimate) model, for eval comparisons."""

    def sample_weights(self, num_samples: int, seed: int) -> Any:
        """Draw S posterior samples once; the result is reused for every chunk of inputs."""

    def sample_logits(self, weights: Any, x) -> np.ndarray:
        """Class logits under each shared sample: `(S, N, K)`."""

    def sample_probs(self, weights: Any, x) -> np.ndarray:
        """Class probabilities under each shared sample: `(S, N, K)`."""

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(plain float arrays, JSON-ready state) that `from_state` rebuilds the posterior from."""

    @classmethod
    def from_state(
        cls, arrays: dict[str, np.ndarray], state: dict[str, Any], provenance: PosteriorProvenance,
        classes: tuple[str, ...], embedding_spec_key: str,
    ) -> "Posterior":
        """The posterior saved by `to_state` (called by `io.load_posterior`)."""
