"""What `alkit fit` is asked to do: the settings dataclass and its named numbers.

Free of heavy imports, so the CLI takes its defaults from here when it builds `alkit fit --help`.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    phi_variance_scale: float | None = None  # bayesvlm on a --cvp-blocks spec: None = chosen by cross-validated NLL
    labels_fingerprint: str | None = None  # set by fit_posterior: which labels the fit saw (fit_freshness)
