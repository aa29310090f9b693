"""ProbVLM as a posterior: probabilistic adapters on frozen embeddings (science.md section 4).

Per modality a residual MLP `x (D) -> 256 -> 256` with dropout and three heads that give a
generalised Gaussian per dimension (`gennorm.py`):

  h = drop(relu(W2 drop(relu(W1 x + b1)) + b2))                       (H,)
  mu = x + W_mu h + b_mu,  alpha = floor + exp(W_a h + b_a),  beta in (beta_min, beta_max) by a sigmoid

Inputs and targets are unit-normalised. Loss per step (means over items of NLLs summed over
dims): L_intra(image) + L_intra(text) + cross_weight * L_cross, where L_cross scores the image
adapter's distribution at the paired text embedding and the text adapter's at the paired
image embedding. Pairs are labelled images with their class prompt's text embedding (caption
pairs are not supported). Adam; early stopping on a held-out slice of images (and of pairs
when there are >= 10); the best epoch's parameters are kept.

Why a functional adapter (a dict of tensors + `adapter_forward`) rather than an nn.Module:
the parameters ARE the saved state (safetensors, no pickle), and every random number (init,
shuffles, dropout masks) comes from one seeded `torch.Generator`, so training is
reproducible without touching torch's global RNG.

As a posterior (x = embeddings): the predictive embedding of an image is its image adapter's
generalised Gaussian; class logits are s cos(t, h_k) against the unit class-prompt text
embeddings h_k. `logit_moments` use a second-order mean and a delta-method variance with the diagonal
aleatoric variance;
`predict` is the probit softmax of those moments; `map_predict` uses mu only. Shared samples:
`sample_weights(S, seed)` draws uniforms `(S, D)` once and `sample_probs` turns them into
embedding draws for every input (`gennorm.sample_gennorm`), so EPIG/BALD see jointly
distributed samples. Dropout is NOT part of the samples (S extra adapter passes per chunk);
epistemic uncertainty is reported separately by `epistemic_uncertainty` (variance of mu
over M passes with dropout masks shared across inputs, so it does not depend on chunking).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from alkit.errors import InputError, StateError
from alkit.posterior.base import PosteriorProvenance
from alkit.posterior.gennorm import BetaGrid, QuantileTable, gennorm_nll, gennorm_variance, quantile_table, sample_gennorm

KIND = "probvlm"
CHUNK_SIZE = 65536  # inputs per adapter pass
SAMPLE_ELEMENTS = 1 << 22  # S * n * D floats materialised per sample chunk (16 MB)
ALPHA_FLOOR = 1e-5  # keeps the NLL bounded below when mu hits the target exactly
LOG_ALPHA_MAX = 3.0
PARAM_NAMES = ("W1", "b1", "W2", "b2", "W_mu", "b_mu", "W_alpha", "b_alpha", "W_beta", "b_beta")
MIN_HELD_OUT_PAIRS = 10  # fewer pairs than this: all pairs train, early stopping uses images only


@dataclass(frozen=True)
class ProbVLMSettings:
    """Training and prediction choices for `fit_probvlm`."""

    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-4
    hidden: int = 256
    dropout: float = 0.1
    input_noise: float = 0.5  # norm of the noise on intra-modal inputs (a denoising target; 0: identity, degenerate)
    cross_weight: float = 1.0  # lam_cross
    holdout_fraction: float = 0.1  # images held out for early stopping
    patience: int = 10  # epochs without a better held-out loss before stopping
    epistemic_passes: int = 10  # M dropout passes for the epistemic variance
    beta_min: float = 0.5
    beta_max: float = 8.0
    beta_grid_size: int = 33  # shape grid of the shared-sample quantile table

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.hidden < 1 or self.epistemic_passes < 2:
            raise InputError(
                f"epochs {self.epochs}, batch size {self.batch_size}, hidden {self.hidden} must be >= 1 and "
                f"epistemic passes {self.epistemic_passes} >= 2"
            )
        if not 0.0 <= self.dropout < 1.0 or self.learning_rate <= 0:
            raise InputError(f"dropout {self.dropout} must lie in [0, 1) and learning rate {self.learning_rate} be > 0")
        if not 0 < self.beta_min < self.beta_max:
            raise InputError(f"need 0 < beta_min < beta_max, got {self.beta_min}, {self.beta_max}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def beta_grid(self) -> BetaGrid:
        return BetaGrid(self.beta_min, self.beta_max, self.beta_grid_size)


# --- the adapter: parameters + a pure forward ---------------------------------------------------


def unit_rows(x, name: str = "embeddings"):
    """Rows divided by their norm (torch float32 `(N, D)`); zero rows are an InputError."""
    import torch

    tensor = torch.as_tensor(np.asarray(x, dtype=np.float32))
    norms = tensor.norm(dim=1, keepdim=True)
    if tensor.numel() and bool((norms == 0).any()):
        raise InputError(f"{int((norms == 0).sum())} {name} rows are all zero; remove them before fitting")
    return tensor / norms


def init_adapter(dim: int, settings: ProbVLMSettings, generator) -> dict:
    """Parameters of one adapter (torch float32). The mean head starts small but not zero (a zero
    head gave exactly zero epistemic variance: every dropout mask then maps x to x); alpha and
    beta heads start constant.

    Hidden layers use nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)); alpha starts at
    0.1/sqrt(D) (a tenth of a unit vector's per-dim spread), beta at 2 (Gaussian).
    """
    import torch

    hidden = settings.hidden

    def uniform(shape: tuple[int, ...], fan_in: int):
        return (torch.rand(shape, generator=generator) * 2 - 1) / np.sqrt(fan_in)

    beta_start = (2.0 - settings.beta_min) / (settings.beta_max - settings.beta_min)
    beta_start = float(np.clip(beta_start, 0.05, 0.95))
    params = {
        "W1": uniform((hidden, dim), dim), "b1": uniform((hidden,), dim),
        "W2": uniform((hidden, hidden), hidden), "b2": uniform((hidden,), hidden),
        "W_mu": 0.1 * uniform((dim, hidden), hidden), "b_mu": torch.zeros(dim),
        "W_alpha": torch.zeros(dim, hidden), "b_alpha": torch.full((dim,), float(np.log(0.1 / np.sqrt(dim)))),
        "W_beta": torch.zeros(dim, hidden), "b_beta": torch.full((dim,), float(np.log(beta_start / (1 - beta_start)))),
    }
    return {name: value.contiguous() for name, value in params.items()}


def _dropout(hidden, rate: float, masks):
    """Inverted dropout with given keep-masks `(n or 1, H)`, or none."""
    return hidden if masks is None else hidden * masks / (1.0 - rate)


def adapter_forward(params: dict, x, settings: ProbVLMSettings, masks=None):
    """(mu, alpha, beta) `(n, D)` each for unit inputs `x (n, D)`; `masks` = (layer-1, layer-2) keep-masks or None."""
    import torch
    from torch.nn.functional import linear, relu

    first, second = (None, None) if masks is None else masks
    h = _dropout(relu(linear(x, params["W1"], params["b1"])), settings.dropout, first)  # (n, H)
    h = _dropout(relu(linear(h, params["W2"], params["b2"])), settings.dropout, second)  # (n, H)
    mu = x + linear(h, params["W_mu"], params["b_mu"])
    alpha = ALPHA_FLOOR + torch.exp(linear(h, params["W_alpha"], params["b_alpha"]).clamp(max=LOG_ALPHA_MAX))
    beta = settings.beta_min + (settings.beta_max - settings.beta_min) * torch.sigmoid(
        linear(h, params["W_beta"], params["b_beta"])
    )
    return mu, alpha, beta


def dropout_masks(rows: int, settings: ProbVLMSettings, generator):
    """Keep-masks for both hidden layers `(rows, H)` each (float32 0/1)."""
    import torch

    keep = 1.0 - settings.dropout
    return tuple((torch.rand((rows, settings.hidden), generator=generator) < keep).float() for _ in range(2))


def adapter_nll(params: dict, inputs, targets, settings: ProbVLMSettings, masks=None):
    """Mean over items of the per-item NLL summed over dims (scalar tensor)."""
    mu, alpha, beta = adapter_forward(params, inputs, settings, masks)
    return gennorm_nll(targets, mu, alpha, beta).sum(dim=1).mean()


# --- training ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainedAdapters:
    image: dict  # name -> np.ndarray
    text: dict | None
    history: list  # [(epoch, train loss, held-out loss or None)]
    best_epoch: int
    held_out_images: int
    held_out_pairs: int


class Adam:
    """Adam (Kingma & Ba, torch's defaults) over a list of leaf tensors; clears their gradients.

    Why not torch.optim.Adam: constructing any torch optimiser imports torch._dynamo, ~5 s on
    the development machine, longer than a small fit itself.
    """

    def __init__(self, tensors: list, learning_rate: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        import torch

        self.tensors, self.learning_rate, self.betas, self.eps, self.steps = tensors, learning_rate, betas, eps, 0
        self.first = [torch.zeros_like(t) for t in tensors]
        self.second = [torch.zeros_like(t) for t in tensors]

    def step(self) -> None:
        import torch

        self.steps += 1
        b1, b2 = self.betas
        step_size = self.learning_rate / (1 - b1**self.steps)
        correction = (1 - b2**self.steps) ** 0.5
        with torch.no_grad():
            for tensor, m, v in zip(self.tensors, self.first, self.second):
                if tensor.grad is None:
                    continue
                m.mul_(b1).add_(tensor.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(tensor.grad, tensor.grad, value=1 - b2)
                tensor.addcdiv_(m, v.sqrt().div_(correction).add_(self.eps), value=-step_size)
                tensor.grad = None


def _split(count: int, fraction: float, minimum: int, generator):
    """(train indices, held-out indices) of a seeded permutation; nothing held out below `minimum`."""
    import torch

    order = torch.randperm(count, generator=generator)
    held = int(round(fraction * count)) if count >= minimum else 0
    return order[held:], order[:held]


def train_adapters(
    images: np.ndarray,
    pair_images: np.ndarray | None,
    pair_text: np.ndarray | None,
    class_text: np.ndarray | None,
    settings: ProbVLMSettings,
    seed: int,
    on_epoch: Callable[[int, float, float | None], None] | None = None,
) -> TrainedAdapters:
    """Train the image adapter (and the text adapter when text exists) with early stopping.

    `images (N, D)`: unpaired image embeddings (intra-modal term); `pair_images (L, D)` with
    `pair_text (L, D)`: the cross-modal pairs; `class_text (K, D)`: the text adapter's intra term.
    """
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    x = unit_rows(images, "image embedding")
    dim = x.shape[1]
    has_pairs = pair_images is not None and len(pair_images) > 0
    px = unit_rows(pair_images, "paired image") if has_pairs else torch.zeros((0, dim))
    pt = unit_rows(pair_text, "paired text") if has_pairs else torch.zeros((0, dim))
    if px.shape[0] != pt.shape[0] or px.shape[1:] != (dim,) or pt.shape[1:] != (dim,):
        raise InputError(f"pairs {tuple(px.shape)} / {tuple(pt.shape)} must both be (L, {dim}); pass one text row per paired image")
    text = unit_rows(class_text, "class text") if class_text is not None else None
    if x.shape[0] == 0 and not has_pairs:
        raise StateError("no image embeddings to train the ProbVLM adapters on; run `alkit embed` first")

    image_params = init_adapter(dim, settings, generator)
    text_params = init_adapter(dim, settings, generator) if (text is not None or has_pairs) else None
    trainable = list(image_params.values()) + (list(text_params.values()) if text_params else [])
    for tensor in trainable:
        tensor.requires_grad_(True)
    optimiser = Adam(trainable, settings.learning_rate)

    train_x, held_x = _split(x.shape[0], settings.holdout_fraction, int(np.ceil(1 / settings.holdout_fraction)), generator)

    def corrupted(rows):
        """Intra-modal inputs with noise of norm ~input_noise: the adapter must reconstruct the
        clean embedding. With the clean input as both input and target the residual adapter's
        optimum is the identity (mean head 0, alpha at its floor) and it learns nothing."""
        if settings.input_noise <= 0:
            return rows
        noise = torch.randn(rows.shape, generator=generator) * (settings.input_noise / np.sqrt(dim))
        noisy = rows + noise
        return noisy / noisy.norm(dim=1, keepdim=True)

    held_inputs = corrupted(x[held_x]) if len(held_x) else x[held_x]  # one fixed draw: a comparable held-out loss
    train_p, held_p = _split(px.shape[0], settings.holdout_fraction, MIN_HELD_OUT_PAIRS, generator)

    def cross_loss(indices, masks=None):
        image_masks, text_masks = (None, None) if masks is None else masks
        loss = adapter_nll(image_params, px[indices], pt[indices], settings, image_masks)
        return loss + adapter_nll(text_params, pt[indices], px[indices], settings, text_masks)

    def held_out_loss() -> float | None:
        if len(held_x) == 0 and len(held_p) == 0:
            return None
        with torch.no_grad():
            loss = adapter_nll(image_params, held_inputs, x[held_x], settings) if len(held_x) else torch.zeros(())
            if len(held_p):
                loss = loss + settings.cross_weight * cross_loss(held_p)
        return float(loss)

    steps = max(1, int(np.ceil(max(len(train_x), len(train_p)) / settings.batch_size)))
    best = (float("inf"), 0, _snapshot(image_params), _snapshot(text_params))
    history, stale = [], 0
    for epoch in range(1, settings.epochs + 1):
        order_x = train_x[torch.randperm(len(train_x), generator=generator)]
        order_p = train_p[torch.randperm(len(train_p), generator=generator)]
        per_step_x = int(np.ceil(len(order_x) / steps))
        per_step_p = int(np.ceil(len(order_p) / steps))
        total = 0.0
        for step in range(steps):
            batch_x = order_x[step * per_step_x : (step + 1) * per_step_x]
            batch_p = order_p[step * per_step_p : (step + 1) * per_step_p]
            loss = torch.zeros(())
            if len(batch_x):
                masks = dropout_masks(len(batch_x), settings, generator) if settings.dropout else None
                loss = loss + adapter_nll(image_params, corrupted(x[batch_x]), x[batch_x], settings, masks)
            if text is not None:
                masks = dropout_masks(text.shape[0], settings, generator) if settings.dropout else None
                loss = loss + adapter_nll(text_params, corrupted(text), text, settings, masks)
            if len(batch_p):
                masks = (
                    (dropout_masks(len(batch_p), settings, generator), dropout_masks(len(batch_p), settings, generator))
                    if settings.dropout else None
                )
                loss = loss + settings.cross_weight * cross_loss(batch_p, masks)
            loss.backward()
            optimiser.step()
            total += float(loss.detach())
        train_loss = total / steps
        held = held_out_loss()
        history.append((epoch, train_loss, held))
        if on_epoch is not None:
            on_epoch(epoch, train_loss, held)
        score = held if held is not None else -epoch  # nothing held out: keep the last epoch
        if score < best[0]:
            best, stale = (score, epoch, _snapshot(image_params), _snapshot(text_params)), 0
        else:
            stale += 1
            if held is not None and stale >= settings.patience:
                break
    _, best_epoch, image_state, text_state = best
    return TrainedAdapters(image_state, text_state, history, best_epoch, len(held_x), len(held_p))


def _snapshot(params: dict | None) -> dict | None:
    return None if params is None else {k: v.detach().numpy().copy() for k, v in params.items()}


# --- the posterior -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbVLMSamples:
    """S shared uniform draws, tabulated as standard generalised-Gaussian quantiles over beta."""

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
        logits = self.logit_scale * (mu / np.linalg.norm(mu, axis=1, keepdims=True)) @ text.T
        return probit_softmax(logits, np.zeros_like(logits))

    def sample_weights(self, num_samples: int, seed: int) -> ProbVLMSamples:
        """S shared uniform draws `(S, D)`, tabulated once (~2 s for S = 64, D = 512, G = 33)."""
        if num_samples < 1:
            raise InputError(f"num_samples must be >= 1, got {num_samples}")
        uniforms = np.random.default_rng(seed).random((num_samples, self.dim))
        return ProbVLMSamples(quantile_table(uniforms, self.settings.beta_grid), int(seed))

    def sample_embeddings(self, weights: ProbVLMSamples, x) -> np.ndarray:
        """Shared draws from each input's generalised Gaussian `(S, N, D)` (memory: S N D floats)."""
        import torch

        mu, alpha, beta = (torch.from_numpy(a) for a in self.distribution(x))
        return sample_gennorm(mu, alpha, beta, weights.table).numpy()

    def sample_probs(self, weights: ProbVLMSamples, x) -> np.ndarray:
        """softmax(s cos(t_s, h_k)) for each shared draw t_s: `(S, N, K)`."""
        import torch

        text = torch.from_numpy(self._text().astype(np.float32))  # (K, D)
        mu, alpha, beta = (torch.from_numpy(a) for a in self.distribution(x))
        num_samples = weights.table.num_samples
        rows = max(1, SAMPLE_ELEMENTS // (num_samples * self.dim))
        out = []
        for lo in range(0, mu.shape[0], rows):
            draws = sample_gennorm(mu[lo : lo + rows], alpha[lo : lo + rows], beta[lo : lo + rows], weights.table)
            draws = draws / draws.norm(dim=-1, keepdim=True)  # (S, n, D)
            out.append(torch.softmax(self.logit_scale * (draws @ text.T), dim=-1))  # (S, n, K)
        if not out:
            return np.zeros((num_samples, 0, self.num_classes), dtype=np.float32)
        return torch.cat(out, dim=1).numpy()

    # -- persistence --

    def save(self, directory: Path) -> None:
        from alkit.posterior.io import save_posterior

        save_posterior(self, directory)

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
    unit_text = None if text is None else text / np.linalg.norm(text, axis=1, keepdims=True)
    return ProbVLMPosterior(
        trained.image, trained.text, unit_text, float(logit_scale), settings, provenance, names, embedding_spec_key
    )
