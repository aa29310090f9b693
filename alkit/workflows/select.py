"""`alkit select`: score the unlabelled pool and record the next round.

A composition of registered pieces: pool (`storage.selection`) -> optional candidate
restriction near a query (`workflows.index`) -> the posterior's scores in chunks with one set
of shared samples (a scorer from `acquisition.SCORERS`, `acquisition.pipeline.score_pool`) ->
a batch mode from `acquisition.BATCH_MODES` (top-B, Gumbel-top-B, or BatchBALD over a
shortlist) with the one near-duplicate suppression (`acquisition.batch.select_diverse_batch`)
-> one transaction that claims the images and records the round and its items. A scorer that
needs no posterior (`random`) skips the posterior. Without a usable posterior the pool is
either scored zero-shot (a posterior built from class prompts) or covered by a cold-start
selector (`acquisition.COLD_START`); the result says which.

`engine="ray"` (`alkit select --engine ray`) scores the candidates on Ray actors, one shard
each, with the same posterior samples, and merges the shards' first draws into exactly the
local engine's batch (`alkit.embedding.ray_scoring`, `alkit.acquisition.sharded`). BatchBALD
(joint over a shortlist) is refused with `--engine ray`; a scorer without posterior (random)
and the cold start run in the driver, as there is nothing to score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from alkit.errors import InputError, StateError
from alkit.jsonable import JsonResult
from alkit.progress import note as progress_note, stage
from alkit.project import Project
from alkit.storage.db import utcnow
from alkit.workflows.select_settings import ENGINES, SelectSettings

__all__ = ["SelectSettings", "SelectedItem", "SelectionResult", "score_candidates", "select_round"]


@dataclass
class SelectedItem(JsonResult):
    image_id: int
    path: str
    rank: int
    score: float | None
    predicted_class: str | None
    probability: float | None


@dataclass
class SelectionResult(JsonResult):
    round_id: int
    strategy: str
    method: str  # how the pool was scored: posterior version, zero-shot, cold start
    items: list[SelectedItem]
    pool_size: int
    scored: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    json_names = {"round_id": "round"}


def _validate(settings: SelectSettings):
    """The settings' scorer; unknown names, a joint batch mode without a posterior and bad
    numbers raise InputError."""
    from alkit.acquisition import BATCH_MODES, COLD_START, SCORERS

    scorer = SCORERS.get(settings.strategy)
    if BATCH_MODES.get(settings.batch_mode).joint and not scorer.uses_posterior:
        raise InputError(
            f"--batch-mode {settings.batch_mode} chooses from posterior samples but --strategy {settings.strategy} "
            "uses no posterior; pick another --batch-mode or --strategy"
        )
    COLD_START.get(settings.cold_start)
    if settings.engine not in ENGINES:
        raise InputError(f"--engine must be one of {', '.join(ENGINES)}, got {settings.engine!r}")
    if settings.engine == "ray" and BATCH_MODES.get(settings.batch_mode).joint:
        raise InputError(
            f"--batch-mode {settings.batch_mode} chooses jointly from one shortlist's posterior samples and is not "
            "sharded; use --engine local with it, or --batch-mode top, power, softmax or softrank on Ray"
        )
    if settings.workers < 1:
        raise InputError(f"--workers must be >= 1, got {settings.workers}")
    if settings.budget < 1:
        raise InputError(f"--budget must be >= 1, got {settings.budget}")
    if settings.samples < 2:
        raise InputError(f"--samples must be >= 2, got {settings.samples}")
    return scorer


def select_round(project: Project, settings: SelectSettings) -> SelectionResult:
    """Choose B images and record them as a new open round."""
    from alkit.acquisition.pipeline import check_finite_scores
    from alkit.storage.selection import eligible_pool_ids

    started = time.perf_counter()
    scorer = _validate(settings)
    from alkit.workflows.current_posterior import posterior_context

    context = posterior_context(project)
    pool_ids = eligible_pool_ids(project.engine, context.spec.id)
    if len(pool_ids) == 0:
        raise StateError(
            "no unlabelled embedded pool images to select from; run `alkit add` and `alkit embed`, or label the open round"
        )
    if settings.budget > len(pool_ids):
        raise StateError(
            f"budget {settings.budget} > {len(pool_ids)} unlabelled images; lower --budget or add images"
        )
    notes: list[str] = []
    candidate_ids = _candidates(project, context, settings, pool_ids, notes)
    posterior_version, posterior, method = _posterior_for_selection(project, context, settings, notes, scorer)
    if not scorer.uses_posterior:
        scores = scorer.function(len(candidate_ids), settings.seed)
    elif posterior is None:
        scores = None
    elif settings.engine == "ray":
        with stage(f"select: scoring {len(candidate_ids):,} pool images with {settings.strategy} ({method}) on Ray"):
            chosen_ids, chosen_scores = _select_on_ray(project, context, posterior, candidate_ids, settings, notes)
        return _finish(project, context, settings, method, posterior_version, posterior, chosen_ids,
                       chosen_scores.tolist(), pool_ids, len(candidate_ids), started, notes)
    else:
        with stage(f"select: scoring {len(candidate_ids):,} pool images with {settings.strategy} ({method})"):
            scores = score_candidates(project, context, posterior, candidate_ids, settings)
        check_finite_scores(scores, candidate_ids, settings.strategy)

    if scores is None:
        chosen_positions, method = _cold_start(project, context.spec.id, candidate_ids, settings)
        chosen_scores = [None] * len(chosen_positions)
    else:
        chosen_positions = _batch(project, context, posterior, candidate_ids, scores, settings, notes)
        chosen_scores = [float(scores[p]) for p in chosen_positions]
    return _finish(project, context, settings, method, posterior_version, posterior, candidate_ids[chosen_positions],
                   chosen_scores, pool_ids, len(candidate_ids) if scores is not None else 0, started, notes)


def _finish(project, context, settings, method, posterior_version, posterior, chosen_ids, chosen_scores, pool_ids,
            scored, started, notes) -> SelectionResult:
    """Record the chosen images as a round and say what was done."""
    progress_note(f"select: chose {len(chosen_ids)} images; recording the round")
    predictions = _predictions(project, context, posterior, chosen_ids)
    round_id, items = _record_round(
        project, context, settings, method, posterior_version, chosen_ids, chosen_scores, predictions
    )
    return SelectionResult(
        round_id=round_id, strategy=settings.strategy, method=method, items=items, pool_size=len(pool_ids),
        scored=scored, seconds=round(time.perf_counter() - started, 3), notes=notes,
    )


def _candidates(project, context, settings: SelectSettings, pool_ids: np.ndarray, notes: list[str]) -> np.ndarray:
    """The pool ids to score: all of them, or those nearest --query / --like / --target."""
    if not settings.restricts_candidates:
        return pool_ids
    from alkit.workflows.index import nearest_candidates
    from alkit.workflows.query_vectors import query_vectors

    queries = query_vectors(
        project, context.spec, text=settings.query, like=list(settings.like),
        target_split=settings.target_split if settings.candidates else None,
    )
    candidate_ids = nearest_candidates(project, context.spec, queries, pool_ids, settings.candidate_count())
    if len(candidate_ids) < settings.budget:
        raise StateError(
            f"only {len(candidate_ids)} candidates near the query for budget {settings.budget}; raise --candidates"
        )
    notes.append(f"scored the {len(candidate_ids)} pool items nearest the query/targets")
    return candidate_ids


def _posterior_for_selection(project, context, settings: SelectSettings, notes: list[str], scorer):
    """(version, posterior, method); builds a zero-shot posterior when none exists yet."""
    from alkit.workflows.current_posterior import load_current_posterior
    from alkit.workflows.fit import FitSettings, fit_posterior

    if not scorer.uses_posterior:
        return None, None, settings.strategy
    row, posterior = load_current_posterior(project, context)
    if row is not None:
        return row.version, posterior, f"{row.kind} posterior v{row.version} ({row.labels_used} labels)"
    try:
        fitted = fit_posterior(project, FitSettings(seed=settings.seed))
    except StateError as reason:
        notes.append(f"no posterior can be built yet ({reason}); using the cold-start selector")
        return None, None, "cold start"
    row, posterior = load_current_posterior(project, context)
    kind = "zero-shot " if fitted.labels_used == 0 else ""
    notes.append(f"fitted {kind}{fitted.kind} posterior v{fitted.version} ({fitted.curvature_source})")
    return row.version, posterior, f"{kind}{fitted.kind} posterior v{fitted.version}"


def score_candidates(project, context, posterior, candidate_ids: np.ndarray, settings: SelectSettings) -> np.ndarray:
    """Scores `(N,)` of the candidates by `settings.strategy`, in chunks, with one set of shared
    weight samples (also what `alkit report` rescores the pool with)."""
    from alkit.storage.vectors import load_vectors

    kind = posterior.feature_kind

    def features(ids: np.ndarray) -> np.ndarray:
        return load_vectors(project, context.spec.id, ids, kind=kind)[1]  # ids are ascending, all embedded

    return _pool_scoring(project, context, posterior, candidate_ids, settings).score(features, candidate_ids)


def _pool_scoring(project, context, posterior, candidate_ids: np.ndarray, settings: SelectSettings):
    """The `PoolScoring` of the settings: the posterior with its shared samples drawn once (and
    EPIG's target probabilities from the same draws), for the local engine or Ray's actors."""
    from alkit.acquisition import SCORERS
    from alkit.acquisition.pipeline import PoolScoring, promote_samples
    from alkit.storage.vectors import load_vectors

    scorer = SCORERS.get(settings.strategy)
    weights = posterior.sample_weights(settings.samples, settings.seed) if scorer.needs_samples else None
    target_probs = None
    if scorer.needs_targets:
        # EPIG is a small difference of O(1) entropies (1e-6 nats on a zero-shot BayesVLM), so
        # its draws and probabilities are float64: float32 round-off was 3.6e-7 there.
        weights = promote_samples(weights)
        target_ids = _epig_target_ids(project, context, candidate_ids, settings)
        _, target_x = load_vectors(project, context.spec.id, target_ids, kind=posterior.feature_kind)
        target_probs = posterior.sample_probs(weights, target_x)  # (S, M, K), same draws as the pool
    # Logits fast path (same scores up to float32 round-off): see acquisition.pipeline.score_features.
    fast = weights is not None and scorer.logits_function is not None and posterior.fast_sample_logits
    return PoolScoring(settings.strategy, posterior, weights, target_probs, bool(fast), settings.chunk_size)


def _select_on_ray(project, context, posterior, candidate_ids: np.ndarray, settings: SelectSettings, notes: list[str]):
    """(chosen ids, their scores) scored on Ray actors and merged in the driver (= the local batch)."""
    from alkit.acquisition.pipeline import raise_non_finite
    from alkit.acquisition.sharded import select_from_shards
    from alkit.embedding.ray_scoring import select_on_ray
    from alkit.storage.vectors import load_vectors_in_order

    budget, mode, seed, beta = settings.budget, settings.batch_mode, settings.seed, settings.beta

    def rows_of_ids(ids: np.ndarray) -> np.ndarray:
        return load_vectors_in_order(project, context.spec.id, ids)

    def choose(shard_orders, bad_ids):
        raise_non_finite(bad_ids, len(candidate_ids), settings.strategy)
        return select_from_shards(lambda count: shard_orders(count, mode, seed, beta), len(candidate_ids), budget,
                                  mode, seed, beta, settings.dedup_threshold, rows_of_ids)

    scoring = _pool_scoring(project, context, posterior, candidate_ids, settings)
    chosen, stats = select_on_ray(project.directory, context.spec.id, posterior.feature_kind, candidate_ids, scoring,
                                  settings.workers, choose, settings.address)
    notes.append(f"scored on Ray: {stats.actors} actors, one shard each; slowest shard "
                 f"{max(stats.shard_seconds, default=0.0):.2f} s to load and score")
    _note_short_batch(len(chosen[0]), settings, notes)
    return chosen


def _epig_target_ids(project, context, candidate_ids: np.ndarray, settings: SelectSettings) -> np.ndarray:
    """M target inputs: the target split if given, else a sample of the candidate set."""
    from alkit.workflows.select_settings import EPIG_TARGET_SEED_OFFSET

    rng = np.random.default_rng(settings.seed + EPIG_TARGET_SEED_OFFSET)
    if settings.target_split:
        from alkit.storage.selection import embedded_ids_in_split

        ids = embedded_ids_in_split(project, context.spec.id, settings.target_split)
        if len(ids) == 0:
            raise StateError(
                f"split {settings.target_split!r} has no embedded images; `alkit add --split {settings.target_split}` and `alkit embed`"
            )
    else:
        ids = candidate_ids
    if len(ids) > settings.num_targets:
        ids = rng.choice(ids, settings.num_targets, replace=False)
    return np.sort(ids)


def _batch(project, context, posterior, candidate_ids: np.ndarray, scores: np.ndarray, settings: SelectSettings,
           notes: list[str]) -> np.ndarray:
    """Positions into the candidates `(B,)`, in draw order, by the settings' batch mode."""
    from alkit.acquisition import BATCH_MODES, select_batch, select_diverse_batch
    from alkit.acquisition.sharded import nonnegative
    from alkit.storage.vectors import load_vectors_in_order

    budget, mode = settings.budget, BATCH_MODES.get(settings.batch_mode)
    if mode.joint:  # chooses from the posterior samples' probabilities (BatchBALD)
        sample_probs = None if posterior is None else _sample_probs(project, context, posterior, candidate_ids, settings)
        chosen = select_batch(scores, budget, mode=settings.batch_mode, seed=settings.seed, beta=settings.beta,
                              sample_probs=sample_probs)
        if mode.note is not None:
            notes.append(f"{mode.note(len(candidate_ids), budget)} by {settings.strategy}")
        return chosen
    scores = nonnegative(scores)  # round-off below zero (BALD, EPIG are >= 0)
    if settings.dedup_threshold is None:
        return select_batch(scores, budget, mode=settings.batch_mode, seed=settings.seed, beta=settings.beta,
                            item_ids=candidate_ids)

    def rows(positions: np.ndarray) -> np.ndarray:
        return load_vectors_in_order(project, context.spec.id, candidate_ids[positions])  # rows in draw order

    chosen = select_diverse_batch(scores, rows, budget, settings.dedup_threshold, mode=settings.batch_mode,
                                  seed=settings.seed, beta=settings.beta, item_ids=candidate_ids)
    _note_short_batch(len(chosen), settings, notes)
    return chosen


def _note_short_batch(chosen: int, settings: SelectSettings, notes: list[str]) -> None:
    if chosen < settings.budget:
        notes.append(
            f"only {chosen} of {settings.budget} items are farther apart than cosine {settings.dedup_threshold}; "
            "raise --dedup-threshold to allow closer items"
        )


def _sample_probs(project, context, posterior, candidate_ids: np.ndarray, settings: SelectSettings):
    """positions (ascending) -> the shared samples' probabilities `(S, n, K)` of those candidates."""
    from alkit.storage.vectors import load_vectors

    def sample_probs(positions: np.ndarray) -> np.ndarray:
        _, x = load_vectors(project, context.spec.id, candidate_ids[positions], kind=posterior.feature_kind)
        return posterior.sample_probs(posterior.sample_weights(settings.samples, settings.seed), x)

    return sample_probs


def _cold_start(project, spec_id: int, candidate_ids: np.ndarray, settings: SelectSettings) -> tuple[np.ndarray, str]:
    from alkit.acquisition import COLD_START
    from alkit.storage.vectors import load_vectors

    ids, vectors = load_vectors(project, spec_id, candidate_ids)
    selector = COLD_START.get(settings.cold_start)
    chosen = selector(vectors, settings.budget, seed=settings.seed)
    # load_vectors returns ids ascending; candidate_ids are ascending too (pool order).
    return np.searchsorted(candidate_ids, ids[chosen]), f"cold start ({settings.cold_start})"


def _predictions(project, context, posterior, image_ids: np.ndarray) -> dict[int, tuple[str, float]]:
    if posterior is None or len(image_ids) == 0:
        return {}
    from alkit.storage.vectors import load_vectors

    ids, x = load_vectors(project, context.spec.id, image_ids, kind=posterior.feature_kind)
    probs = posterior.predict(x)  # (B, K)
    best = probs.argmax(axis=1)
    return {int(i): (context.class_names[int(k)], float(probs[row, k])) for row, (i, k) in enumerate(zip(ids, best))}


def _record_round(project, context, settings, method, posterior_version, chosen_ids, chosen_scores, predictions):
    """Claim the chosen images and record the round and its items, in one transaction."""
    from alkit.storage.images import paths_by_id
    from alkit.storage.rounds import insert_round, insert_round_items
    from alkit.storage.selection import claim_images

    now = utcnow()
    chosen = chosen_ids.tolist()
    with project.engine.begin() as connection:
        # The claim is the transaction's first statement: one conditional write that takes the
        # database's write lock (SQLite) or the rows' locks (PostgreSQL) and only moves images that
        # are still free, so two concurrent selects never share an image.
        claimed = claim_images(connection, chosen, now)
        if claimed != len(chosen):  # raising rolls the claim back
            raise StateError(
                f"{len(chosen) - claimed} of {len(chosen)} chosen images were taken by a concurrent "
                "`alkit select` (or labelled) meanwhile; nothing was recorded, run it again"
            )
        round_id = insert_round(
            connection, strategy=settings.strategy, settings={**settings.snapshot(), "method": method},
            seed=settings.seed, created_at=now, embedding_spec_id=context.spec.id, posterior_version=posterior_version,
        )
        paths = paths_by_id(connection, chosen)
        items = [
            SelectedItem(image_id, paths[image_id], rank, score, *predictions.get(image_id, (None, None)))
            for rank, (image_id, score) in enumerate(zip(chosen, chosen_scores), start=1)
        ]
        insert_round_items(connection, [
            dict(round_id=round_id, image_id=item.image_id, rank=item.rank, score=item.score,
                 components={"predicted_class": item.predicted_class, "probability": item.probability, "method": method})
            for item in items
        ])
    return round_id, items
