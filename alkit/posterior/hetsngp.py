"""HetSNGP head on cached embeddings (`hetsngp` posterior; Liu et al. 2020, Fortuin et al. 2022).

  h(x)   = h0 + relu(W_1 h0 + b_1),  h0 = W_in x + b_in    spectrally normalised trunk
  phi(x) = sqrt(2/R) cos(Omega h(x) + beta)                  R random Fourier features (fixed)
  f(x)   = W_0 [x; 1] + B phi(x)                             GP output layer, prior mean W_0
  y | f  ~ softmax(f + sigma(x) * eps),  eps ~ N(0, I)       heteroscedastic logit noise
  sigma(x) = softplus(G h(x) + g)

x are the Laplace head's standardised embeddings and W_0 its zero-shot prior mean (zero
without class prompts), so far from the labels f falls back to the zero-shot classifier with
the full prior variance. Spectral normalisation: after every optimiser step each trunk matrix
is rescaled to spectral norm <= c (exact 2-norm, not power iteration), so with the residual
block the trunk is bi-Lipschitz and distances between embeddings survive into h (distance
awareness). Omega ~ N(0, 1/l^2) with l the median pairwise distance of h over the training
inputs at initialisation (fixed afterwards), beta ~ U(0, 2 pi).

Training (MAP) minimises the mean of -log (1/T) sum_t softmax(f + sigma eps_t)[y] (T Monte
Carlo draws, Collier et al. 2021) + lam/(2L) |B|^2 + lam/(2L) |trunk and noise weights|^2 by
Adam. Posterior over B: the Laplace precision of SNGP with its Gaussian-likelihood form,
P = lam I + sum_i phi_i phi_i^T `(R, R)`, shared by the K classes (edward2's default): the
logit variance phi(x)^T P^-1 phi(x) is small near the labels and rises to ~1/lam far away.

Shared samples: B_s = B_MAP + Z_s L^-T with P = L L^T, Z_s `(K, R)` standard normal, drawn
once. Each sample's probabilities marginalise the label noise inside the sample, by the
mean-field softmax-Gaussian approximation SNGP uses (Lu et al. 2020):
p_s = softmax(f_s / sqrt(1 + pi/8 sigma(x)^2)). The noise is aleatoric, so it belongs inside
each sample's likelihood (BALD's expected entropy), not between samples; marginalising it by
Monte Carlo instead (16 draws per sample) made BALD over 20,000 x 64 samples take 15 s.
`logit_moments`: mean T f_MAP, variance T^2 tau (phi^T P^-1 phi + sigma(x)^2); `predict` is the
probit predictive of those moments (the Laplace head's calibrated form). T and tau are fitted
by 5-fold cross-validated NLL (`trained_heads.fit_calibration`; 20+ labels, else 1): trunk,
noise and GP layer are retrained from scratch (same seed and settings) on the other folds, which
predict the held-out one. The shared samples stay uncalibrated (as the Laplace head's; see
`sample_weights`).

What sigma(x) does not do here: carry label noise. Mean-field, E_eps softmax(f + sigma eps) is
softmax(f / sqrt(1 + pi/8 sigma^2)), a local temperature, and the GP mean f is as free locally as
sigma, so (f, sigma) and (f / sqrt(1 + pi/8 sigma^2), 0) fit the labels equally well and the
weight decay on B prefers the smaller f. Measured on a 2-D problem with a clean and a 40%-flipped
region at equal distance from the labels (tests/test_hetsngp_label_noise.py): sigma 0.095 in
both (ratio 1.01), GP variance ratio 1.16, while the mean's logit margin drops from 2.8 to 0.5
and the samples' expected entropy rises from 0.27 to 0.64 nats: label noise shows up as
aleatoric uncertainty through f, as it should for BALD, not through sigma. sigma could only
take it over if f were constrained more than sigma (e.g. a fixed-norm mean); not done.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from alkit.errors import InputError
from alkit.posterior.base import FeatureKind, PosteriorProvenance
from alkit.posterior.head_inputs import HeadInputs, head_inputs, prepare_head_inputs
from alkit.posterior.predictive_calibration import calibrated_probs
from alkit.posterior.probcosine import probit_softmax
from alkit.posterior.threads import one_thread
from alkit.posterior.trained_heads import CalibrationSettings, fit_calibration, softmax, standardisation_state

KIND = "hetsngp"


@dataclass(frozen=True)
class HetSNGPSettings:
    hidden: int = 128  # H
    features: int = 512  # R random Fourier features
    spectral_bound: float = 0.95  # c: spectral norm bound of each trunk matrix
    steps: int = 400
    batch_size: int = 128
    learning_rate: float = 3e-3
    prior_precision: float = 1.0  # lam: prior N(0, 1/lam) on B (and weight decay of the trunk)
    train_noise_draws: int = 8  # Monte Carlo draws of eps per training step
    calibration: CalibrationSettings = CalibrationSettings()

    def as_dict(self) -> dict[str, Any]:
        values = {k: v for k, v in self.__dict__.items() if k != "calibration"}
        return {**values, **self.calibration.as_dict()}


@dataclass(frozen=True)
class GPSamples:
    """S shared output-layer draws `(S, K, R)`."""

    output_weights: np.ndarray
    seed: int


@dataclass(frozen=True)
class HetSNGPPosterior:
    """Implements `alkit.posterior.base.Posterior` with x = embeddings (N, D)."""

    input_weights: np.ndarray  # W_in (H, D)
    input_bias: np.ndarray  # (H,)
    residual_weights: np.ndarray  # W_1 (H, H)
    residual_bias: np.ndarray  # (H,)
    frequencies: np.ndarray  # Omega (R, H)
    phases: np.ndarray  # beta (R,)
    output_weights: np.ndarray  # B_MAP (K, R)
    prior_weights: np.ndarray  # W_0 (K, D + 1)
    noise_weights: np.ndarray  # G (K, H)
    noise_bias: np.ndarray  # g (K,)
    precision_cholesky: np.ndarray  # L (R, R), P = L L^T
    provenance: PosteriorProvenance
    classes: tuple[str, ...] = ()
    embedding_spec_key: str = "unspecified"
    input_mean: np.ndarray | None = None
    input_scale: float = 1.0
    temperature: float = 1.0  # T: the predictive's logits are T (f + sigma eps) (cross-validated)
    variance_scale: float = 1.0  # tau: the predictive's logit variance is scaled by tau (cross-validated)
    kind: str = field(default=KIND, init=False)
    feature_kind: ClassVar[FeatureKind] = FeatureKind.EMBEDDING
    fast_sample_logits: ClassVar[bool] = True

    prior_precision = None

    @property
    def num_classes(self) -> int:
        return self.output_weights.shape[0]

    @property
    def dim(self) -> int:
        return self.prior_weights.shape[1] - 1

    def features(self, x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prior logits W_0 [x; 1] `(N, K)`, random features phi `(N, R)`, noise scale sigma `(N, K)`), float64."""
        xa = head_inputs(x, self.dim, self.input_mean, self.input_scale, np.float64)
        hidden = _trunk_numpy(self, xa[:, :-1])
        phi = np.sqrt(2.0 / self.frequencies.shape[0]) * np.cos(hidden @ self.frequencies.T + self.phases)
        sigma = np.logaddexp(0.0, hidden @ self.noise_weights.T + self.noise_bias)  # softplus
        return xa @ self.prior_weights.T, phi, sigma

    def gp_variance(self, phi: np.ndarray) -> np.ndarray:
        """phi^T P^-1 phi `(N,)`: the model (distance) part of the logit variance."""
        from scipy.linalg import solve_triangular

        solved = solve_triangular(self.precision_cholesky, phi.T, lower=True)  # L^-1 phi, (R, N)
        return (solved**2).sum(axis=0)

    def logit_moments(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated mean T f_MAP `(N, K)`; variance T^2 tau (GP part + sigma(x)^2) `(N, K)`."""
        prior, phi, sigma = self.features(x)
        scale = self.temperature
        variance = self.gp_variance(phi)[:, None] + sigma**2
        return scale * (prior + phi @ self.output_weights.T), (scale**2 * self.variance_scale) * variance

    def predict(self, x) -> np.ndarray:
        """Probit predictive of the calibrated moments `(N, K)`."""
        return probit_softmax(*self.logit_moments(x))

    def map_predict(self, x) -> np.ndarray:
        prior, phi, _ = self.features(x)
        return softmax(prior + phi @ self.output_weights.T)

    def sample_weights(self, num_samples: int, seed: int) -> GPSamples:
        """S draws of B from N(B_MAP, P^-1) (rows independent, shared covariance).
        Uncalibrated, for the reason the ensemble's members are (`EnsemblePosterior.sample_weights`):
        BALD / EPIG rank by the GP's own spread; `predict` is the calibrated predictive."""
        from scipy.linalg import solve_triangular

        if num_samples < 1:
            raise InputError(f"need at least one sample, got {num_samples}")
        rng = np.random.default_rng(seed)
        num_classes, width = self.output_weights.shape
        z = rng.standard_normal((width, num_samples * num_classes))
        offsets = solve_triangular(self.precision_cholesky, z, lower=True, trans="T")  # L^-T z ~ N(0, P^-1)
        draws = self.output_weights[None] + offsets.T.reshape(num_samples, num_classes, width)
        return GPSamples(draws.astype(np.float32), seed)

    def _sample_logits_tensor(self, weights: GPSamples, x):
        """(W_0 x + B_s phi) / sqrt(1 + pi/8 sigma^2) as a torch `(S, N, K)` tensor."""
        import torch

        prior, phi, sigma = (torch.from_numpy(a.astype(np.float32)) for a in self.features(x))
        logits = torch.einsum("nr,skr->snk", phi, torch.from_numpy(weights.output_weights)) + prior
        return logits / torch.sqrt(1.0 + (np.pi / 8.0) * sigma**2)

    def sample_logits(self, weights: GPSamples, x) -> np.ndarray:
        """Noise-marginalised logits of each shared draw `(S, N, K)` (softmax gives `sample_probs`)."""
        return self._sample_logits_tensor(weights, x).numpy()

    def sample_probs(self, weights: GPSamples, x) -> np.ndarray:
        """E_eps softmax(W_0 x + B_s phi + sigma eps) per shared draw `(S, N, K)`, mean-field approximation."""
        import torch

        return torch.softmax(self._sample_logits_tensor(weights, x), dim=-1).numpy()

    ARRAYS = (
        "input_weights", "input_bias", "residual_weights", "residual_bias", "frequencies", "phases", "output_weights",
        "prior_weights", "noise_weights", "noise_bias", "precision_cholesky",
    )

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, header = standardisation_state(self.input_mean, self.input_scale)
        arrays.update({name: getattr(self, name) for name in self.ARRAYS})
        return arrays, {**header, "temperature": float(self.temperature), "variance_scale": float(self.variance_scale)}

    @classmethod
    def from_state(cls, arrays, header, provenance, classes, embedding_spec_key) -> "HetSNGPPosterior":
        return cls(
            *(arrays[name] for name in cls.ARRAYS), provenance, tuple(classes), embedding_spec_key,
            arrays.get("input_mean"), float(header.get("input_scale", 1.0)), float(header.get("temperature", 1.0)),
            float(header.get("variance_scale", 1.0)),
        )


def _trunk_numpy(posterior: HetSNGPPosterior, x: np.ndarray) -> np.ndarray:
    h0 = x @ posterior.input_weights.T + posterior.input_bias
    return h0 + np.maximum(h0 @ posterior.residual_weights.T + posterior.residual_bias, 0.0)


def _trunk(params: dict, x):
    import torch

    h0 = x @ params["W_in"].T + params["b_in"]
    return h0 + torch.relu(h0 @ params["W_1"].T + params["b_1"])


def _project_spectral(matrix, bound: float, left=None) -> None:
    """In place: matrix *= min(1, bound / ||matrix||_2). With `left` (a persistent unit vector
    `(rows,)`, updated in place) ||matrix||_2 is estimated by one power iteration, as in
    spectral normalisation (Miyato et al. 2018); that underestimates the norm, so training ends
    with exact projections (`left=None`: the 2-norm from the SVD)."""
    import torch

    with torch.no_grad():
        if left is None:
            norm = torch.linalg.matrix_norm(matrix, ord=2)
        else:
            right = torch.nn.functional.normalize(matrix.T @ left, dim=0)
            left.copy_(torch.nn.functional.normalize(matrix @ right, dim=0))
            norm = left @ matrix @ right
        if norm > bound:
            matrix.mul_(bound / norm)


def _fit_hetsngp(
    embeddings: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    class_text: np.ndarray | None = None,
    logit_scale: float = 1.0,
    settings: HetSNGPSettings = HetSNGPSettings(),
    seed: int = 0,
    classes=None,
    embedding_spec_key: str = "unspecified",
    parent_version: int | None = None,
    unlabelled: np.ndarray | None = None,
) -> HetSNGPPosterior:
    """Train the trunk, noise and GP output layer (MAP), then the Laplace precision over B,
    then the predictive temperature (module docstring)."""
    sizes = (settings.hidden, settings.features, settings.steps, settings.batch_size, settings.train_noise_draws)
    if min(sizes) < 1 or settings.learning_rate <= 0 or settings.spectral_bound <= 0:
        raise InputError(f"HetSNGP settings must be positive; got {settings.as_dict()}")
    inputs = prepare_head_inputs(embeddings, labels, num_classes, class_text, logit_scale, classes, unlabelled, min_labels=2)
    count, x_raw = inputs.labels.size, np.asarray(embeddings, dtype=np.float64)
    posterior, lengthscale = _train(inputs, num_classes, settings, seed)

    def held_out_moments(train: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fold, _ = _train(replace(inputs, xa=inputs.xa[train], labels=inputs.labels[train]), num_classes, settings, seed)
        return fold.logit_moments(x_raw[held])

    calibration = fit_calibration(
        inputs.labels, settings.calibration, seed, held_out_moments,
        lambda moments, temperature, scale: calibrated_probs(moments[0], moments[1], temperature, scale),
    )
    prior_rows, phi_rows, sigma_rows = posterior.features(x_raw)
    report = {
        "seed": int(seed), "logit_scale": float(logit_scale), "lengthscale": lengthscale,
        "train_accuracy": float(((prior_rows + phi_rows @ posterior.output_weights.T).argmax(axis=1) == inputs.labels).mean()),
        "train_mean_noise_scale": float(sigma_rows.mean()),
        "train_mean_gp_variance": float(posterior.gp_variance(phi_rows).mean()), **calibration,
    }
    source = f"{count} labelled embeddings, SN trunk + {settings.features} random-feature GP (Laplace) + heteroscedastic noise" + (
        " + class-prompt prior mean" if class_text is not None else ""
    )
    provenance = PosteriorProvenance(KIND, source, int(count), parent_version, {**settings.as_dict(), **report})
    return replace(
        posterior, provenance=provenance, embedding_spec_key=embedding_spec_key,
        temperature=float(calibration["temperature"]), variance_scale=float(calibration["variance_scale"]),
    )


def _train(inputs: HeadInputs, num_classes: int, settings: HetSNGPSettings, seed: int) -> tuple[HetSNGPPosterior, float]:
    """Trunk, noise and GP layer (MAP) on `inputs`, then the Laplace precision over B ->
    (uncalibrated posterior with a placeholder provenance, the random features' lengthscale)."""
    import torch

    count, dim, hidden, width = inputs.labels.size, inputs.dim, settings.hidden, settings.features
    generator = torch.Generator().manual_seed(int(seed))
    x = torch.from_numpy(inputs.xa[:, :-1].astype(np.float32))
    prior_logits = torch.from_numpy((inputs.xa @ inputs.prior.T).astype(np.float32))
    y = torch.from_numpy(inputs.labels)
    params = {
        "W_in": torch.randn(hidden, dim, generator=generator) / np.sqrt(dim),
        "b_in": torch.zeros(hidden),
        "W_1": torch.randn(hidden, hidden, generator=generator) / np.sqrt(hidden),
        "b_1": torch.zeros(hidden),
        "B": torch.zeros(num_classes, width),
        "G": torch.zeros(num_classes, hidden),
        "g": torch.full((num_classes,), -2.0),  # softplus(-2) ~ 0.13: start with little label noise
    }
    for name in ("W_in", "W_1"):
        _project_spectral(params[name], settings.spectral_bound)
    with torch.no_grad():
        start = _trunk(params, x[: min(count, 1000)])
        distances = torch.cdist(start, start)
        lengthscale = float(distances[distances > 0].median()) if count > 1 else 1.0
    lengthscale = max(lengthscale, 1e-3)
    frequencies = torch.randn(width, hidden, generator=generator) / lengthscale
    phases = torch.rand(width, generator=generator) * 2 * np.pi
    for value in params.values():
        value.requires_grad_(True)
    optimiser = torch.optim.Adam(params.values(), lr=settings.learning_rate)
    power_vectors = {name: torch.nn.functional.normalize(torch.randn(hidden, generator=generator), dim=0) for name in ("W_in", "W_1")}
    batch = min(settings.batch_size, count)
    decay = settings.prior_precision / count
    order, cursor = torch.randperm(count, generator=generator), 0
    draws = settings.train_noise_draws
    for _ in range(settings.steps):
        if cursor + batch > count:
            order, cursor = torch.randperm(count, generator=generator), 0
        pick = order[cursor : cursor + batch]
        cursor += batch
        hidden_rows = _trunk(params, x[pick])
        phi = np.sqrt(2.0 / width) * torch.cos(hidden_rows @ frequencies.T + phases)
        logits = prior_logits[pick] + phi @ params["B"].T  # (b, K)
        sigma = torch.nn.functional.softplus(hidden_rows @ params["G"].T + params["g"])
        eps = torch.randn(draws, *logits.shape, generator=generator)
        log_probs = torch.log_softmax(logits[None] + sigma[None] * eps, dim=-1)  # (T, b, K)
        picked = log_probs.gather(2, y[pick][None, :, None].expand(draws, -1, 1))[..., 0]  # (T, b)
        nll = -(torch.logsumexp(picked, dim=0) - np.log(draws)).mean()
        penalty = sum((params[k] ** 2).sum() for k in ("B", "W_in", "W_1", "G"))
        loss = nll + 0.5 * decay * penalty
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        for name in ("W_in", "W_1"):
            _project_spectral(params[name], settings.spectral_bound, power_vectors[name])
    for name in ("W_in", "W_1"):
        _project_spectral(params[name], settings.spectral_bound)
    arrays = {k: v.detach().numpy().astype(np.float64) for k, v in params.items()}
    with torch.no_grad():
        phi_all = (np.sqrt(2.0 / width) * torch.cos(_trunk(params, x) @ frequencies.T + phases)).double().numpy()
    precision = settings.prior_precision * np.eye(width) + phi_all.T @ phi_all
    cholesky = np.linalg.cholesky(0.5 * (precision + precision.T))
    posterior = HetSNGPPosterior(
        arrays["W_in"], arrays["b_in"], arrays["W_1"], arrays["b_1"], frequencies.double().numpy(),
        phases.double().numpy(), arrays["B"], inputs.prior, arrays["G"], arrays["g"], cholesky,
        PosteriorProvenance(KIND, "", int(count), None, {}), inputs.classes, "unspecified", inputs.input_mean, inputs.input_scale,
    )
    return posterior, lengthscale


def fit_hetsngp(*args, **kwargs):
    """Train the trunk, noise and GP output layer (MAP), then the Laplace precision over B.
    Arguments as `_fit_hetsngp`; runs with one BLAS / torch thread (`threads.one_thread`)."""
    with one_thread():
        return _fit_hetsngp(*args, **kwargs)
