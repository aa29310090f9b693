"""Calibration of CVP's variances on labelled images held out from the curvature.

Two stages, both minimising the mean NLL of the probit predictive (`predictive.py`, BayesVLM's
ProbCosine + probit) of the labels:
1. one variance scale per propagated block, c_b multiplying that block's posterior variances
   (the Laplace scale is set by the evidence on unlabelled images and is not calibrated for
   CVP's prediction; block scales let the data say which depth the uncertainty comes from);
2. then one output scale tau multiplying the logit variance, with the block scales fixed.
Fitting tau jointly with the c_b would be near-degenerate (for k = 1 the embedding variance is
almost linear in c_1), so the stages are sequential; tau stays ~1 unless the probit's shape
needs a correction the block scales cannot give. Search in log scale, bounded to
[e^-25, e^10] (Powell; each evaluation is one CVP pass over the labelled images' cached
prefix tokens). Refit after each labelling round with the new labels (a pure function).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alkit.cvp.blocks import propagate_tail, tail_weights
from alkit.cvp.predictive import probit_predictive
from alkit.cvp.weights import WeightPosterior
from alkit.jsonable import JsonResult

LOG_SCALE_BOUNDS = (-25.0, 10.0)


@dataclass(frozen=True)
class Calibration(JsonResult):
    """Fitted scales and the labelled images' mean NLL before (all scales 1) and after."""

    block_scales: tuple[float, ...]
    output_scale: float
    nll_before: float
    nll_after: float
    num_images: int

    def apply(self, posterior: WeightPosterior) -> WeightPosterior:
        return posterior.scaled(self.block_scales)


def predictive_nll(visual, tokens, labels, posterior: WeightPosterior, class_text, logit_scale: float,
                   output_scale: float = 1.0, weights=None) -> float:
    """Mean -log p(y_i) of the CVP probit predictive over the labelled images."""
    import torch

    with torch.no_grad():
        moments = propagate_tail(visual, tokens, posterior, weights=weights)
    probs = probit_predictive(moments.pooled_mean, moments.pooled_var, visual.proj, class_text, logit_scale, output_scale)
    labels = np.asarray(labels)
    return float(-np.mean(np.log(np.clip(probs[np.arange(labels.size), labels], 1e-300, None))))


def _minimise(objective, start: np.ndarray) -> np.ndarray:
    from scipy.optimize import minimize

    bounds = [LOG_SCALE_BOUNDS] * start.size
    result = minimize(objective, start, method="Powell", bounds=bounds, options={"xtol": 1e-2, "ftol": 1e-6})
    return np.asarray(result.x, dtype=float).reshape(start.shape)


def fit_calibration(visual, tokens, labels, posterior: WeightPosterior, class_text, logit_scale: float) -> Calibration:
    """Block scales, then the output scale, by NLL on `tokens` (prefix tokens of labelled images)."""
    weights = tail_weights(visual, posterior.num_blocks)

    def nll(log_blocks, log_output=0.0):
        scaled = posterior.scaled(np.exp(np.asarray(log_blocks, dtype=float)))
        return predictive_nll(visual, tokens, labels, scaled, class_text, logit_scale, float(np.exp(log_output)), weights)

    before = nll(np.zeros(posterior.num_blocks))
    log_blocks = _minimise(lambda x: nll(x), np.zeros(posterior.num_blocks))
    log_output = _minimise(lambda x: nll(log_blocks, float(x[0])), np.zeros(1))[0]
    after = nll(log_blocks, log_output)
    if after > before:  # the search never returns worse than where it started
        log_blocks, log_output, after = np.zeros(posterior.num_blocks), 0.0, before
    return Calibration(tuple(float(v) for v in np.exp(log_blocks)), float(np.exp(log_output)), before, after,
                       int(np.asarray(labels).size))
