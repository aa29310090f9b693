"""What a fit reads: its settings, the labelled training set and the seeded unlabelled sample.

Shared by every posterior builder (`fit_builders`, `fit_bayesvlm`, `fit_trained_heads`), so no
builder imports `fit` (which imports the builders).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from alkit.posterior.base import FeatureKind
from alkit.project import Project
from alkit.storage.pool import class_rows, resolved_labels
from alkit.storage.schema import Split, images
from alkit.storage.vectors import embedded_image_ids, load_vectors
from alkit.workflows.current_posterior import PosteriorContext

DEFAULT_PSEUDO_DATA = 10.0  # BayesVLM's n with no labels (the reference uses 4-10)
# With labels and no --pseudo-data, n is chosen from this grid by the labels' Laplace evidence.
PSEUDO_DATA_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)
DEFAULT_UNLABELLED_SAMPLE = 20_000  # images sampled for the curvature / centring / ProbVLM training
IMPORTED_LOGIT_SCALE = 100.0  # CLIP's s, used for imported embeddings with text embeddings
DEFAULT_PROBVLM_EPOCHS = 30
# science.md says 1e-4; 3e-3 moved the adapters in 30 epochs, 1e-4 barely did.
DEFAULT_PROBVLM_LEARNING_RATE = 3e-3


@dataclass(frozen=True)
class FitSettings:
    posterior: str | None = None  # None: `fit.default_posterior_kind` (bayesvlm with --factors/--pairs)
    pseudo_data: float | None = None  # None: chosen by evidence (PSEUDO_DATA_GRID), DEFAULT_PSEUDO_DATA without labels
    candidate_batch_size: int | None = None
    # Seeded sample of unlabelled images: BayesVLM's zero-shot curvature (pool split), the head
    # posteriors' input centring and ProbVLM's intra-modal training set (non-test images).
    unlabelled_sample_size: int = DEFAULT_UNLABELLED_SAMPLE
    factors_dir: str | None = None
    pairs_csv: str | None = None
    seed: int = 0
    epochs: int = DEFAULT_PROBVLM_EPOCHS  # probvlm: training epochs (early stopping may end sooner)
    learning_rate: float = DEFAULT_PROBVLM_LEARNING_RATE  # probvlm: Adam step size
    hyper: bool = False  # ensemble: members also differ in weight decay (hyperparameter ensemble)
    labels_fingerprint: str | None = None  # set by fit_posterior: which labels the fit saw (fit_freshness)


@dataclass(frozen=True)
class TrainingSet:
    """The labelled non-test images a fit learns from, in ascending id order."""

    image_ids: np.ndarray  # (L,)
    features: np.ndarray  # (L, F): phi or embeddings, as the posterior kind consumes
    labels: np.ndarray  # (L,) class indices into the class list


def labelled_training_set(project: Project, context: PosteriorContext, feature_kind: FeatureKind) -> TrainingSet:
    """The labelled, embedded non-test images with their resolved class indices."""
    candidate_ids = embedded_image_ids(project, context.spec.id, images.c.split != Split.TEST.value).tolist()
    with project.engine.connect() as connection:
        resolved = resolved_labels(connection, candidate_ids) if candidate_ids else {}
        position = {row.id: index for index, row in enumerate(class_rows(connection))}
    ids, features = load_vectors(project, context.spec.id, sorted(resolved), kind=feature_kind)
    labels = np.array([position[resolved[int(i)]] for i in ids], dtype=np.int64)
    return TrainingSet(ids, features, labels)


def unlabelled_sample(project: Project, context: PosteriorContext, settings: FitSettings) -> np.ndarray:
    """Embeddings of up to `unlabelled_sample_size` non-test images (seeded sample): the head
    posteriors' input centring and ProbVLM's training set come from them, never from the test split."""
    image_ids = embedded_image_ids(project, context.spec.id, images.c.split != Split.TEST.value)
    if len(image_ids) > settings.unlabelled_sample_size:
        image_ids = np.random.default_rng(settings.seed).choice(image_ids, settings.unlabelled_sample_size, replace=False)
    return load_vectors(project, context.spec.id, np.asarray(image_ids).tolist(), kind=FeatureKind.EMBEDDING)[1]


def logit_scale(context: PosteriorContext) -> float:
    """CLIP's s = exp(logit_scale) of the spec, or IMPORTED_LOGIT_SCALE for imported embeddings."""
    raw = context.text.logit_scale
    return math.exp(raw) if raw is not None else IMPORTED_LOGIT_SCALE
