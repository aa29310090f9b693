"""Kronecker factors of the GGN of a linear projection g = P phi (P is D x d).

KFAC: sum_i phi_i phi_i^T (x) G_i ~ A (x) B with
  A = (1/sqrt N) sum_i phi_i phi_i^T   (d x d; phi gets a trailing 1 when the layer has a bias)
  B = (1/sqrt N) sum_i G_i             (D x D; G_i the closed-form GGN from `ggn.py`)
Accumulated in float64 and symmetrised. The text side is the same call with the roles
swapped: `features` = text features psi, `projection` = Q, `candidates` = unit-norm image
embeddings (the softmax then runs over images).

Factors carry the number of inputs N so that new terms (labelled images in `refit`) can be
added to the SUMS and renormalised by the new N (`add_inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from alkit.posterior.ggn import Likelihood, summed_ggn


@dataclass(frozen=True)
class KroneckerFactors:
    """A `(p, p)` input factor and B `(q, q)` output factor of one layer's GGN."""

    A: np.ndarray
    B: np.ndarray
    num_inputs: int
    likelihood: str = "infonce"
    candidate_batch_size: int | None = None
    bias: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def p(self) -> int:
        return self.A.shape[0]

    @property
    def q(self) -> int:
        return self.B.shape[0]


def with_bias_column(features: np.ndarray, bias: bool) -> np.ndarray:
    """phi `(N, d)` -> `(N, d + 1)` with a trailing 1 when the layer has a bias."""
    phi = np.asarray(features, dtype=np.float64)
    if not bias:
        return phi
    return np.concatenate([phi, np.ones((phi.shape[0], 1))], axis=1)


def _symmetrise(matrix: np.ndarray) -> np.ndarray:
    return 0.5 * (matrix + matrix.T)


def kfac_sums(
    features: np.ndarray,
    projection: np.ndarray,
    candidates: np.ndarray,
    logit_scale: float,
    candidate_batch_size: int | None = None,
    likelihood: Likelihood = "infonce",
    bias: bool = False,
    logit_bias: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised sums (sum phi phi^T, sum G_i) in float64."""
    phi = with_bias_column(features, bias)
    embeddings = phi @ np.asarray(projection, dtype=np.float64).T  # (N, d') @ (d', D) -> (N, D)
    a_sum = phi.T @ phi
    b_sum = summed_ggn(embeddings, candidates, logit_scale, likelihood, candidate_batch_size, logit_bias)
    return _symmetrise(a_sum), _symmetrise(b_sum)


def kfac_factors(
    features: np.ndarray,
    projection: np.ndarray,
    candidates: np.ndarray,
    logit_scale: float,
    candidate_batch_size: int | None = None,
    likelihood: Likelihood = "infonce",
    bias: bool = False,
    logit_bias: float = 0.0,
) -> KroneckerFactors:
    """KFAC factors of the projection `projection (D, d)` from cached features `(N, d)`."""
    a_sum, b_sum = kfac_sums(
        features, projection, candidates, logit_scale, candidate_batch_size, likelihood, bias, logit_bias
    )
    n = int(np.asarray(features).shape[0])
    root = np.sqrt(max(n, 1))
    return KroneckerFactors(
        A=a_sum / root,
        B=b_sum / root,
        num_inputs=n,
        likelihood=likelihood,
        candidate_batch_size=candidate_batch_size,
        bias=bias,
        settings={"logit_scale": float(logit_scale), "logit_bias": float(logit_bias)},
    )


def add_inputs(factors: KroneckerFactors, a_sum: np.ndarray, b_sum: np.ndarray, count: int) -> KroneckerFactors:
    """New factors with `count` more inputs' sums added (the input factors are not modified)."""
    old_root = np.sqrt(max(factors.num_inputs, 1)) if factors.num_inputs else 0.0
    total = factors.num_inputs + int(count)
    root = np.sqrt(max(total, 1))
    a = (factors.A * old_root + a_sum) / root
    b = (factors.B * old_root + b_sum) / root
    return replace(factors, A=_symmetrise(a), B=_symmetrise(b), num_inputs=total)


def add_labelled_inputs(
    factors: KroneckerFactors, a_sum: np.ndarray, b_sum: np.ndarray, count: int, pseudo_data: float
) -> KroneckerFactors:
    """Factors with `count` labelled inputs' curvature added ONCE, for a precision n (A (x) B).

    The labelled KFAC term is (sum phi phi^T) (x) (sum G) / L; inside n (A (x) B) it needs
    A += a_sum / sqrt(n L) and B += b_sum / sqrt(n L) (weight 1, not n). The cross terms that
    the sum of Kronecker products adds are positive semi-definite, so the precision never
    decreases; unlike renormalising by a new input count, this needs no count for the base
    factors (loaded `--factors` have none) and so never discards them.
    """
    if count == 0:
        return factors
    root = np.sqrt(max(pseudo_data, 1e-12) * count)
    a = factors.A + a_sum / root
    b = factors.B + b_sum / root
    return replace(factors, A=_symmetrise(a), B=_symmetrise(b), num_inputs=factors.num_inputs + int(count))
