"""`alkit fit --posterior ensemble | mimo | hetsngp`: trained heads on the embeddings.

Each gets the same inputs as the Laplace head: labelled embeddings, class-prompt text embeddings
as the prior mean (when the spec has them), and a seeded sample of non-test embeddings for the
input centring.
"""

from __future__ import annotations

from alkit.errors import StateError
from alkit.project import Project
from alkit.workflows.current_posterior import PosteriorContext
from alkit.workflows.fit_inputs import TrainingSet, logit_scale, unlabelled_sample
from alkit.workflows.fit_settings import FitSettings

TRAINED_HEAD_KINDS = ("ensemble", "mimo", "hetsngp")
MIN_LABELS = {"ensemble": 1, "mimo": 2, "hetsngp": 2}  # the ensemble also fits on class prompts alone


def _common_inputs(project: Project, context: PosteriorContext, kind: str, training: TrainingSet, settings: FitSettings, parent_version) -> dict:
    text = context.text
    needed = MIN_LABELS[kind]
    if len(training.labels) < needed and (kind != "ensemble" or text.text_emb is None):
        raise StateError(
            f"the {kind} posterior needs {'class-prompt text embeddings or ' if kind == 'ensemble' else ''}at least "
            f"{needed} labels; it has {len(training.labels)}: import labels (`alkit labels import`) or use --posterior laplace_head"
        )
    return dict(
        class_text=text.text_emb, logit_scale=logit_scale(context), seed=settings.seed, classes=context.class_names,
        embedding_spec_key=context.spec.key, parent_version=parent_version,
        unlabelled=unlabelled_sample(project, context, settings),
    )


def build_ensemble(project: Project, context: PosteriorContext, training: TrainingSet, settings: FitSettings, parent_version):
    from alkit.posterior.ensemble import EnsembleSettings, fit_ensemble

    common = _common_inputs(project, context, "ensemble", training, settings, parent_version)
    return fit_ensemble(
        training.features, training.labels, len(context.class_names), settings=EnsembleSettings(hyper=bool(settings.hyper)), **common
    )


def build_mimo(project: Project, context: PosteriorContext, training: TrainingSet, settings: FitSettings, parent_version):
    from alkit.posterior.mimo import fit_mimo

    common = _common_inputs(project, context, "mimo", training, settings, parent_version)
    return fit_mimo(training.features, training.labels, len(context.class_names), **common)


def build_hetsngp(project: Project, context: PosteriorContext, training: TrainingSet, settings: FitSettings, parent_version):
    from alkit.posterior.hetsngp import fit_hetsngp

    common = _common_inputs(project, context, "hetsngp", training, settings, parent_version)
    return fit_hetsngp(training.features, training.labels, len(context.class_names), **common)
