"""Laplace posterior over a linear head W (K x D, + bias) on imported embeddings.

For embeddings that come without an encoder there is no projection to linearise, so the
Bayesian part is multiclass logistic regression on the unit-normalised embeddings x:
logits f = W [x; 1]. Prior N(W_0, lam^-1 I) on every weight (bias included) with
W_0 = [s h_k; 0] (class-prompt text embeddings scaled by the logit scale, i.e. the zero-shot
classifier) when prompts exist, else zero.

MAP: the regularised multinomial logistic regression argmin sum_i CE(W x_i, y_i) +
lam/2 |W - W_0|^2, solved to a gradient tolerance by L-BFGS with the exact gradient (with
W_0 = 0 this is scikit-learn's `LogisticRegression(C=1/lam, fit_intercept=False)` on [x; 1]).

Curvature: last-layer KFAC, A = (1/sqrt L) sum x x^T `(D+1, D+1)`, B = (1/sqrt L) sum
(diag p - p p^T) `(K, K)` at the MAP, damped exactly in its eigenbasis (A (x) B + lam I, as
laplace-torch's decomposed Kronecker form; see `kronecker.py`). lam maximises the full Laplace
evidence, each candidate lam with its own MAP (`evidence.maximise_log_scalar`), so the MAP and
the evidence share one prior. Why KFAC rather than the full GGN: the full GGN has (K(D+1))^2
entries, ~2.6e11 for D = 512, K = 1000, while KFAC needs (D+1)^2 + K^2 numbers, and the logit
variance of an input costs one projection onto the data-carrying eigen-directions of A
(r <= labels of them). With zero labels A = B = 0 and the posterior is the prior.

laplace-torch is the reference in the tests (same lam, evidence and predictive on small
problems) but not a runtime dependency: it wants an nn.Module and a DataLoader, keeps float32
factors and samples per call, while here the factors are float64 eigendecompositions reused
across lam values and samples are shared across all inputs.
"""


from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from alkit.posterior.base import FeatureKind, PosteriorProvenance
from alkit.posterior.head_inputs import HeadInputs, HeadSamples, head_inputs, prepare_head_inputs
from alkit.posterior.kfac import KroneckerFactors
from alkit.posterior.kronecker import EigenFactors, check_damping, effective_parameters, eigendecompose
from alkit.posterior.laplace_head_calibration import calibrate_head
from alkit.posterior.laplace_head_fit import LaplaceHeadSettings, fit_map_head, head_log_evidence, optimise_head_evidence
from alkit.posterior.probcosine import probit_softmax

KIND = "laplace_head"
CHUNK_SIZE = 65536  # inputs per float32 matmul in `logit_moments`


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
    damping: str = "eigen"
    input_mean: np.ndarray | None = None  # mu (D,) of `input_standardisation`; None: no centring
    input_scale: float = 1.0  # sigma
    temperature: float = 1.0  # T: the predictive's logits are T f (see `calibrate_head`)
    variance_scale: float = 1.0  # tau: the predictive's f ~ N(W_MAP x, tau Cov); samples keep tau = 1
    kind: str = field(default=KIND, init=False)
    feature_kind: ClassVar[FeatureKind] = FeatureKind.EMBEDDING
    fast_sample_logits: ClassVar[bool] = True

    pseudo_data = 1.0

    @property
    def num_classes(self) -> int:
        return self.weights.shape[0]

    @property
    def dim(self) -> int:
        return self.weights.shape[1] - 1

    def _augment(self, x, dtype=np.float64) -> np.ndarray:
        return head_inputs(x, self.dim, self.input_mean, self.input_scale, dtype)

    @cached_property
    def _variance_operator(self):
        """(U_A active (D+1, r), delta (r, K), base (K,), R (K, K)): see `kronecker.py` and
        `logit_moments`; R maps c(x) to the variances of the centred logits."""
        operator = self.eigen.output_variance_operator(self.pseudo_data, self.prior_precision, self.damping)
        centred = self.eigen.b_vecs - self.eigen.b_vecs.mean(axis=0, keepdims=True)  # C U_B, C = I - 11^T/K
        return operator.vecs, operator.delta, operator.base, centred**2

    def logit_moments(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Linear-Gaussian moments `(N, K), (N, K)`: mean W x, and the variances of the CENTRED
        logits f - mean_k f_k, diag(C U_B diag(c(x)) U_B^T C) with c(x) from the damped KFAC
        spectrum. Softmax ignores a shift shared by all logits, and no label constrains that
        direction (B 1 = 0), so it keeps its prior variance 1/lam; left in, it inflates every
        marginal variance and the probit predictive comes out far too flat (measured: ECE 0.33
        at 1,000 labels on digits). The centred logits have the same softmax and drop it."""
        import torch

        vecs, delta, base, b_sq = self._variance_operator
        num_classes = self.num_classes
        fused = torch.from_numpy(np.concatenate([self.weights.T, vecs], axis=1).astype(np.float32))  # (D+1, K+r)
        delta_t = torch.from_numpy(delta.astype(np.float32))  # (r, K)
        base_t = torch.from_numpy(base.astype(np.float32))  # (K,)
        b_sq_t = torch.from_numpy(b_sq.T.astype(np.float32))  # (K_eig, K)
        x = np.asarray(x)
        means, variances = [], []
        for lo in range(0, x.shape[0], CHUNK_SIZE):
            xa = torch.from_numpy(self._augment(x[lo : lo + CHUNK_SIZE], np.float32))
            out = xa @ fused  # (n, K + r)
            coefficients = (xa * xa).sum(dim=1, keepdim=True) * base_t + (out[:, num_classes:] ** 2) @ delta_t  # (n, K_eig)
            means.append(out[:, :num_classes].numpy())
            variances.append((coefficients.clamp_min(0) @ b_sq_t).numpy())  # (n, K)
        scale = self.temperature
        return scale * np.concatenate(means), (scale * scale * self.variance_scale) * np.concatenate(variances)

    def predict(self, x) -> np.ndarray:
        import torch

        mean, var = self.logit_moments(x)
        scaled = torch.from_numpy(mean) / torch.sqrt(1.0 + (np.pi / 8.0) * torch.from_numpy(var))
        return torch.softmax(scaled, dim=-1).numpy()

    def map_predict(self, x) -> np.ndarray:
        logits = self._augment(x) @ self.weights.T
        return probit_softmax(logits, np.zeros_like(logits))

    def sample_weights(self, num_samples: int, seed: int) -> HeadSamples:
        """S shared draws from the evidence posterior N(W_MAP, precision^-1).

        Deliberately uncalibrated: T and tau (`calibrate_head`) make the predictive sharp where
        cross-validation asks for it, and tau can go to ~1e-3; shrinking the samples as much would
        leave BALD and EPIG below their Monte Carlo noise. Acquisition ranks by the posterior's
        own epistemic spread; `predict` and `logit_moments` are the calibrated predictive."""
        draws = self.eigen.sample(self.weights, num_samples, seed, self.pseudo_data, self.prior_precision, self.damping)
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

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {
            "weights": self.weights, "prior_weights": self.prior_weights, "A": self.factors.A, "B": self.factors.B,
            "a_vals": self.eigen.a_vals, "a_vecs": self.eigen.a_vecs, "b_vals": self.eigen.b_vals,
            "b_vecs": self.eigen.b_vecs,
        }
        header = {
            "prior_precision": self.prior_precision, "num_inputs": self.factors.num_inputs, "damping": self.damping,
            "temperature": self.temperature, "variance_scale": self.variance_scale, "input_scale": self.input_scale,
        }
        if self.input_mean is not None:
            arrays["input_mean"] = self.input_mean
        return arrays, header

    @classmethod
    def from_state(cls, arrays, header, provenance, classes, embedding_spec_key) -> "LaplaceHeadPosterior":
        factors = KroneckerFactors(arrays["A"], arrays["B"], int(header["num_inputs"]), "softmax", None, True)
        eigen = EigenFactors(arrays["a_vals"], arrays["a_vecs"], arrays["b_vals"], arrays["b_vecs"])
        return cls(
            arrays["weights"], arrays["prior_weights"], factors, eigen, float(header["prior_precision"]),
            provenance, tuple(classes), embedding_spec_key,
            check_damping(header.get("damping", "ritter")),  # files written before the eigen form were Ritter
            arrays.get("input_mean"), float(header.get("input_scale", 1.0)),
            float(header.get("temperature", 1.0)), float(header.get("variance_scale", 1.0)),
        )


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
    unlabelled: np.ndarray | None = None,
) -> LaplaceHeadPosterior:
    """Fit the head (MAP + KFAC + lam by evidence + predictive calibration).

    `unlabelled` `(M, D)`: embeddings to estimate the input centring from (the pool); without
    them the labelled embeddings are used. Zero labels need class prompts.

    Runs with one BLAS thread (`threads.one_thread`): the fit is hundreds of small matmuls."""
    from alkit.posterior.threads import one_thread

    check_damping(settings.damping)
    inputs = prepare_head_inputs(embeddings, labels, num_classes, class_text, logit_scale, classes, unlabelled)
    with one_thread():
        return _fit_prepared_head(inputs, num_classes, class_text, logit_scale, settings, embedding_spec_key, parent_version)


def _fit_prepared_head(
    inputs: HeadInputs, num_classes, class_text, logit_scale, settings, embedding_spec_key, parent_version
) -> LaplaceHeadPosterior:
    xa, labels, prior, dim = inputs.xa, inputs.labels, inputs.prior, inputs.dim
    report: dict[str, Any] = {}
    if labels.size == 0:
        lam = settings.fixed_prior_precision or settings.initial_prior_precision
        weights = prior.copy()
        factors = KroneckerFactors(np.zeros((dim + 1, dim + 1)), np.zeros((num_classes, num_classes)), 0, "softmax", None, True)
        eigen = eigendecompose(factors.A, factors.B)
    else:
        if settings.fixed_prior_precision is not None:
            lam = float(settings.fixed_prior_precision)
            fit = fit_map_head(xa, labels, prior, lam, None, settings.gradient_tolerance, settings.max_iterations)
            weights = fit.weights
            value, factors, eigen = head_log_evidence(xa, labels, prior, lam, weights, settings.damping)
            report = {"log_evidence": value, "map_converged": fit.converged, "map_iterations": fit.iterations}
        else:
            found = optimise_head_evidence(xa, labels, prior, settings)
            lam, weights, factors, eigen = found.prior_precision, found.weights, found.factors, found.eigen
            report = {
                "log_evidence": found.log_evidence, "prior_precision_on_bound": found.on_bound,
                "evidence_evaluations": found.evaluations, "map_converged": found.converged,
            }
        report["effective_parameters"] = effective_parameters(eigen.a_vals, eigen.b_vals, 1.0, lam, settings.damping)
        report.update(calibrate_head(xa, labels, prior, lam, weights, settings))
    source = f"{labels.size} labelled embeddings" + (" + class-prompt prior" if class_text is not None else "")
    provenance = PosteriorProvenance(
        kind=KIND, curvature_source=source, labels_used=int(labels.size), parent_version=parent_version,
        settings={**settings.as_dict(), "logit_scale": float(logit_scale), **report},
    )
    return LaplaceHeadPosterior(
        weights, prior, factors, eigen, float(lam), provenance, inputs.classes, embedding_spec_key, settings.damping,
        inputs.input_mean, inputs.input_scale, float(report.get("temperature", 1.0)), float(report.get("variance_scale", 1.0)),
    )
