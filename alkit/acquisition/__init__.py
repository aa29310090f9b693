"""Acquisition: single-point scores, batch selectors, BatchBALD, cold start, chunked scoring.

Pure functions over arrays (no I/O). Importing this package does not import torch or
scikit-learn; the kernels import them when first called. BatchBALD lives in
`alkit.acquisition.batchbald.batchbald` (not re-exported: the name would shadow the module).
"""

from alkit.acquisition.batch import BATCH_MODES, select_batch, select_diverse_batch, select_without_near_duplicates
from alkit.acquisition.coldstart import COLD_START, kcenter_greedy, typiclust
from alkit.acquisition.pipeline import score_in_chunks
from alkit.acquisition.scores import SCORERS, ScorerSpec, get_scorer

__all__ = [
    "BATCH_MODES",
    "COLD_START",
    "SCORERS",
    "ScorerSpec",
    "get_scorer",
    "kcenter_greedy",
    "score_in_chunks",
    "select_batch",
    "select_diverse_batch",
    "select_without_near_duplicates",
    "typiclust",
]
