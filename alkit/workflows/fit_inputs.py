"""What a fit reads: the labelled training set and the seeded unlabelled sample (and the spec's logit scale).

Shared by every posterior builder (`fit_builders`, `fit_bayesvlm`, `fit_trained_heads`), so no
builder imports `fit` (which imports the builders).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from alkit.posterior.base import FeatureKind
from alkit.project import Project
from alkit.storage.classes import class_rows
from alkit.storage.labels import resolved_labels
from alkit.storage.schema import TRAINING_SPLITS
from alkit.storage.vectors import embedded_image_ids, load_vectors
from alkit.workflows.current_posterior import PosteriorContext
from alkit.workflows.fit_settings import IMPORTED_LOGIT_SCALE, FitSettings

@dataclass(frozen=True)
class TrainingSet:
    """The labelled non-test images a fit learns from, in ascending id order."""

    image_ids: np.ndarray  # (L,)
    features: np.ndarray  # (L, F): phi or embeddings, as the posterior kind consumes
    labels: np.ndarray  # (L,) class indices into the class list


def labelled_training_set(project: Project, context: PosteriorContext, feature_kind: FeatureKind) -> TrainingSet:
    """The labelled, embedded non-test images with their resolved class indices."""
    candidate_ids = embedded_image_ids(project, context.spec.id, splits=TRAINING_SPLITS).tolist()
    with project.engine.connect() as connection:
        resolved = resolved_labels(connection, candidate_ids) if candidate_ids else {}
        position = {row.id: index for index, row in enumerate(class_rows(connection))}
    ids, features = load_vectors(project, context.spec.id, sorted(resolved), kind=feature_kind)
    labels = np.array([position[resolved[int(i)]] for i in ids], dtype=np.int64)
    return TrainingSet(ids, features, labels)


def unlabelled_sample(project: Project, context: PosteriorContext, settings: FitSettings) -> np.ndarray:
    """Embeddings of up to `unlabelled_sample_size` non-test images (seeded sample): the head
    posteriors' input centring and ProbVLM's training set come from them, never from the test split."""
    image_ids = embedded_image_ids(project, context.spec.id, splits=TRAINING_SPLITS)
    if len(image_ids) > settings.unlabelled_sample_size:
        image_ids = np.random.default_rng(settings.seed).choice(image_ids, settings.unlabelled_sample_size, replace=False)
    return load_vectors(project, context.spec.id, np.asarray(image_ids).tolist(), kind=FeatureKind.EMBEDDING)[1]


def logit_scale(context: PosteriorContext) -> float:
    """CLIP's s = exp(logit_scale) of the spec, or IMPORTED_LOGIT_SCALE for imported embeddings."""
    raw = context.text.logit_scale
    return math.exp(raw) if raw is not None else IMPORTED_LOGIT_SCALE
