"""Laplace posterior over a linear head W (K x D, + bias) on imported embeddings.

For embeddings that come without an encoder there is no projection to linearise, so the
Bayesian part is multiclass logistic regression on the unit-normalised embeddings x:
logits f = W [x; 1]. Prior N(W_0, lam^-1 I) with W_0 = [s h_k; 0] (class-prompt text
embeddings scaled by the logit scale, i.e. the zero-shot classifier) when prompts exist,
else zero. lam by the Laplace evidence, alternating with MAP fits (MacKay), see `evidence.py`.

Curvature: last-layer KFAC with A = (1/sqrt N) sum x x^T ((D+1) x (D+1)) and
B = (1/sqrt N) sum (diag p - p p^T) (K x K), damped like BayesVLM (A' = A + sqrt(lam) I,
B' = B + sqrt(lam) I, pseudo-data n = 1). Why KFAC rather than the full GGN: the full GGN
has (K(D+1))^2 entries, ~2.6e11 for D = 512, K = 1000 -- it cannot be stored or factorised,
while KFAC needs (D+1)^2 + K^2 numbers and makes the logit covariance of an input
`(x^T A'^-1 x) B'^-1`, so exact linear-Gaussian logit moments cost one quadratic form per
input. With zero labels A = B = 0 and A' (x) B' = lam I: exactly the prior, so the prior
predictive works with prompts and no labels.

laplace-torch (laplace-torch 0.3 on PyPI) is not used: it wants a torch nn.Module and a
DataLoader, pulls in curvlinops/asdl for KFAC, keeps float32 factors, and samples per call;
here the head is two arrays, the factors must be float64 eigendecompositions reused across
lam values, and samples must be shared across all inputs -- about 100 lines of our own.

Speed: the quadratic form uses only the eigen-directions of A that carry data
(x^T A'^-1 x = |x|^2 / sqrt(lam) + sum_active (u_i^T x)^2 (1/a'_i - 1/sqrt(lam))), and is
fused with the mean logits into ONE (N x (D+1)) @ ((D+1) x (K + r)) matmul; r <= labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from alkit.errors import InputError, StateError
from alkit.posterior.base import PosteriorProvenance
from alkit.posterior.evidence import optimise_prior_precision
from alkit.posterior.kfac import KroneckerFactors
from alkit.posterior.kronecker import EigenFactors, eigendecompose
from alkit.posterior.probcosine import probit_softmax
from alkit.posterior.sampling import sample_matrix_normal

KIND = "laplace_head"
CHUNK_SIZE = 65536
# Eigen-directions of A whose damped inverse differs from 1/sqrt(lam) by less than this
# relative amount are treated as prior-only (their contribution is below float32 noise).
ACTIVE_TOLERANCE = 1e-7


def augment(embeddings: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Unit-normalise embeddings `(N, D)` and append the bias input: `(N, D + 1)`."""
    x = np.asarray(embeddings, dtype=dtype)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.concatenate([x, np.ones((x.shape[0], 1), dtype=dtype)], axis=1)


def prior_mean(num_classes: int, dim: int, class_text: np.ndarray | None, logit_scale: float) -> np.ndarray:
    """W_0 `(K, D + 1)`: s * unit class-prompt embeddings with zero bias, or zeros."""
    mean = np.zeros((num_classes, dim + 1))
    if class_text is not None:
        text = np.asarray(class_text, dtype=np.float64)
        mean[:, :dim] = logit_scale * text / np.linalg.norm(text, axis=1, keepdims=True)
    return mean


@dataclass(frozen=True)
class LaplaceHeadSettings:
    """Fitting choices for `fit_laplace_head`."""

    initial_prior_precision: float = 1.0  # also the prior precision when there are no labels
    evidence_rounds: int = 5  # MAP fit <-> lam by evidence alternations
    max_iterations: int = 300  # L-BFGS iterations per MAP fit
    prior_bounds: tuple[float, float] = (1e-4, 1e6)
    fixed_prior_precision: float | None = None  # skip the evidence search and use this lam

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class HeadSamples:
    """S shared head draws `(S, K, D + 1)`."""

    weights: np.ndarray
    seed: int

    @cached_property
    def stacked(self) -> np.ndarray:
        """The S heads side by side `(D + 1, S*K)`, column s*K + k = W_s[k]: logits of all
        samples for a chunk are then ONE `(n, D+1) x (D+1, S*K)` matmul. Built once per draw."""
        num_samples, num_classes, width = self.weights.shape
        return np.ascontiguousarray(self.weights.transpose(2, 0, 1).reshape(width, num_samples * num_classes))


@dataclass(frozen=True)
class LaplaceHeadPosterior:
    """Posterior over W; implements `alkit.posterior.base.Posterior` with x = embeddings (N, D)."""

    weights: np.ndarray  # W_MAP (K, D + 1), bias last
    prior_weights: np.ndarray  # W_0 (K, D + 1)
    factors: KroneckerFactors  # A (D+1, D+1), B (K, K)
    eigen: EigenFactors
    prior_precision: float
    provenance: PosteriorProvenance
    classes: tuple[str, ...] = ()
    embedding_spec_key: str = "unspecified"
    kind: str = field(default=KIND, init=False)

    pseudo_data = 1.0

    @property
    def num_classes(self) -> int:
        return self.weights.shape[0]

    @property
    def dim(self) -> int:
        return self.weights.shape[1] - 1

    def _augment(self, x, dtype=np.float64) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InputError(f"embeddings have shape {x.shape}; this head expects (N, {self.dim})")
        return augment(x, dtype)

    def _variance_operator(self) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
        """(U_active (D+1, r), coefficients (r,), 1/sqrt(lam), diag(B'^-1) (K,))."""
        damped = self.eigen.damped_a(self.pseudo_data, self.prior_precision)
        base = 1.0 / np.sqrt(self.prior_precision)
        coefficients = 1.0 / damped - base  # <= 0
        active = np.abs(coefficients) > ACTIVE_TOLERANCE * base
        inv_b_diag = np.diag(self.eigen.inverse_b(self.pseudo_data, self.prior_precision)).copy()
        return self.eigen.a_vecs[:, active], coefficients[active], base, inv_b_diag

    def logit_moments(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Exact linear-Gaussian moments: mean W x, variance (x^T A'^-1 x) [B'^-1]_kk `(N, K)`."""
        import torch

        vecs, coefficients, base, inv_b_diag = self._variance_operator()
        num_classes = self.num_classes
        fused = torch.from_numpy(np.concatenate([self.weights.T, vecs], axis=1).astype(np.float32))  # (D+1, K+r)
        coeff = torch.from_numpy(coefficients.astype(np.float32))
        b_diag = torch.from_numpy(inv_b_diag.astype(np.float32))
        x = np.asarray(x)
        means, variances = [], []
        for lo in range(0, x.shape[0], CHUNK_SIZE):
            xa = torch.from_numpy(self._augment(x[lo : lo + CHUNK_SIZE], np.float32))
            out = xa @ fused  # (n, K + r)
            quad = (xa * xa).sum(dim=1) * base + (out[:, num_classes:] ** 2) @ coeff  # (n,)
            means.append(out[:, :num_classes].numpy())
            variances.append((quad.clamp_min(0)[:, None] * b_diag[None, :]).numpy())
        return np.concatenate(means), np.concatenate(variances)

    def predict(self, x) -> np.ndarray:
        import torch

        mean, var = self.logit_moments(x)
        scaled = torch.from_numpy(mean) / torch.sqrt(1.0 + (np.pi / 8.0) * torch.from_numpy(var))
        return torch.softmax(scaled, dim=-1).numpy()

    def map_predict(self, x) -> np.ndarray:
        logits = self._augment(x) @ self.weights.T
        return probit_softmax(logits, np.zeros_like(logits))

    def sample_weights(self, num_samples: int, seed: int) -> HeadSamples:
        draws = sample_matrix_normal(
            self.weights,
            self.eigen.inverse_sqrt_b(self.pseudo_data, self.prior_precision),
            self.eigen.inverse_sqrt_a(self.pseudo_data, self.prior_precision),
            num_samples,
            seed,
        )
        return HeadSamples(draws, seed)

    def _sample_logits_tensor(self, weights: HeadSamples, x):
        """W_s [x; 1] for all draws as a torch `(n, S, K)` tensor: one matmul against the
        stacked heads, in the draws' dtype (float32 by default)."""
        import torch

        num_samples, num_classes, _ = weights.weights.shape
        xa = torch.from_numpy(self._augment(x, weights.weights.dtype))
        logits = xa @ torch.from_numpy(weights.stacked)  # (n, S*K)
        return logits.view(xa.shape[0], num_samples, num_classes)

    def sample_logits(self, weights: HeadSamples, x) -> np.ndarray:
        """W_s [x; 1] for each shared draw: `(S, N, K)`, a strided view of `(N, S, K)` memory
        (the scorers' logits fast path reads it without a copy). Chunk x to keep it in cache."""
        return self._sample_logits_tensor(weights, x).permute(1, 0, 2).numpy()

    def sample_probs(self, weights: HeadSamples, x) -> np.ndarray:
        """softmax(W_s x) for each shared draw: `(S, N, K)` (a strided view of `(N, S, K)` memory)."""
        import torch

        return torch.softmax(self._sample_logits_tensor(weights, x), dim=-1).permute(1, 0, 2).numpy()

    def save(self, directory: Path) -> None:
        from alkit.posterior.io import save_posterior

        save_posterior(self, directory)

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {
            "weights": self.weights, "prior_weights": self.prior_weights, "A": self.factors.A, "B": self.factors.B,
            "a_vals": self.eigen.a_vals, "a_vecs": self.eigen.a_vecs, "b_vals": self.eigen.b_vals,
            "b_vecs": self.eigen.b_vecs,
        }
        return arrays, {"prior_precision": self.prior_precision, "num_inputs": self.factors.num_inputs}

    @classmethod
    def from_state(cls, arrays, header, provenance, classes, embedding_spec_key) -> "LaplaceHeadPosterior":
        factors = KroneckerFactors(arrays["A"], arrays["B"], int(header["num_inputs"]), "softmax", None, True)
        eigen = EigenFactors(arrays["a_vals"], arrays["a_vecs"], arrays["b_vals"], arrays["b_vecs"])
        return cls(
            arrays["weights"], arrays["prior_weights"], factors, eigen, float(header["prior_precision"]),
            provenance, tuple(classes), embedding_spec_key,
        )


def head_factors(xa: np.ndarray, weights: np.ndarray) -> KroneckerFactors:
    """Last-layer KFAC at W: A = sum x x^T / sqrt N, B = sum (diag p - p p^T) / sqrt N."""
    n = xa.shape[0]
    logits = xa @ weights.T  # (N, K)
    probs = probit_softmax(logits, np.zeros_like(logits))
    a = xa.T @ xa
    b = np.diag(probs.sum(axis=0)) - probs.T @ probs
    root = np.sqrt(max(n, 1))
    return KroneckerFactors(0.5 * (a + a.T) / root, 0.5 * (b + b.T) / root, n, "softmax", None, True)


def fit_map_head(
    xa: np.ndarray, labels: np.ndarray, prior: np.ndarray, prior_precision: float, max_iterations: int
) -> np.ndarray:
    """argmin_W sum_i CE(W x_i, y_i) + lam/2 |W - W_0|^2, full-batch L-BFGS in float64."""
    import torch

    x = torch.as_tensor(xa, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    anchor = torch.as_tensor(prior, dtype=torch.float64)
    weights = anchor.clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS(
        [weights], lr=1.0, max_iter=max_iterations, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-9, tolerance_change=1e-12,
    )

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weights.T, y, reduction="sum")
        loss = loss + 0.5 * prior_precision * ((weights - anchor) ** 2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return weights.detach().numpy().copy()


def fit_laplace_head(
    embeddings: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    class_text: np.ndarray | None = None,
    logit_scale: float = 1.0,
    settings: LaplaceHeadSettings = LaplaceHeadSettings(),
    classes=None,
    embedding_spec_key: str = "unspecified",
    parent_version: int | None = None,
) -> LaplaceHeadPosterior:
    """Fit the head (MAP + KFAC + lam by evidence). Zero labels need class prompts."""
    x = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    dim = class_text.shape[1] if class_text is not None and x.size == 0 else x.shape[1]
    if labels.shape[0] != x.shape[0]:
        raise InputError(f"{labels.shape[0]} labels for {x.shape[0]} embeddings; pass one label per row")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"labels must lie in [0, {num_classes}); got {labels.min()}..{labels.max()}")
    if labels.size == 0 and class_text is None:
        raise StateError("no labels and no class prompts: add class prompts (zero-shot prior) or label some images")
    prior = prior_mean(num_classes, dim, class_text, logit_scale)
    lam = settings.initial_prior_precision
    xa = augment(x) if labels.size else np.zeros((0, dim + 1))
    weights = prior.copy()
    factors = KroneckerFactors(np.zeros((dim + 1, dim + 1)), np.zeros((num_classes, num_classes)), 0, "softmax", None, True)
    rounds = 0
    if settings.fixed_prior_precision is not None:
        lam = settings.fixed_prior_precision
    search = labels.size and settings.fixed_prior_precision is None
    for rounds in range(1, settings.evidence_rounds + 1 if search else 1):
        weights = fit_map_head(xa, labels, prior, lam, settings.max_iterations)
        factors = head_factors(xa, weights)
        eigen = eigendecompose(factors.A, factors.B)
        new_lam = optimise_prior_precision(
            eigen.a_vals, eigen.b_vals, 1.0, float(np.sum((weights - prior) ** 2)), settings.prior_bounds
        )
        converged = abs(np.log(new_lam / lam)) < 0.05
        lam = new_lam
        if converged:
            break
    if labels.size:
        weights = fit_map_head(xa, labels, prior, lam, settings.max_iterations)
        factors = head_factors(xa, weights)
    eigen = eigendecompose(factors.A, factors.B)
    source = f"{labels.size} labelled embeddings" + (" + class-prompt prior" if class_text is not None else "")
    provenance = PosteriorProvenance(
        kind=KIND, curvature_source=source, labels_used=int(labels.size), parent_version=parent_version,
        settings={**settings.as_dict(), "logit_scale": float(logit_scale), "evidence_rounds_used": rounds},
    )
    names = tuple(str(c) for c in classes) if classes is not None else tuple(str(k) for k in range(num_classes))
    if len(names) != num_classes:
        raise InputError(f"{len(names)} class names for {num_classes} classes; pass one name per class")
    return LaplaceHeadPosterior(weights, prior, factors, eigen, float(lam), provenance, names, embedding_spec_key)
