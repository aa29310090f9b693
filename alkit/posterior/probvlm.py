"""ProbVLM as a posterior: probabilistic adapters on frozen embeddings (science.md section 4).

Per modality a residual MLP adapter (`probvlm_adapter.py`) maps a unit embedding x to a
generalised Gaussian per dimension (`gennorm.py`):

  h = drop(relu(W2 drop(relu(W1 x + b1)) + b2))                       (H,)
  mu = x + W_mu h + b_mu,  alpha = floor + exp(W_a h + b_a),  beta in (beta_min, beta_max) by a sigmoid

trained by `probvlm_train.train_adapters` (intra-modal denoising + labelled image / class-prompt
pairs; caption pairs are not supported).

As a posterior (x = embeddings): the predictive embedding of an image is its image adapter's
generalised Gaussian; class logits are s cos(t, h_k) against the unit class-prompt text
embeddings h_k. `logit_moments` use a second-order mean and a delta-method variance with the
diagonal aleatoric variance; `predict` is the probit softmax of those moments; `map_predict`
uses mu only. Shared samples: for ProbVLM the Protocol's `sample_weights(S, seed)` returns no
weights but shared NOISE, uniforms `(S, D)` drawn once (`ProbVLMNoise`), which `sample_probs`
turns into embedding draws for every input (`gennorm.sample_gennorm`), so EPIG/BALD see
jointly distributed samples. Dropout is NOT part of the samples (S extra adapter passes per
chunk); epistemic uncertainty is reported separately by `epistemic_uncertainty` (variance of mu
over M passes with dropout masks shared across inputs, so it does not depend on chunking).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from alkit.arrays import l2_normalise
from alkit.errors import InputError, StateError
from alkit.posterior.base import FeatureKind, PosteriorProvenance
from alkit.posterior.gennorm import QuantileTable, gennorm_variance, quantile_table, sample_gennorm
from alkit.posterior.probvlm_adapter import PARAM_NAMES, ProbVLMSettings, adapter_forward, dropout_masks, unit_rows
from alkit.posterior.probvlm_train import train_adapters

KIND = "probvlm"
CHUNK_SIZE = 65536  # inputs per adapter pass
SAMPLE_ELEMENTS = 1 << 22  # S * n * D floats materialised per sample chunk (16 MB)


@dataclass(frozen=True)
class ProbVLMNoise:
    """ProbVLM's shared samples: S uniform draws `(S, D)` (no weights: the adapters are point
    estimates), tabulated as standard generalised-Gaussian quantiles over beta."""

    table: QuantileTable
    seed: int


@dataclass(frozen=True)
class Uncertainty:
    """Per-input uncertainty `(N,)` each, summed over embedding dims."""

    aleatoric: np.ndarray
    epistemic: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return self.aleatoric + self.epistemic


@dataclass(frozen=True, eq=False)
class ProbVLMPosterior:
    """Implements `alkit.posterior.base.Posterior` with x = embeddings `(N, D)`."""

    image_params: dict  # name -> np.ndarray float32
    text_params: dict | None
    class_text: np.ndarray | None  # (K, D) unit rows; None: uncertainties only, no class probabilities
    logit_scale: float  # s, multiplies the cosine
    settings: ProbVLMSettings
    provenance: PosteriorProvenance
    classes: tuple[str, ...] = ()
    embedding_spec_key: str = "unspecified"
    kind: str = field(default=KIND, init=False)
    feature_kind: ClassVar[FeatureKind] = FeatureKind.EMBEDDING
    fast_sample_logits: ClassVar[bool] = False

    prior_precision = None  # no Laplace prior: reported as null by `alkit fit`

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.class_text is None else self.class_text.shape[0]

    @property
    def dim(self) -> int:
        return self.image_params["W1"].shape[1]

    # -- adapter outputs --

    def _inputs(self, x):
        array = np.asarray(x)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise InputError(f"embeddings have shape {array.shape}; this ProbVLM adapter expects (N, {self.dim})")
        return unit_rows(array)

    def _torch_params(self, params: dict) -> dict:
        import torch

        return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in params.items()}

    def distribution(self, x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image adapter's (mu, alpha, beta) `(N, D)` each, dropout off."""
        import torch

        params = self._torch_params(self.image_params)
        xs = self._inputs(x)
        out = []
        with torch.no_grad():
            for lo in range(0, max(xs.shape[0], 1), CHUNK_SIZE):
                out.append(adapter_forward(params, xs[lo : lo + CHUNK_SIZE], self.settings))
        return tuple(torch.cat([part[i] for part in out]).numpy() for i in range(3))

    def aleatoric_uncertainty(self, x) -> np.ndarray:
        """sum_d alpha_d^2 Gamma(3/beta_d) / Gamma(1/beta_d) per input `(N,)`."""
        import torch

        _, alpha, beta = self.distribution(x)
        return gennorm_variance(torch.from_numpy(alpha).double(), torch.from_numpy(beta).double()).sum(dim=1).numpy()

    def epistemic_uncertainty(self, x, passes: int | None = None, seed: int = 0) -> np.ndarray:
        """sum_d Var_m[mu_d] over M dropout passes (masks shared across inputs) `(N,)`."""
        import torch

        passes = passes or self.settings.epistemic_passes
        if self.settings.dropout == 0:
            return np.zeros(np.asarray(x).shape[0])
        params = self._torch_params(self.image_params)
        xs = self._inputs(x)
        generator = torch.Generator().manual_seed(int(seed))
        masks = [dropout_masks(1, self.settings, generator) for _ in range(passes)]  # (1, H) per layer per pass
        result = []
        with torch.no_grad():
            for lo in range(0, xs.shape[0], CHUNK_SIZE):
                chunk = xs[lo : lo + CHUNK_SIZE]
                mus = torch.stack([adapter_forward(params, chunk, self.settings, m)[0] for m in masks])  # (M, n, D)
                result.append(mus.double().var(dim=0, unbiased=False).sum(dim=1))
        return torch.cat(result).numpy() if result else np.zeros(0)

    def uncertainty(self, x) -> Uncertainty:
        return Uncertainty(self.aleatoric_uncertainty(x), self.epistemic_uncertainty(x))

    # -- class probabilities --

    def _text(self) -> np.ndarray:
        if self.class_text is None:
            raise StateError(
                "this ProbVLM posterior has no class-prompt text embeddings, so it gives uncertainties but no class "
                "probabilities; fit it on embeddings with text_embeddings or an open_clip spec"
            )
        return self.class_text

    def logit_moments(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Moments of s cos(t, h_k) with t ~ gennorm(mu, alpha, beta) per dim (v = its variance): `(N, K)` each.

        With n = |mu|, u = mu/n, r_k = u.h_k, a_k = sum_d v_d u_d h_kd, b = sum_d v_d u_d^2, V = sum_d v_d:
          mean ~= s [r_k - (a_k - r_k b)/n^2 - r_k (V - b)/(2 n^2)]   (second order: draws off mu shrink |cos|)
          var  ~= s^2 sum_d v_d (h_kd - r_k u_d)^2 / n^2               (first-order delta method)
        Against Monte Carlo (tests/test_probvlm.py, D = 16) the mean is within 2% of the logit
        std; the variance within ~5%, but up to ~25% low for a class with cos near 1, where the
        gradient vanishes and the ignored second-order term dominates.
        """
        import torch

        text = self._text().astype(np.float64)  # (K, D)
        mu, alpha, beta = self.distribution(x)
        variance = gennorm_variance(torch.from_numpy(alpha).double(), torch.from_numpy(beta).double()).numpy()  # (N, D)
        mu = mu.astype(np.float64)
        norm_sq = (mu**2).sum(axis=1, keepdims=True)  # (N, 1)
        unit = mu / np.sqrt(norm_sq)
        cos = unit @ text.T  # (N, K)
        cross = (variance * unit) @ text.T  # a (N, K)
        along = (variance * unit**2).sum(axis=1, keepdims=True)  # b (N, 1)
        total = variance.sum(axis=1, keepdims=True)  # V (N, 1)
        mean = cos - (cross - cos * along) / norm_sq - cos * (total - along) / (2 * norm_sq)
        spread = variance @ (text**2).T - 2 * cos * cross + cos**2 * along
        s = self.logit_scale
        return s * mean, np.clip(s * s * spread / norm_sq, 0.0, None)

    def predict(self, x) -> np.ndarray:
        """Probit softmax of the logit moments `(N, K)`."""
        from alkit.posterior.probcosine import probit_softmax

        mean, variance = self.logit_moments(x)
        return probit_softmax(mean, variance)

    def map_predict(self, x) -> np.ndarray:
        """softmax(s cos(mu, h_k)) of the adapter's mean embedding `(N, K)`."""
        from alkit.posterior.probcosine import probit_softmax

        text = self._text().astype(np.float64)
        mu = self.distribution(x)[0].astype(np.float64)
        logits = self.logit_scale * l2_normalise(mu) @ text.T
        return probit_softmax(logits, np.zeros_like(logits))

    def sample_weights(self, num_samples: int, seed: int) -> ProbVLMNoise:
        """S shared uniform draws `(S, D)`, tabulated once (~2 s for S = 64, D = 512, G = 33)."""
        if num_samples < 1:
            raise InputError(f"num_samples must be >= 1, got {num_samples}")
        uniforms = np.random.default_rng(seed).random((num_samples, self.dim))
        return ProbVLMNoise(quantile_table(uniforms, self.settings.beta_grid), int(seed))

    def sample_embeddings(self, weights: ProbVLMNoise, x) -> np.ndarray:
        """Shared draws from each input's generalised Gaussian `(S, N, D)` (memory: S N D floats)."""
        import torch

        mu, alpha, beta = (torch.from_numpy(a) for a in self.distribution(x))
        return sample_gennorm(mu, alpha, beta, weights.table).numpy()

    def _sample_logit_chunks(self, weights: ProbVLMNoise, x):
        """s cos(t_s, h_k) for each shared draw t_s, as torch `(S, n, K)` chunks of inputs."""
        import torch

        text = torch.from_numpy(self._text().astype(np.float32))  # (K, D)
        mu, alpha, beta = (torch.from_numpy(a) for a in self.distribution(x))
        rows = max(1, SAMPLE_ELEMENTS // (weights.table.num_samples * self.dim))
        for lo in range(0, mu.shape[0], rows):
            draws = sample_gennorm(mu[lo : lo + rows], alpha[lo : lo + rows], beta[lo : lo + rows], weights.table)
            draws = draws / draws.norm(dim=-1, keepdim=True)  # (S, n, D)
            yield self.logit_scale * (draws @ text.T)  # (S, n, K)

    def _joined(self, chunks: list, num_samples: int) -> np.ndarray:
        import torch

        if not chunks:
            return np.zeros((num_samples, 0, self.num_classes), dtype=np.float32)
        return torch.cat(chunks, dim=1).numpy()

    def sample_logits(self, weights: ProbVLMNoise, x) -> np.ndarray:
        """s cos(t_s, h_k) for each shared draw t_s: `(S, N, K)`."""
        return self._joined(list(self._sample_logit_chunks(weights, x)), weights.table.num_samples)

    def sample_probs(self, weights: ProbVLMNoise, x) -> np.ndarray:
        """softmax(s cos(t_s, h_k)) for each shared draw t_s: `(S, N, K)`."""
        import torch

        chunks = [torch.softmax(logits, dim=-1) for logits in self._sample_logit_chunks(weights, x)]
        return self._joined(chunks, weights.table.num_samples)

    # -- persistence --

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {f"image.{name}": value for name, value in self.image_params.items()}
        if self.text_params is not None:
            arrays.update({f"text.{name}": value for name, value in self.text_params.items()})
        if self.class_text is not None:
            arrays["class_text"] = self.class_text
        return arrays, {"logit_scale": self.logit_scale, "settings": self.settings.as_dict()}

    @classmethod
    def from_state(cls, arrays, header, provenance, classes, embedding_spec_key) -> "ProbVLMPosterior":
        def group(prefix: str) -> dict | None:
            found = {name: arrays[f"{prefix}.{name}"] for name in PARAM_NAMES if f"{prefix}.{name}" in arrays}
            return found or None

        return cls(
            group("image"), group("text"), arrays.get("class_text"), float(header["logit_scale"]),
            ProbVLMSettings(**header["settings"]), provenance, tuple(classes), embedding_spec_key,
        )


def fit_probvlm(
    images: np.ndarray,
    labelled_images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    class_text: np.ndarray | None = None,
    logit_scale: float = 100.0,
    settings: ProbVLMSettings = ProbVLMSettings(),
    seed: int = 0,
    classes=None,
    embedding_spec_key: str = "unspecified",
    parent_version: int | None = None,
    progress: bool | None = None,
) -> ProbVLMPosterior:
    """Train both adapters on `images (N, D)` (+ labelled images paired with their class prompt).

    `progress`: a loss bar on stderr (None: only on a terminal).
    """
    from alkit.progress import progress_bar

    labels = np.zeros(0, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
    text = None if class_text is None else np.asarray(class_text, dtype=np.float32)
    num_classes = text.shape[0] if text is not None else len(classes or ())
    if labels.size and text is None:
        raise StateError(f"{labels.size} labels but no class-prompt text embeddings to pair them with; ProbVLM pairs labelled images with their class prompt")
    if labels.size and (labelled_images is None or len(labelled_images) != labels.size):
        raise InputError(f"{labels.size} labels for {0 if labelled_images is None else len(labelled_images)} labelled embeddings; pass one label per row")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"labels must lie in [0, {num_classes}); got {labels.min()}..{labels.max()}")
    pair_images = np.asarray(labelled_images, dtype=np.float32) if labels.size else None
    pair_text = text[labels] if labels.size else None

    with progress_bar(settings.epochs, "probvlm", enabled=progress, unit="epoch") as bar:

        def report(epoch: int, train: float, held: float | None) -> None:
            bar.update(1)
            bar.set_postfix_str(f"loss {train:.4g}" + ("" if held is None else f" held-out {held:.4g}"))

        trained = train_adapters(np.asarray(images, dtype=np.float32), pair_images, pair_text, text, settings, seed, report)

    names = tuple(str(c) for c in classes) if classes is not None else tuple(str(k) for k in range(num_classes))
    if text is not None and len(names) != num_classes:
        raise InputError(f"{len(names)} class names for {num_classes} class text embeddings; pass one name per class")
    source = f"{len(images)} images (intra-modal) + {labels.size} labelled image / class-prompt pairs (cross-modal)"
    final_train, final_held = trained.history[trained.best_epoch - 1][1:]
    provenance = PosteriorProvenance(
        kind=KIND, curvature_source=source, labels_used=int(labels.size), parent_version=parent_version,
        settings={
            **settings.as_dict(), "seed": int(seed), "logit_scale": float(logit_scale), "epochs_run": len(trained.history),
            "best_epoch": trained.best_epoch, "train_loss": final_train, "held_out_loss": final_held,
            "held_out_images": trained.held_out_images, "held_out_pairs": trained.held_out_pairs,
        },
    )
    unit_text = None if text is None else l2_normalise(text)
    return ProbVLMPosterior(
        trained.image, trained.text, unit_text, float(logit_scale), settings, provenance, names, embedding_spec_key
    )
