"""`alkit select --engine ray`: the candidate pool's embedding shards scored on Ray actors.

The driver draws the posterior's shared samples ONCE and ships them with the posterior as one
`alkit.acquisition.pipeline.PoolScoring` object (`ray.put`, one copy in the object store), cuts
the candidate ids into one contiguous shard per actor at chunk boundaries (each chunk holds
the same rows as in the local engine), and each `ShardScorer` actor reads its shard's vectors
from the project's memory-mapped float16 files (the same project directory: a shared
filesystem on multi-node clusters), scores them with the same `PoolScoring.score` the local
engine runs, keeps the scores and hands back only its first items in the batch mode's draw
order (`alkit.acquisition.sharded`). The driver merges them; near-duplicate suppression asks
the actors for more while it leaves fewer than B. The result equals the local engine's batch
(see `alkit.acquisition.sharded` for why, and for softrank and BatchBALD).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from alkit.arrays import chunk_slices

CPUS_PER_SCORER = 1  # CPUs Ray reserves per scoring actor: --workers actors use --workers CPUs


class ShardScorer:
    """Ray actor: one shard of candidate ids, scored once and kept for draw-order requests."""

    def __init__(self, project_root: str, spec_id: int, kind: str):
        from alkit.project import open_project

        self.project, self.spec_id, self.kind = open_project(Path(project_root)), spec_id, kind
        self.ids = np.zeros(0, dtype=np.int64)
        self.scores = np.zeros(0, dtype=np.float64)

    def score(self, ids: np.ndarray, scoring) -> tuple[np.ndarray, float]:
        """Score the shard `ids` (ascending) with `scoring`; returns (the ids whose score is not
        finite, seconds spent loading and scoring)."""
        import time

        from alkit.acquisition.pipeline import non_finite_ids
        from alkit.storage.vectors import load_vectors

        def features(chunk_ids: np.ndarray) -> np.ndarray:
            return load_vectors(self.project, self.spec_id, chunk_ids, kind=self.kind)[1]

        started = time.perf_counter()
        self.ids = np.asarray(ids, dtype=np.int64)
        self.scores = scoring.score(features, self.ids) if len(self.ids) else np.zeros(0)
        return non_finite_ids(self.scores, self.ids), time.perf_counter() - started

    def draw_order(self, count: int, mode: str, seed: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of the shard's first `count` items in the global draw order."""
        from alkit.acquisition.sharded import shard_draw_order

        positions = shard_draw_order(self.scores, self.ids, count, mode, seed, beta)
        return self.ids[positions], self.scores[positions]


@dataclass(frozen=True)
class RayScoringStats:
    """How a Ray scoring run went: actors used and each one's load + score seconds."""

    actors: int
    shard_seconds: list[float]


def shard_bounds(num_items: int, shards: int, chunk_size: int) -> list[tuple[int, int]]:
    """[start, stop) of `shards` contiguous shards of [0, num_items) cut at multiples of
    `chunk_size` (so every scoring chunk is the local engine's); fewer when there are fewer chunks."""
    chunks = list(chunk_slices(num_items, chunk_size))
    groups = [g for g in np.array_split(np.arange(len(chunks)), max(1, min(shards, len(chunks)))) if len(g)]
    return [(chunks[g[0]].start, chunks[g[-1]].stop) for g in groups]


def select_on_ray(project_root: Path, spec_id: int, kind: str, candidate_ids: np.ndarray, scoring, workers: int,
                  choose: Callable, address: str | None = None):
    """Score `candidate_ids` (ascending) on `workers` actors (fewer when there are fewer chunks)
    and return (`choose(shard_orders, bad_ids)`, `RayScoringStats`): `shard_orders(count, mode,
    seed, beta)` gives every actor's first `count` (ids, scores) in that mode's draw order,
    `bad_ids` the ids whose score is not finite. Actors are ended on return."""
    from alkit.embedding.ray_engine import _ensure_ray

    ray = _ensure_ray(address)
    bounds = shard_bounds(len(candidate_ids), workers, scoring.chunk_size)
    cpus = ray.cluster_resources().get("CPU", 0)
    if len(bounds) * CPUS_PER_SCORER > cpus:  # the extra actors would wait for a CPU forever
        from alkit.errors import StateError

        raise StateError(
            f"--workers {len(bounds)} needs {len(bounds) * CPUS_PER_SCORER} CPUs but the Ray cluster has {cpus:g}; "
            "lower --workers or add nodes"
        )
    actor_class = ray.remote(num_cpus=CPUS_PER_SCORER)(ShardScorer)
    actors = [actor_class.remote(str(project_root), int(spec_id), kind) for _ in bounds]
    try:
        shared = ray.put(scoring)  # the posterior and its samples, once for all actors
        scored = ray.get([a.score.remote(candidate_ids[start:stop], shared) for a, (start, stop) in zip(actors, bounds)])
        bad = np.concatenate([ids for ids, _ in scored]) if scored else np.zeros(0, dtype=np.int64)

        def shard_orders(count: int, mode: str, seed: int, beta: float):
            return ray.get([a.draw_order.remote(count, mode, seed, beta) for a in actors])

        return choose(shard_orders, bad), RayScoringStats(len(actors), [seconds for _, seconds in scored])
    except ray.exceptions.RayTaskError as failure:  # an alkit error in an actor: the same error here
        from alkit.errors import AlkitError

        cause = getattr(failure, "cause", None)
        if isinstance(cause, AlkitError):
            raise type(cause)(str(cause)) from None
        raise
    finally:
        for actor in actors:
            ray.kill(actor)
