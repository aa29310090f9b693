"""One builder per posterior kind: (project, context, training set, settings, parent version) -> posterior.

Registered under the kind's name in `alkit.posterior.registry.POSTERIORS` (a test checks that
both registries list the same kinds); `fit_posterior` looks the builder up instead of branching
on the kind.
"""

from __future__ import annotations

from typing import Any, Callable

from alkit.errors import InputError, StateError
from alkit.project import Project
from alkit.registry import Registry
from alkit.workflows.current_posterior import PosteriorContext
from alkit.workflows.fit_bayesvlm import build_bayesvlm
from alkit.workflows.fit_inputs import TrainingSet, logit_scale, unlabelled_sample
from alkit.workflows.fit_settings import FitSettings
from alkit.workflows.fit_trained_heads import build_ensemble, build_hetsngp, build_mimo

MIN_LABELS_WITHOUT_PROMPTS = 2  # the Laplace head with no class prompts learns from labels alone

Builder = Callable[[Project, PosteriorContext, TrainingSet, FitSettings, "int | None"], Any]


def build_laplace_head(project: Project, context: PosteriorContext, training: TrainingSet, settings: FitSettings, parent_version):
    from alkit.posterior.laplace_head import fit_laplace_head

    text = context.text
    if text.text_emb is None and len(training.labels) < MIN_LABELS_WITHOUT_PROMPTS:
        raise StateError(
            f"the Laplace head needs class-prompt text embeddings or labels; {len(training.labels)} labels and no text "
            "embeddings: import labels (`alkit labels import`) or embeddings with text_embeddings"
        )
    return fit_laplace_head(
        training.features, training.labels, len(context.class_names), class_text=text.text_emb,
        logit_scale=logit_scale(context), classes=context.class_names, embedding_spec_key=context.spec.key,
        parent_version=parent_version, unlabelled=unlabelled_sample(project, context, settings),
    )


def build_probvlm(project: Project, context: PosteriorContext, training: TrainingSet, settings: FitSettings, parent_version):
    """ProbVLM adapters on a seeded sample of non-test images + the labelled image / class-prompt pairs."""
    from alkit.posterior.probvlm import fit_probvlm
    from alkit.posterior.probvlm_adapter import ProbVLMSettings

    if settings.pairs_csv:
        raise InputError(
            f"--pairs {settings.pairs_csv}: probvlm does not train on captions (it pairs labelled images with their "
            "class prompt); drop --pairs or use --posterior bayesvlm"
        )
    text = context.text
    if text.text_emb is None:
        raise StateError(
            "probvlm turns embeddings into class probabilities against class-prompt text embeddings and this spec has "
            "none; import embeddings with text_embeddings, embed with an open_clip model, or use --posterior laplace_head"
        )
    return fit_probvlm(
        unlabelled_sample(project, context, settings), training.features, training.labels, class_text=text.text_emb,
        logit_scale=logit_scale(context),
        settings=ProbVLMSettings(epochs=settings.epochs, learning_rate=settings.learning_rate), seed=settings.seed,
        classes=context.class_names, embedding_spec_key=context.spec.key, parent_version=parent_version,
    )


BUILDERS: Registry[Builder] = Registry("posterior")
for _kind, _builder in {
    "bayesvlm": build_bayesvlm, "laplace_head": build_laplace_head, "probvlm": build_probvlm,
    "ensemble": build_ensemble, "mimo": build_mimo, "hetsngp": build_hetsngp,
}.items():
    BUILDERS.register(_kind, _builder)
