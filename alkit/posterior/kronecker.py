"""Damped Kronecker-factored precision `A' (x) B'` held as eigendecompositions.

With A = U_A diag(a) U_A^T and B = U_B diag(b) U_B^T (float64), the Ritter-style damped
factors `A' = sqrt(n) A + sqrt(lam) I`, `B' = sqrt(n) B + sqrt(lam) I` share the
eigenvectors, with eigenvalues `sqrt(n) a + sqrt(lam)`. Changing n or lam therefore needs no
refactorisation: inverses, inverse square roots and log-determinants are diagonal rescalings.
Covariance of vec(W) (column-major vec of W, shape (q, p)) is `A'^-1 (x) B'^-1`: the matrix
normal with row covariance B'^-1 and column covariance A'^-1.

Tiny negative eigenvalues (round-off of a PSD sum) are clipped to zero, so the damped factors
are always positive definite when lam > 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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

    def damped_a(self, pseudo_data: float, prior_precision: float) -> np.ndarray:
        return damped_eigvals(self.a_vals, pseudo_data, prior_precision)

    def damped_b(self, pseudo_data: float, prior_precision: float) -> np.ndarray:
        return damped_eigvals(self.b_vals, pseudo_data, prior_precision)

    def inverse_a(self, pseudo_data: float, prior_precision: float) -> np.ndarray:
        """A'^-1 `(p, p)`."""
        return _from_eig(self.a_vecs, 1.0 / self.damped_a(pseudo_data, prior_precision))

    def inverse_b(self, pseudo_data: float, prior_precision: float) -> np.ndarray:
        """B'^-1 `(q, q)`."""
        return _from_eig(self.b_vecs, 1.0 / self.damped_b(pseudo_data, prior_precision))

    def inverse_sqrt_a(self, pseudo_data: float, prior_precision: float) -> np.ndarray:
        """L_A `(p, p)` with L_A L_A^T = A'^-1."""
        return self.a_vecs * self.damped_a(pseudo_data, prior_precision) ** -0.5

    def inverse_sqrt_b(self, pseudo_data: float, prior_precision: float) -> np.ndarray:
        """L_B `(q, q)` with L_B L_B^T = B'^-1."""
        return self.b_vecs * self.damped_b(pseudo_data, prior_precision) ** -0.5


def damped_eigvals(eigvals: np.ndarray, pseudo_data: float, prior_precision: float) -> np.ndarray:
    """Eigenvalues of `sqrt(n) M + sqrt(lam) I` from those of M (clipped at 0)."""
    return np.sqrt(pseudo_data) * np.clip(eigvals, 0.0, None) + np.sqrt(prior_precision)


def _from_eig(vecs: np.ndarray, vals: np.ndarray) -> np.ndarray:
    matrix = (vecs * vals) @ vecs.T
    return 0.5 * (matrix + matrix.T)


def eigendecompose(A: np.ndarray, B: np.ndarray) -> EigenFactors:
    """Symmetrise in float64 and eigendecompose both factors."""
    a = np.asarray(A, dtype=np.float64)
    b = np.asarray(B, dtype=np.float64)
    a_vals, a_vecs = np.linalg.eigh(0.5 * (a + a.T))
    b_vals, b_vecs = np.linalg.eigh(0.5 * (b + b.T))
    return EigenFactors(np.clip(a_vals, 0.0, None), a_vecs, np.clip(b_vals, 0.0, None), b_vecs)
