"""Training ProbVLM's adapters: intra-modal denoising + cross-modal pairs, Adam, early stopping.

Loss per step (means over items of NLLs summed over dims): L_intra(image) + L_intra(text) +
cross_weight * L_cross, where L_cross scores the image adapter's distribution at the paired
text embedding and the text adapter's at the paired image embedding. Early stopping on a
held-out slice of images (and of pairs when there are >= MIN_HELD_OUT_PAIRS); the best epoch's
parameters are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from alkit.errors import InputError, StateError
from alkit.posterior.probvlm_adapter import ProbVLMSettings, adapter_nll, dropout_masks, init_adapter, unit_rows

MIN_HELD_OUT_PAIRS = 10  # fewer pairs than this: all pairs train, early stopping uses images only


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
