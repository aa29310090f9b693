"""BayesVLM posterior: Kronecker Laplace over the image projection P (D x d) of a CLIP model.

Inputs are phi `(N, d)`, the pooled features that enter `visual.proj`. Class logits are
`s cos(P phi, h_k)` with h_k the class-prompt text embeddings. By default the text side is
FIXED at its MAP (class prompts are few and known; the image side carries the uncertainty
of the pool); pass a `TextSide` (text features psi, text projection Q and its factors) to
make the class embeddings Gaussian too: ProbCosine and the sampler then use both sides.

Analytic predictive: ProbCosine moments + probit (see `probcosine.py`). Sampling: S
projection draws shared across all inputs (see `sampling.py`).

`refit` is a pure function (science.md section 3): parent posterior + labels + settings ->
NEW posterior; the parent's arrays are never written to (tests compare them before/after).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from alkit.errors import InputError
from alkit.posterior.base import PosteriorProvenance
from alkit.posterior.evidence import optimise_prior_precision
from alkit.posterior.kfac import KroneckerFactors, add_inputs, kfac_factors, kfac_sums, with_bias_column
from alkit.posterior.kronecker import EigenFactors, eigendecompose
from alkit.posterior.probcosine import (
    Covariance,
    GaussianEmbeddings,
    cosine_moments,
    embedding_moments,
    fixed_embeddings,
    probit_softmax,
)
from alkit.posterior.sampling import cosine_softmax_probs, sample_matrix_normal

KIND = "bayesvlm"
# Inputs per chunk in logit_moments / sample_probs.
CHUNK_SIZE = 8192


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def _default_classes(num_classes: int, classes) -> tuple[str, ...]:
    names = tuple(str(c) for c in classes) if classes is not None else tuple(str(k) for k in range(num_classes))
    if len(names) != num_classes:
        raise InputError(f"{len(names)} class names for {num_classes} class prompts; pass one name per prompt")
    return names


@dataclass(frozen=True)
class TextSide:
    """Optional Gaussian text side: class prompt features psi `(K, d_t)`, Q `(D, d_t)`, factors."""

    features: np.ndarray
    projection: np.ndarray
    factors: KroneckerFactors
    eigen: EigenFactors
    pseudo_data: float
    prior_precision: float

    def embeddings(self) -> GaussianEmbeddings:
        psi = with_bias_column(self.features, self.factors.bias)
        return embedding_moments(
            psi,
            self.projection,
            self.eigen.inverse_sqrt_a(self.pseudo_data, self.prior_precision),
            self.eigen.inverse_b(self.pseudo_data, self.prior_precision),
        )


@dataclass(frozen=True)
class ProjectionSamples:
    """S shared draws: image projections `(S, D, p)`, text embeddings `(K, D)` or `(S, K, D)`."""

    projections: np.ndarray
    text: np.ndarray
    seed: int


@dataclass(frozen=True)
class RefitSettings:
    """How `refit` fine-tunes the MAP and re-chooses lam."""

    weight_decay: float = 1e-3  # towards the parent's P, on the mean cross-entropy
    max_iterations: int = 200  # L-BFGS iterations in total
    check_every: int = 10  # iterations between held-out checks
    patience: int = 3  # checks without held-out improvement before stopping
    holdout_fraction: float = 0.2
    min_labels_for_holdout: int = 50  # below this, no held-out slice (train on all labels)
    optimise_prior: bool = True

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class BayesVLMPosterior:
    """Posterior over the image projection; implements `alkit.posterior.base.Posterior`."""

    projection: np.ndarray  # P_MAP (D, p), p = d (+1 with bias)
    class_text: np.ndarray  # h_k (K, D), unit norm: the MAP class-prompt embeddings
    logit_scale: float  # s = exp(logit_scale parameter)
    factors: KroneckerFactors  # image-side A (p, p), B (D, D)
    eigen: EigenFactors
    pseudo_data: float  # n
    prior_precision: float  # lam
    provenance: PosteriorProvenance
    classes: tuple[str, ...] = ()
    embedding_spec_key: str = "unspecified"
    text_side: TextSide | None = None
    kind: str = field(default=KIND, init=False)

    @property
    def num_classes(self) -> int:
        return self.class_text.shape[0]

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_factors(
        cls,
        A_img: np.ndarray,
        B_img: np.ndarray,
        projection: np.ndarray,
        class_text: np.ndarray,
        logit_scale: float,
        pseudo_data: float,
        prior_precision: float | None = None,
        num_inputs: int = 0,
        A_txt: np.ndarray | None = None,
        B_txt: np.ndarray | None = None,
        text_features: np.ndarray | None = None,
        text_projection: np.ndarray | None = None,
        bias: bool = False,
        classes=None,
        embedding_spec_key: str = "unspecified",
        curvature_source: str = "factors",
        candidate_batch_size: int | None = None,
    ) -> "BayesVLMPosterior":
        """From precomputed KFAC factors (e.g. the reference LAION factors); lam by evidence if None."""
        projection = np.asarray(projection, dtype=np.float64)
        factors = KroneckerFactors(
            np.asarray(A_img, np.float64), np.asarray(B_img, np.float64), num_inputs,
            candidate_batch_size=candidate_batch_size, bias=bias,
        )
        if factors.p != projection.shape[1] or factors.q != projection.shape[0]:
            raise InputError(
                f"factors A {factors.A.shape} / B {factors.B.shape} do not fit projection {projection.shape}; "
                "A must be (d, d) and B (D, D) for P (D, d)"
            )
        eigen = eigendecompose(factors.A, factors.B)
        lam = prior_precision
        if lam is None:
            lam = optimise_prior_precision(eigen.a_vals, eigen.b_vals, pseudo_data, float(np.sum(projection**2)))
        text_side = None
        if A_txt is not None:
            if B_txt is None or text_features is None or text_projection is None:
                raise InputError("text-side factors need A_txt, B_txt, text_features and text_projection together")
            t_factors = KroneckerFactors(np.asarray(A_txt, np.float64), np.asarray(B_txt, np.float64), num_inputs)
            t_eigen = eigendecompose(t_factors.A, t_factors.B)
            q_proj = np.asarray(text_projection, np.float64)
            t_lam = optimise_prior_precision(t_eigen.a_vals, t_eigen.b_vals, pseudo_data, float(np.sum(q_proj**2)))
            text_side = TextSide(np.asarray(text_features, np.float64), q_proj, t_factors, t_eigen, pseudo_data, t_lam)
            class_text = np.asarray(text_features, np.float64) @ q_proj.T  # (K, d_t) @ (d_t, D)
        class_text = _unit(class_text)
        provenance = PosteriorProvenance(
            kind=KIND,
            curvature_source=curvature_source,
            labels_used=0,
            parent_version=None,
            settings={"pseudo_data": float(pseudo_data), "candidate_batch_size": candidate_batch_size},
        )
        return cls(
            projection, class_text, float(logit_scale), factors, eigen, float(pseudo_data), float(lam),
            provenance, _default_classes(class_text.shape[0], classes), embedding_spec_key, text_side,
        )

    @classmethod
    def from_pool_curvature(
        cls,
        phi: np.ndarray,
        projection: np.ndarray,
        class_text: np.ndarray,
        logit_scale: float,
        pseudo_data: float,
        candidate_batch_size: int | None = None,
        classes=None,
        embedding_spec_key: str = "unspecified",
        bias: bool = False,
    ) -> "BayesVLMPosterior":
        """Zero-shot: image-side GGN of the (unlabelled) pool against the K class prompts."""
        text = _unit(class_text)
        factors = kfac_factors(phi, projection, text, logit_scale, candidate_batch_size, "infonce", bias)
        source = f"pool images vs {text.shape[0]} class prompts (N={factors.num_inputs})"
        return cls.from_factors(
            factors.A, factors.B, projection, text, logit_scale, pseudo_data,
            num_inputs=factors.num_inputs, bias=bias, classes=classes,
            embedding_spec_key=embedding_spec_key, curvature_source=source,
            candidate_batch_size=candidate_batch_size,
        )

    # ------------------------------------------------------------------ predictions
    def _features(self, x) -> np.ndarray:
        phi = np.asarray(x, dtype=np.float64)
        if phi.ndim != 2 or phi.shape[1] + int(self.factors.bias) != self.projection.shape[1]:
            raise InputError(
                f"features have shape {phi.shape}; this posterior expects (N, {self.projection.shape[1] - int(self.factors.bias)})"
            )
        return with_bias_column(phi, self.factors.bias)

    def _text_embeddings(self) -> GaussianEmbeddings:
        return fixed_embeddings(self.class_text) if self.text_side is None else self.text_side.embeddings()

    def cosine_moments(self, x, covariance: Covariance = "delta") -> tuple[np.ndarray, np.ndarray]:
        """E[cos], Var[cos] `(N, K)` by ProbCosine, chunked over N."""
        phi = self._features(x)
        l_a = self.eigen.inverse_sqrt_a(self.pseudo_data, self.prior_precision)
        inv_b = self.eigen.inverse_b(self.pseudo_data, self.prior_precision)
        text = self._text_embeddings()
        means, variances = [], []
        for lo in range(0, phi.shape[0], CHUNK_SIZE):
            image = embedding_moments(phi[lo : lo + CHUNK_SIZE], self.projection, l_a, inv_b)
            mean, var = cosine_moments(image, text, covariance)
            means.append(mean)
            variances.append(var)
        return np.concatenate(means), np.concatenate(variances)

    def logit_moments(self, x) -> tuple[np.ndarray, np.ndarray]:
        mean_cos, var_cos = self.cosine_moments(x)
        return self.logit_scale * mean_cos, self.logit_scale**2 * var_cos

    def predict(self, x) -> np.ndarray:
        return probit_softmax(*self.logit_moments(x))

    def map_predict(self, x) -> np.ndarray:
        g = _unit(self._features(x) @ self.projection.T)  # (N, D)
        text = _unit(self.class_text if self.text_side is None else self._text_embeddings().mean)
        return probit_softmax(self.logit_scale * g @ text.T, np.zeros((g.shape[0], text.shape[0])))

    def sample_weights(self, num_samples: int, seed: int) -> ProjectionSamples:
        projections = sample_matrix_normal(
            self.projection,
            self.eigen.inverse_sqrt_b(self.pseudo_data, self.prior_precision),
            self.eigen.inverse_sqrt_a(self.pseudo_data, self.prior_precision),
            num_samples,
            seed,
        )
        text = self.class_text.astype(np.float32)
        if self.text_side is not None:
            side = self.text_side
            q_draws = sample_matrix_normal(
                side.projection,
                side.eigen.inverse_sqrt_b(side.pseudo_data, side.prior_precision),
                side.eigen.inverse_sqrt_a(side.pseudo_data, side.prior_precision),
                num_samples,
                seed + 1,
            )
            psi = with_bias_column(side.features, side.factors.bias).astype(np.float32)
            text = np.einsum("kt,sdt->skd", psi, q_draws)  # (S, K, D)
        return ProjectionSamples(projections, text, seed)

    def sample_probs(self, weights: ProjectionSamples, x) -> np.ndarray:
        phi = self._features(x).astype(weights.projections.dtype)
        chunks = [
            cosine_softmax_probs(phi[lo : lo + CHUNK_SIZE], weights.projections, weights.text, self.logit_scale)
            for lo in range(0, phi.shape[0], CHUNK_SIZE)
        ]
        return np.concatenate(chunks, axis=1)  # (S, N, K)

    def save(self, directory: Path) -> None:
        from alkit.posterior.io import save_posterior

        save_posterior(self, directory)

    # ------------------------------------------------------------------ state for io.py
    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {
            "projection": self.projection,
            "class_text": self.class_text,
            "A": self.factors.A,
            "B": self.factors.B,
            "a_vals": self.eigen.a_vals,
            "a_vecs": self.eigen.a_vecs,
            "b_vals": self.eigen.b_vals,
            "b_vecs": self.eigen.b_vecs,
        }
        header: dict[str, Any] = {
            "logit_scale": self.logit_scale,
            "pseudo_data": self.pseudo_data,
            "prior_precision": self.prior_precision,
            "factors": _factor_header(self.factors),
            "text_side": None,
        }
        if self.text_side is not None:
            side = self.text_side
            arrays.update(
                text_features=side.features, text_projection=side.projection, text_A=side.factors.A,
                text_B=side.factors.B, text_a_vals=side.eigen.a_vals, text_a_vecs=side.eigen.a_vecs,
                text_b_vals=side.eigen.b_vals, text_b_vecs=side.eigen.b_vecs,
            )
            header["text_side"] = {
                "pseudo_data": side.pseudo_data,
                "prior_precision": side.prior_precision,
                "factors": _factor_header(side.factors),
            }
        return arrays, header

    @classmethod
    def from_state(
        cls, arrays: dict[str, np.ndarray], header: dict[str, Any], provenance: PosteriorProvenance,
        classes: tuple[str, ...], embedding_spec_key: str,
    ) -> "BayesVLMPosterior":
        factors = _factors_from(arrays["A"], arrays["B"], header["factors"])
        eigen = EigenFactors(arrays["a_vals"], arrays["a_vecs"], arrays["b_vals"], arrays["b_vecs"])
        text_side = None
        if header.get("text_side"):
            info = header["text_side"]
            text_side = TextSide(
                arrays["text_features"], arrays["text_projection"],
                _factors_from(arrays["text_A"], arrays["text_B"], info["factors"]),
                EigenFactors(arrays["text_a_vals"], arrays["text_a_vecs"], arrays["text_b_vals"], arrays["text_b_vecs"]),
                float(info["pseudo_data"]), float(info["prior_precision"]),
            )
        return cls(
            arrays["projection"], arrays["class_text"], float(header["logit_scale"]), factors, eigen,
            float(header["pseudo_data"]), float(header["prior_precision"]), provenance, tuple(classes),
            embedding_spec_key, text_side,
        )


def _factor_header(factors: KroneckerFactors) -> dict[str, Any]:
    return {
        "num_inputs": factors.num_inputs,
        "likelihood": factors.likelihood,
        "candidate_batch_size": factors.candidate_batch_size,
        "bias": factors.bias,
        "settings": factors.settings,
    }


def _factors_from(A: np.ndarray, B: np.ndarray, info: dict[str, Any]) -> KroneckerFactors:
    return KroneckerFactors(
        A, B, int(info["num_inputs"]), info["likelihood"], info["candidate_batch_size"], bool(info["bias"]),
        dict(info.get("settings") or {}),
    )


# ---------------------------------------------------------------------- refit


def _split(num_labels: int, settings: RefitSettings, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(num_labels)
    if num_labels < settings.min_labels_for_holdout:
        return order, order[:0]
    held = max(1, int(round(settings.holdout_fraction * num_labels)))
    return order[held:], order[:held]


def fine_tune_projection(
    phi: np.ndarray,
    labels: np.ndarray,
    start: np.ndarray,
    class_text: np.ndarray,
    logit_scale: float,
    settings: RefitSettings,
    seed: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """MAP of P: mean cross-entropy of softmax(s cos(P phi, h_k)) + wd/2 |P - P_start|^2.

    Full-batch L-BFGS in float64 (deterministic); early stopping on a seeded held-out slice
    of the labels when there are at least `min_labels_for_holdout`. Returns (P, report).
    """
    import torch

    train, held = _split(len(labels), settings, seed)
    x = torch.as_tensor(phi, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    text = torch.as_tensor(class_text, dtype=torch.float64)
    anchor = torch.as_tensor(np.ascontiguousarray(start), dtype=torch.float64)
    weights = anchor.clone(memory_format=torch.contiguous_format).requires_grad_(True)

    def nll(idx: np.ndarray) -> "torch.Tensor":
        g = x[idx] @ weights.T  # (n, D)
        logits = logit_scale * (g / g.norm(dim=1, keepdim=True)) @ text.T  # (n, K)
        return torch.nn.functional.cross_entropy(logits, y[idx])

    optimiser = torch.optim.LBFGS(
        [weights], lr=1.0, max_iter=settings.check_every, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure():
        optimiser.zero_grad()
        loss = nll(train) + 0.5 * settings.weight_decay * ((weights - anchor) ** 2).sum()
        loss.backward()
        return loss

    best = anchor.clone()
    best_held = float("inf")
    stale = 0
    rounds = max(1, settings.max_iterations // settings.check_every)
    used = 0
    for _ in range(rounds):
        optimiser.step(closure)
        used += 1
        if len(held) == 0:
            best = weights.detach().clone()
            continue
        with torch.no_grad():
            held_nll = float(nll(held))
        if held_nll < best_held - 1e-9:
            best_held, best, stale = held_nll, weights.detach().clone(), 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    report = {"train_labels": int(len(train)), "held_out_labels": int(len(held)), "rounds": used,
              "held_out_nll": None if len(held) == 0 else best_held}
    return best.numpy(), report


def refit(
    posterior: BayesVLMPosterior,
    phi_labelled: np.ndarray,
    labels: np.ndarray,
    settings: RefitSettings = RefitSettings(),
    seed: int = 0,
    parent_version: int | None = None,
) -> BayesVLMPosterior:
    """New posterior from the parent + labels: (a) MAP fine-tune, (b) add curvature, (c) lam.

    Pure: the parent is read, never written. Labelled images enter the curvature with their
    own outer products (phi phi^T into A, InfoNCE GGN over the K class prompts at the new P
    into B), renormalised by the new input count.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != np.asarray(phi_labelled).shape[0]:
        raise InputError(f"{labels.shape} labels for {np.asarray(phi_labelled).shape[0]} features; pass one label per row")
    if labels.size and (labels.min() < 0 or labels.max() >= posterior.num_classes):
        raise InputError(f"labels must lie in [0, {posterior.num_classes}); got {labels.min()}..{labels.max()}")
    phi = posterior._features(phi_labelled)
    text = posterior.class_text
    new_p, report = fine_tune_projection(
        phi, labels, posterior.projection, text, posterior.logit_scale, settings, seed
    )
    a_sum, b_sum = kfac_sums(phi, new_p, text, posterior.logit_scale, None, "infonce", bias=False)
    factors = add_inputs(posterior.factors, a_sum, b_sum, phi.shape[0])
    eigen = eigendecompose(factors.A, factors.B)
    lam = posterior.prior_precision
    if settings.optimise_prior:
        lam = optimise_prior_precision(eigen.a_vals, eigen.b_vals, posterior.pseudo_data, float(np.sum(new_p**2)))
    provenance = PosteriorProvenance(
        kind=KIND,
        curvature_source=f"{posterior.provenance.curvature_source} + {phi.shape[0]} labelled images",
        labels_used=int(posterior.provenance.labels_used + labels.shape[0]),
        parent_version=parent_version,
        settings={**posterior.provenance.settings, "refit": settings.as_dict(), "seed": seed, "fine_tune": report},
    )
    return replace(
        posterior, projection=new_p, factors=factors, eigen=eigen, prior_precision=float(lam), provenance=provenance
    )
