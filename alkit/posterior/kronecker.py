"""Kronecker-factored Laplace precision held as two eigendecompositions.

With A = U_A diag(a) U_A^T `(p, p)` and B = U_B diag(b) U_B^T `(q, q)` (float64), both
damping forms of the posterior precision over vec(W) (W `(q, p)`, column-major vec) are
diagonal in the basis U_A (x) U_B, with eigenvalues E `(p, q)`:

  "eigen"  (default; laplace-torch's decomposed Kronecker form, science.md section 1):
           n (A (x) B) + lam I            ->  E_ij = n a_i b_j + lam
  "ritter" (the BayesVLM reference):
           (sqrt(n) A + sqrt(lam) I) (x) (sqrt(n) B + sqrt(lam) I)
                                          ->  E_ij = (sqrt(n) a_i + sqrt(lam)) (sqrt(n) b_j + sqrt(lam))

The Ritter form charges an Occam penalty for input directions without data (a_i = 0 still
multiplies every b_j), which drives the evidence to its upper bound; the eigen form adds
exactly lam to those directions. Changing n or lam needs no refactorisation: log-dets, the
output covariance of an input and samples are all diagonal rescalings in the eigenbasis.

Output covariance of one input x `(p,)`: f = W x has Cov(f) = U_B diag(c(x)) U_B^T with
  c_j(x) = sum_i (u_{A,i} . x)^2 / E_ij                                           (q,)
computed as |x|^2 / E0_j + sum_{i active} (u_{A,i} . x)^2 (1/E_ij - 1/E0_j), where E0 is the
eigenvalue row of a data-free input direction (a_i = 0): only directions that carry data cost
work. Samples: W_s = W_MAP + U_B (Z / sqrt(E^T)) U_A^T with Z `(q, p)` standard normal.

Tiny negative eigenvalues (round-off of a PSD sum) are clipped to zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from alkit.errors import InputError

Damping = Literal["eigen", "ritter"]
DAMPINGS = ("eigen", "ritter")
# An input direction is "active" when its 1/E differs from the data-free 1/E0 by more than
# this relative amount for some output direction; below it the difference is round-off.
ACTIVE_TOLERANCE = 1e-9


def check_damping(damping: str) -> str:
    if damping not in DAMPINGS:
        raise InputError(f"unknown damping {damping!r}; valid: {', '.join(DAMPINGS)}")
    return damping


@dataclass(frozen=True)
class EigenFactors:
    """Eigendecompositions of the undamped factors A `(p, p)` and B `(q, q)`."""

    a_vals: np.ndarray  # (p,)
    a_vecs: np.ndarray  # (p, p), columns are eigenvectors
    b_vals: np.ndarray  # (q,)
    b_vecs: np.ndarray  # (q, q)

    @property
    def p(self) -> int:
        return self.a_vals.shape[0]

    @property
    def q(self) -> int:
        return self.b_vals.shape[0]

    # ------------------------------------------------------------------ the precision's spectrum
    def precision_eigvals(self, pseudo_data: float, prior_precision: float, damping: Damping = "eigen") -> np.ndarray:
        """E `(p, q)`: eigenvalues of the damped precision, E[i, j] for (u_A,i (x) u_B,j)."""
        return precision_eigvals(self.a_vals, self.b_vals, pseudo_data, prior_precision, damping)

    def data_free_eigvals(self, pseudo_data: float, prior_precision: float, damping: Damping = "eigen") -> np.ndarray:
        """E0 `(q,)`: the precision's eigenvalues along an input direction without data (a = 0)."""
        return precision_eigvals(np.zeros(1), self.b_vals, pseudo_data, prior_precision, damping)[0]

    def logdet(self, pseudo_data: float, prior_precision: float, damping: Damping = "eigen") -> float:
        """log det of the damped precision `(p q, p q)`."""
        return float(np.log(self.precision_eigvals(pseudo_data, prior_precision, damping)).sum())

    # ------------------------------------------------------------------ per-input covariance
    def output_variance_operator(
        self, pseudo_data: float, prior_precision: float, damping: Damping = "eigen"
    ) -> "OutputVariance":
        """The pieces of c(x) (see the module docstring), restricted to active input directions."""
        inverse = 1.0 / self.precision_eigvals(pseudo_data, prior_precision, damping)  # (p, q)
        base = 1.0 / self.data_free_eigvals(pseudo_data, prior_precision, damping)  # (q,)
        delta = inverse - base[None, :]  # (p, q), <= 0
        active = np.abs(delta).max(axis=1) > ACTIVE_TOLERANCE * base.max()
        return OutputVariance(self.a_vecs[:, active], delta[active], base)

    def output_coefficients(
        self, x: np.ndarray, pseudo_data: float, prior_precision: float, damping: Damping = "eigen"
    ) -> np.ndarray:
        """c `(N, q)`: Cov(W x_n) = U_B diag(c_n) U_B^T for inputs x `(N, p)` (float64)."""
        return self.output_variance_operator(pseudo_data, prior_precision, damping).coefficients(x)

    # ------------------------------------------------------------------ samples
    def sample(
        self,
        mean: np.ndarray,
        num_samples: int,
        seed: int,
        pseudo_data: float,
        prior_precision: float,
        damping: Damping = "eigen",
        dtype=np.float32,
    ) -> np.ndarray:
        """S draws `(S, q, p)` of W ~ N(mean, precision^-1), mean `(q, p)`."""
        scale = self.precision_eigvals(pseudo_data, prior_precision, damping).T ** -0.5  # (q, p)
        rng = np.random.default_rng(seed)
        q, p = mean.shape
        noise = rng.standard_normal((num_samples, q, p)) * scale[None]  # Z / sqrt(E^T), eigenbasis
        # Two plain GEMMs over all S draws: U_B (.) then (.) U_A^T.
        left = self.b_vecs @ noise.transpose(1, 0, 2).reshape(q, num_samples * p)  # (q, S*p)
        left = left.reshape(q, num_samples, p).transpose(1, 0, 2).reshape(num_samples * q, p)
        draws = (left @ self.a_vecs.T).reshape(num_samples, q, p)
        draws += mean[None]
        return draws.astype(dtype, copy=False)

    def covariance(self, pseudo_data: float, prior_precision: float, damping: Damping = "eigen") -> np.ndarray:
        """Dense covariance of vec(W) `(p q, p q)` (column-major vec). For tests and tiny problems."""
        basis = np.kron(self.a_vecs, self.b_vecs)  # column (i, j) -> i * q + j
        inverse = 1.0 / self.precision_eigvals(pseudo_data, prior_precision, damping).reshape(-1)
        return (basis * inverse) @ basis.T


@dataclass(frozen=True)
class OutputVariance:
    """c(x) = |x|^2 base + ((x U_active)^2) delta, precomputed for one (n, lam, damping)."""

    vecs: np.ndarray  # U_A restricted to active directions (p, r)
    delta: np.ndarray  # 1/E - 1/E0 on those directions (r, q)
    base: np.ndarray  # 1/E0 (q,)

    def coefficients(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        projected = x @ self.vecs  # (N, r)
        return np.einsum("np,np->n", x, x)[:, None] * self.base[None, :] + (projected**2) @ self.delta  # (N, q)


def precision_eigvals(
    a_vals: np.ndarray, b_vals: np.ndarray, pseudo_data: float, prior_precision: float, damping: Damping = "eigen"
) -> np.ndarray:
    """E `(p, q)` from the undamped eigenvalues (see the module docstring)."""
    a = np.clip(np.asarray(a_vals, dtype=np.float64), 0.0, None)
    b = np.clip(np.asarray(b_vals, dtype=np.float64), 0.0, None)
    if check_damping(damping) == "eigen":
        return pseudo_data * np.outer(a, b) + prior_precision
    return np.outer(_ritter_side(a, pseudo_data, prior_precision), _ritter_side(b, pseudo_data, prior_precision))


def effective_parameters(
    a_vals: np.ndarray, b_vals: np.ndarray, pseudo_data: float, prior_precision: float, damping: Damping = "eigen"
) -> float:
    """gamma = sum (1 - lam / E): how many parameter directions the data determine (MacKay)."""
    return float((1.0 - prior_precision / precision_eigvals(a_vals, b_vals, pseudo_data, prior_precision, damping)).sum())


def _ritter_side(eigvals: np.ndarray, pseudo_data: float, prior_precision: float) -> np.ndarray:
    return np.sqrt(pseudo_data) * np.clip(eigvals, 0.0, None) + np.sqrt(prior_precision)


def eigendecompose(A: np.ndarray, B: np.ndarray) -> EigenFactors:
    """Symmetrise in float64 and eigendecompose both factors."""
    a = np.asarray(A, dtype=np.float64)
    b = np.asarray(B, dtype=np.float64)
    a_vals, a_vecs = np.linalg.eigh(0.5 * (a + a.T))
    b_vals, b_vecs = np.linalg.eigh(0.5 * (b + b.T))
    return EigenFactors(np.clip(a_vals, 0.0, None), a_vecs, np.clip(b_vals, 0.0, None), b_vecs)
