"""Acquisition: single-point scores, batch modes, BatchBALD, cold start, chunked scoring.

Pure functions over arrays (no I/O). Importing this package does not import torch or
scikit-learn; the kernels import them when first called. Three registries name the pieces
`alkit select` composes (`alkit strategies` lists them): `SCORERS` (scores.py; the logits fast
path in logits.py, analytic BALD in analytic_bald.py), `BATCH_MODES` (batch.py; the `batchbald`
mode wraps `alkit.acquisition.batchbald.batchbald`, not re-exported: the name would shadow the
module) and `COLD_START` (coldstart.py). pipeline.py scores a pool chunk by chunk.
"""

from alkit.acquisition.batch import (
    BATCH_MODES,
    BatchMode,
    is_near_duplicate,
    select_batch,
    select_diverse_batch,
    select_without_near_duplicates,
)
from alkit.acquisition.coldstart import COLD_START, kcenter_greedy, typiclust
from alkit.acquisition.pipeline import score_in_chunks
from alkit.acquisition.scores import SCORERS, ScorerSpec, get_scorer

__all__ = [
    "BATCH_MODES",
    "BatchMode",
    "COLD_START",
    "SCORERS",
    "ScorerSpec",
    "get_scorer",
    "is_near_duplicate",
    "kcenter_greedy",
    "score_in_chunks",
    "select_batch",
    "select_diverse_batch",
    "select_without_near_duplicates",
    "typiclust",
]
