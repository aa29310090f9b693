"""MIMO head on cached embeddings (`mimo` posterior; Havasi et al. 2021).

One small MLP carries M subnetworks: its input is M standardised embeddings side by side
`(M*D,)`, its output M heads of K logits. Head m reads slot m:

  f_m(x_1..x_M) = S_m [x_m; 1] + V_m relu(U [x_1; ..; x_M] + b) + c_m

with S_m a linear skip initialised at (and decayed towards) the zero-shot classifier W_0 of the
class prompts (zero without prompts), so the prior mean of the Laplace head is kept. Training
feeds M independently shuffled batches side by side (each slot walks its own permutation of
the labels), so head m can only learn from slot m and the hidden units shared by all slots
split into M subnetworks. The M losses are synchronised: the total loss is
M * sum_m w_m L_m with w = softmax(running mean of the L_m), the weights detached (no gradient
flows through them), so a lagging subnetwork gets more weight without the weights themselves
being optimised. At test time the same embedding fills every slot and one forward pass gives
M predictions: the shared samples are the M subnetworks, cycled as in the ensemble
(`trained_heads.cycle_members`).

Diversity is checked at fit time: the mean pairwise disagreement of the subnetworks' argmax
and the mean pairwise symmetric KL on the training inputs are recorded in the provenance, and
`subnetworks_collapsed` is True when the KL is below 1e-4 (the subnetworks then give no
epistemic signal; fit with more members or fewer steps).

Calibration: the predictive is mean_m softmax(T (fbar + sqrt(tau) (f_m - fbar))) with T and tau
fitted by 5-fold cross-validated NLL (`trained_heads.fit_calibration`; 20+ labels, else
T = tau = 1): the network is retrained from
scratch (same seed and settings) on the other folds and predicts the held-out one; a warm start
from the full-data network would have seen the held-out labels. This costs K more trainings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from alkit.errors import InputError
from alkit.posterior.base import FeatureKind, PosteriorProvenance
from alkit.posterior.head_inputs import HeadInputs, head_inputs, prepare_head_inputs
from alkit.posterior.threads import one_thread
from alkit.posterior.trained_heads import (
    CalibrationSettings, calibrated_member_logits, calibrated_member_probs, cycle_members, fit_calibration, member_moments,
    softmax, standardisation_state,
)

KIND = "mimo"


@dataclass(frozen=True)
class MimoSettings:
    members: int = 3  # M (Havasi et al. use 2-4)
    hidden: int = 64  # H
    steps: int = 400  # optimiser steps (each sees M batches)
    batch_size: int = 64
    learning_rate: float = 3e-3  # Adam
    prior_precision: float = 1.0  # lam: weight decay lam/L on all weights (skip towards W_0)
    running_loss_decay: float = 0.9  # EMA of the per-head losses that sets the synchronisation weights
    calibration: CalibrationSettings = CalibrationSettings()

    def as_dict(self) -> dict[str, Any]:
        values = {k: v for k, v in self.__dict__.items() if k != "calibration"}
        return {**values, **self.calibration.as_dict()}


@dataclass(frozen=True)
class MimoSamples:
    """The subnetwork index of each shared sample `(S,)`."""

    members: np.ndarray
    seed: int


@dataclass(frozen=True)
class MimoPosterior:
    """M subnetworks in one MLP; implements `alkit.posterior.base.Posterior` with x = embeddings (N, D)."""

    hidden_weights: np.ndarray  # U (H, M*D)
    hidden_bias: np.ndarray  # b (H,)
    head_weights: np.ndarray  # V (M, K, H)
    head_bias: np.ndarray  # c (M, K)
    skip_weights: np.ndarray  # S (M, K, D + 1)
    provenance: PosteriorProvenance
    classes: tuple[str, ...] = ()
    embedding_spec_key: str = "unspecified"
    input_mean: np.ndarray | None = None
    input_scale: float = 1.0
    temperature: float = 1.0  # T: the predictive's logits are T f (cross-validated; see the module docstring)
    variance_scale: float = 1.0  # tau: the members' spread around their mean is scaled by sqrt(tau) in the predictive
    kind: str = field(default=KIND, init=False)
    feature_kind: ClassVar[FeatureKind] = FeatureKind.EMBEDDING
    fast_sample_logits: ClassVar[bool] = True

    prior_precision = None

    @property
    def num_members(self) -> int:
        return self.head_weights.shape[0]

    @property
    def num_classes(self) -> int:
        return self.head_weights.shape[1]

    @property
    def dim(self) -> int:
        return self.skip_weights.shape[2] - 1

    def member_logits(self, x) -> np.ndarray:
        """Logits of every subnetwork with x in every slot `(M, N, K)` (float32)."""
        import torch

        xa = torch.from_numpy(head_inputs(x, self.dim, self.input_mean, self.input_scale, np.float32))
        params = _torch_params(self)
        return _forward(params, [xa] * self.num_members).numpy()

    def slot_logits(self, slots: list) -> np.ndarray:
        """Logits `(M, N, K)` with a different input per slot (a list of M `(N, D)` arrays):
        how training sees the network; used to check that head m reads only slot m."""
        import torch

        if len(slots) != self.num_members:
            raise InputError(f"{len(slots)} slot inputs for {self.num_members} subnetworks; pass one per slot")
        inputs = [torch.from_numpy(head_inputs(s, self.dim, self.input_mean, self.input_scale, np.float32)) for s in slots]
        return _forward(_torch_params(self), inputs).numpy()

    def logit_moments(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance over the subnetworks of the calibrated logits `(N, K), (N, K)`."""
        return member_moments(self.calibrated_logits(x))

    def calibrated_logits(self, x) -> np.ndarray:
        """T (fbar + sqrt(tau) (f_m - fbar)) per subnetwork `(M, N, K)` float64."""
        return calibrated_member_logits(self.member_logits(x).astype(np.float64), self.temperature, self.variance_scale)

    def predict(self, x) -> np.ndarray:
        """Mean of the subnetworks' calibrated softmax `(N, K)` (the calibrated MIMO predictive)."""
        return softmax(self.calibrated_logits(x)).mean(axis=0)

    def map_predict(self, x) -> np.ndarray:
        """softmax of the subnetworks' mean logits (one point model)."""
        return softmax(self.member_logits(x).astype(np.float64).mean(axis=0))

    def sample_weights(self, num_samples: int, seed: int) -> MimoSamples:
        """S subnetworks, a seeded cycle over the M (repeats when S > M; see `cycle_members`).
        Uncalibrated, for the reason the ensemble's members are (`EnsemblePosterior.sample_weights`):
        BALD / EPIG rank by the subnetworks' own disagreement; `predict` is the calibrated predictive."""
        return MimoSamples(cycle_members(self.num_members, num_samples, seed), seed)

    def sample_logits(self, weights: MimoSamples, x) -> np.ndarray:
        """Logits of the sampled subnetworks `(S, N, K)`: one forward pass, then a gather."""
        return self.member_logits(x)[weights.members]

    def sample_probs(self, weights: MimoSamples, x) -> np.ndarray:
        return softmax(self.member_logits(x))[weights.members]

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, header = standardisation_state(self.input_mean, self.input_scale)
        arrays.update(
            hidden_weights=self.hidden_weights, hidden_bias=self.hidden_bias, head_weights=self.head_weights,
            head_bias=self.head_bias, skip_weights=self.skip_weights,
        )
        return arrays, {**header, "temperature": float(self.temperature), "variance_scale": float(self.variance_scale)}

    @classmethod
    def from_state(cls, arrays, header, provenance, classes, embedding_spec_key) -> "MimoPosterior":
        return cls(
            arrays["hidden_weights"], arrays["hidden_bias"], arrays["head_weights"], arrays["head_bias"],
            arrays["skip_weights"], provenance, tuple(classes), embedding_spec_key, arrays.get("input_mean"),
            float(header.get("input_scale", 1.0)), float(header.get("temperature", 1.0)),
            float(header.get("variance_scale", 1.0)),
        )


def _torch_params(posterior: MimoPosterior) -> dict:
    import torch

    return {
        "U": torch.from_numpy(posterior.hidden_weights), "b": torch.from_numpy(posterior.hidden_bias),
        "V": torch.from_numpy(posterior.head_weights), "c": torch.from_numpy(posterior.head_bias),
        "S": torch.from_numpy(posterior.skip_weights),
    }


def _forward(params: dict, slots: list):
    """Head logits `(M, n, K)` for M slot inputs `(n, D + 1)` each (bias column last)."""
    import torch

    joined = torch.cat([s[:, :-1] for s in slots], dim=1)  # (n, M*D)
    hidden = torch.relu(joined @ params["U"].T + params["b"])  # (n, H)
    deep = torch.einsum("nh,mkh->mnk", hidden, params["V"]) + params["c"][:, None, :]
    skip = torch.stack([s @ params["S"][m].T for m, s in enumerate(slots)])  # (M, n, K)
    return deep + skip


def diversity(member_logits: np.ndarray) -> dict[str, float]:
    """Mean pairwise argmax disagreement and symmetric KL between subnetworks on inputs `(M, N, K)`."""
    logits = member_logits.astype(np.float64)
    log_probs = logits - logits.max(axis=2, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(axis=2, keepdims=True))
    probs = np.exp(log_probs)
    predicted = logits.argmax(axis=2)
    count = logits.shape[0]
    disagreement, divergence, pairs = 0.0, 0.0, 0
    for a in range(count):
        for b in range(a + 1, count):
            disagreement += float((predicted[a] != predicted[b]).mean())
            divergence += float(((probs[a] - probs[b]) * (log_probs[a] - log_probs[b])).sum(axis=1).mean())
            pairs += 1
    return {"disagreement": disagreement / pairs, "symmetric_kl": divergence / pairs}


def _fit_mimo(
    embeddings: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    class_text: np.ndarray | None = None,
    logit_scale: float = 1.0,
    settings: MimoSettings = MimoSettings(),
    seed: int = 0,
    classes=None,
    embedding_spec_key: str = "unspecified",
    parent_version: int | None = None,
    unlabelled: np.ndarray | None = None,
) -> MimoPosterior:
    """Train the M subnetworks (see the module docstring). Needs at least 2 labels."""
    import torch

    if settings.members < 2:
        raise InputError(f"MIMO needs at least 2 subnetworks, got {settings.members}")
    if settings.hidden < 1 or settings.steps < 1 or settings.batch_size < 1 or settings.learning_rate <= 0:
        raise InputError(f"hidden, steps, batch size and learning rate must be positive; got {settings.as_dict()}")
    inputs = prepare_head_inputs(embeddings, labels, num_classes, class_text, logit_scale, classes, unlabelled, min_labels=2)
    arrays, sync = _train(inputs, num_classes, settings, seed)
    members, count = settings.members, inputs.labels.size
    xa = torch.from_numpy(inputs.xa.astype(np.float32))

    def held_out_logits(train: np.ndarray, held: np.ndarray) -> tuple[np.ndarray]:
        fold, _ = _train(replace(inputs, xa=inputs.xa[train], labels=inputs.labels[train]), num_classes, settings, seed)
        params = {k: torch.from_numpy(v) for k, v in fold.items()}
        return (_forward(params, [xa[torch.from_numpy(held)]] * members).numpy().astype(np.float64).transpose(1, 0, 2),)

    calibration = fit_calibration(inputs.labels, settings.calibration, seed, held_out_logits, calibrated_member_probs)
    posterior = MimoPosterior(
        arrays["U"], arrays["b"], arrays["V"], arrays["c"], arrays["S"],
        PosteriorProvenance(KIND, "", int(count), parent_version, {}),
        inputs.classes, embedding_spec_key, inputs.input_mean, inputs.input_scale, float(calibration["temperature"]),
        float(calibration["variance_scale"]),
    )
    train_logits = _forward(_torch_params(posterior), [xa] * members).numpy()
    check = diversity(train_logits)
    report = {
        "seed": int(seed), "logit_scale": float(logit_scale), "sync_weights": sync.round(4).tolist(),
        "train_subnetwork_disagreement": round(check["disagreement"], 6),
        "train_subnetwork_symmetric_kl": round(check["symmetric_kl"], 6),
        "subnetworks_collapsed": bool(check["symmetric_kl"] < 1e-4),
        "train_accuracy": float((train_logits.mean(axis=0).argmax(axis=1) == inputs.labels).mean()), **calibration,
    }
    source = f"{count} labelled embeddings, {members} MIMO subnetworks" + (" + class-prompt prior" if class_text is not None else "")
    provenance = PosteriorProvenance(KIND, source, int(count), parent_version, {**settings.as_dict(), **report})
    return replace(posterior, provenance=provenance)


def _train(inputs: HeadInputs, num_classes: int, settings: MimoSettings, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Train U, b, V, c, S on `inputs` (see the module docstring) -> float32 arrays and the final sync weights."""
    import torch

    members, dim, hidden = settings.members, inputs.dim, settings.hidden
    count = inputs.labels.size
    generator = torch.Generator().manual_seed(int(seed))
    prior = torch.from_numpy(inputs.prior.astype(np.float32))
    params = {
        "U": torch.randn(hidden, members * dim, generator=generator) * np.sqrt(2.0 / (members * dim)),
        "b": torch.zeros(hidden),
        "V": torch.randn(members, num_classes, hidden, generator=generator) * np.sqrt(1.0 / hidden),
        "c": torch.zeros(members, num_classes),
        "S": prior[None].repeat(members, 1, 1).clone(),
    }
    for value in params.values():
        value.requires_grad_(True)
    optimiser = torch.optim.Adam(params.values(), lr=settings.learning_rate)
    xa = torch.from_numpy(inputs.xa.astype(np.float32))
    y = torch.from_numpy(inputs.labels)
    batch = min(settings.batch_size, count)
    decay = settings.prior_precision / count
    cursors = [0] * members
    orders = [torch.randperm(count, generator=generator) for _ in range(members)]
    running = torch.zeros(members)
    for step in range(settings.steps):
        picks = []
        for m in range(members):  # each slot walks its own permutation: independent batches side by side
            if cursors[m] + batch > count:
                orders[m], cursors[m] = torch.randperm(count, generator=generator), 0
            picks.append(orders[m][cursors[m] : cursors[m] + batch])
            cursors[m] += batch
        logits = _forward(params, [xa[p] for p in picks])  # (M, B, K)
        losses = torch.stack([torch.nn.functional.cross_entropy(logits[m], y[picks[m]]) for m in range(members)])
        with torch.no_grad():
            running = losses.detach() if step == 0 else settings.running_loss_decay * running + (1 - settings.running_loss_decay) * losses.detach()
            sync = torch.softmax(running, dim=0)  # detached: no gradient through the weights
        penalty = sum((v**2).sum() for k, v in params.items() if k in ("U", "V")) + ((params["S"] - prior) ** 2).sum()
        loss = members * (sync * losses).sum() + 0.5 * decay * penalty
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return {k: v.detach().numpy().astype(np.float32) for k, v in params.items()}, sync.numpy()


def fit_mimo(*args, **kwargs):
    """Train the M subnetworks (see the module docstring). Needs at least 2 labels.
    Arguments as `_fit_mimo`; runs with one BLAS / torch thread (`threads.one_thread`)."""
    with one_thread():
        return _fit_mimo(*args, **kwargs)
