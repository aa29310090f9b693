"""`alkit fit --posterior ensemble | mimo | hetsngp`: trained heads on the embeddings.

Kept apart from `fit.py` so the kinds plug in through one branch there. Each gets the same
inputs as the Laplace head: labelled embeddings, class-prompt text embeddings as the prior mean
(when the spec has them), and a seeded sample of non-test embeddings for the input centring.
"""

from __future__ import annotations

import math

import numpy as np

from alkit.errors import StateError

TRAINED_HEAD_KINDS = ("ensemble", "mimo", "hetsngp")
IMPORTED_LOGIT_SCALE = 100.0  # CLIP's s, as for the Laplace head


def fit_trained_head(project, context, kind: str, features: np.ndarray, labels: np.ndarray, settings, parent_version):
    """Fit one of TRAINED_HEAD_KINDS; `settings` is `fit.FitSettings` (seed, hyper)."""
    from alkit.workflows.fit import _unlabelled_sample

    text = context.text
    needed = 1 if kind == "ensemble" else 2
    if len(labels) < needed and (kind != "ensemble" or text.text_emb is None):
        raise StateError(
            f"the {kind} posterior needs {'class-prompt text embeddings or ' if kind == 'ensemble' else ''}at least "
            f"{needed} labels; it has {len(labels)}: import labels (`alkit labels import`) or use --posterior laplace_head"
        )
    scale = math.exp(text.logit_scale) if text.logit_scale is not None else IMPORTED_LOGIT_SCALE
    common = dict(
        class_text=text.text_emb, logit_scale=scale, seed=settings.seed, classes=context.class_names,
        embedding_spec_key=context.spec.key, parent_version=parent_version,
        unlabelled=_unlabelled_sample(project, context, settings),
    )
    num_classes = len(context.class_names)
    if kind == "ensemble":
        from alkit.posterior.ensemble import EnsembleSettings, fit_ensemble

        return fit_ensemble(features, labels, num_classes, settings=EnsembleSettings(hyper=bool(settings.hyper)), **common)
    if kind == "mimo":
        from alkit.posterior.mimo import fit_mimo

        return fit_mimo(features, labels, num_classes, **common)
    from alkit.posterior.hetsngp import fit_hetsngp

    return fit_hetsngp(features, labels, num_classes, **common)
