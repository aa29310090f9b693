"""`alkit select`: score the unlabelled pool and record the next round.

Pool -> (optional candidate restriction) -> shared posterior samples -> scores in chunks ->
batch mode (Gumbel-top-B) -> near-duplicate suppression -> one transaction that records the
round, its items and the images' new status. Without a usable posterior the pool is either
scored zero-shot (a posterior built from class prompts) or covered by a cold-start selector;
the result says which.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa

from alkit.errors import InputError, IntegrityError, StateError
from alkit.progress import note as progress_note, stage
from alkit.project import Project
from alkit.storage.db import utcnow
from alkit.storage.schema import ImageStatus, RoundStatus, Split, embeddings, images, labels, round_items, rounds

OPEN_STATUSES = (ImageStatus.SELECTED.value, ImageStatus.PUSHED.value)
ORDER_OVERSAMPLE = 4  # candidates drawn per budget slot before near-duplicate suppression
BATCHBALD = "batchbald"  # opt-in batch mode: greedy joint mutual information (Kirsch et al. 2019)
BATCHBALD_CANDIDATES = 256  # top items by the strategy's score that BatchBALD chooses among


@dataclass(frozen=True)
class SelectSettings:
    budget: int
    # The default is the strategy + batch mode that won the active-learning suite
    # (benchmarks/README.md): margin + top-B had the best mean AUC rank of alkit's methods over
    # mnist_lt, digits and clip (1.3, against entropy-top 1.7, BALD-power 3.3, EPIG-power 3.7).
    strategy: str = "margin"
    batch_mode: str = "top"
    beta: float = 1.0
    seed: int = 0
    samples: int = 128  # S shared posterior samples (64 gave seed-to-seed BALD Spearman 0.87 on digits, 128 0.93)
    num_targets: int = 100  # M EPIG targets
    target_split: str | None = None
    query: str | None = None
    like: tuple[str, ...] = ()
    candidates: int | None = None
    dedup_threshold: float | None = 0.98  # cosine; None disables near-duplicate suppression
    chunk_size: int = 8192
    cold_start: str = "typiclust"

    def snapshot(self) -> dict:
        return {**self.__dict__, "like": list(self.like)}


@dataclass
class SelectedItem:
    image_id: int
    path: str
    rank: int
    score: float | None
    predicted_class: str | None
    probability: float | None


@dataclass
class SelectionResult:
    round_id: int
    strategy: str
    method: str  # how the pool was scored: posterior version, zero-shot, cold start
    items: list[SelectedItem]
    pool_size: int
    scored: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {
            "round": self.round_id, "strategy": self.strategy, "method": self.method, "pool_size": self.pool_size,
            "scored": self.scored, "seconds": self.seconds, "notes": self.notes,
            "items": [item.__dict__ for item in self.items],
        }


def eligible_pool_ids(project: Project, spec_id: int) -> np.ndarray:
    """Pool images with vectors of this spec, unlabelled, not rejected, not in an open round."""
    has_label = sa.exists().where(labels.c.image_id == images.c.id)
    query = (
        sa.select(images.c.id)
        .join(embeddings, embeddings.c.image_id == images.c.id)
        .where(
            embeddings.c.spec_id == spec_id,
            images.c.split == Split.POOL.value,
            images.c.status.not_in([ImageStatus.REJECTED.value, ImageStatus.LABELED.value, *OPEN_STATUSES]),
            ~has_label,
        )
        .order_by(images.c.id)
    )
    from alkit.storage.vectors import int_column  # one fetchall, no Python work per row

    with project.engine.connect() as connection:
        return int_column(connection, query)


def _validate(settings: SelectSettings) -> None:
    from alkit.acquisition import BATCH_MODES, COLD_START, SCORERS

    SCORERS.get(settings.strategy)
    if settings.batch_mode != BATCHBALD:
        try:
            BATCH_MODES.get(settings.batch_mode)
        except InputError as error:
            raise InputError(f"{error}, {BATCHBALD}") from None
    COLD_START.get(settings.cold_start)
    if settings.budget < 1:
        raise InputError(f"--budget must be >= 1, got {settings.budget}")
    if settings.samples < 2:
        raise InputError(f"--samples must be >= 2, got {settings.samples}")


def select_round(project: Project, settings: SelectSettings) -> SelectionResult:
    """Choose B images and record them as a new open round."""
    from alkit.acquisition import SCORERS

    started = time.perf_counter()
    _validate(settings)
    from alkit.workflows.current_posterior import posterior_context

    context = posterior_context(project)
    pool_ids = eligible_pool_ids(project, context.spec.id)
    if len(pool_ids) == 0:
        raise StateError(
            "no unlabelled embedded pool images to select from; run `alkit add` and `alkit embed`, or label the open round"
        )
    if settings.budget > len(pool_ids):
        raise StateError(
            f"budget {settings.budget} > {len(pool_ids)} unlabelled images; lower --budget or add images"
        )
    notes: list[str] = []
    candidate_ids = pool_ids
    query_vectors = _query_vectors(project, context, settings)
    if query_vectors is not None:
        from alkit.workflows.retrieve import nearest_candidates

        wanted = settings.candidates or max(10 * settings.budget, 1000)
        candidate_ids = nearest_candidates(project, context.spec, query_vectors, pool_ids, wanted)
        if len(candidate_ids) < settings.budget:
            raise StateError(
                f"only {len(candidate_ids)} candidates near the query for budget {settings.budget}; raise --candidates"
            )
        notes.append(f"scored the {len(candidate_ids)} pool items nearest the query/targets")

    scorer = SCORERS.get(settings.strategy)
    posterior_version, posterior, method = _posterior_for_selection(project, context, settings, notes)
    if settings.strategy == "random":
        scores = np.random.default_rng(settings.seed).random(len(candidate_ids))
        method = "random"
    elif posterior is None:
        scores = None
    else:
        with stage(f"select: scoring {len(candidate_ids):,} pool images with {settings.strategy} ({method})"):
            scores = _score(project, context, posterior, candidate_ids, settings, scorer, query_vectors)
        check_finite_scores(scores, candidate_ids, settings.strategy)

    if scores is None:
        chosen_positions, method = _cold_start(project, context.spec.id, candidate_ids, settings)
        chosen_scores = [None] * len(chosen_positions)
    elif settings.batch_mode == BATCHBALD and posterior is not None:
        chosen_positions = _batchbald(project, context, posterior, candidate_ids, scores, settings, notes)
        chosen_scores = [float(scores[p]) for p in chosen_positions]
    else:
        chosen_positions = _batch(project, context.spec.id, candidate_ids, scores, settings, notes)
        chosen_scores = [float(scores[p]) for p in chosen_positions]
    chosen_ids = candidate_ids[chosen_positions]
    progress_note(f"select: chose {len(chosen_ids)} images; recording the round")
    predictions = _predictions(project, context, posterior, chosen_ids)
    round_id, items = _record_round(
        project, context, settings, method, posterior_version, chosen_ids, chosen_scores, predictions
    )
    return SelectionResult(
        round_id=round_id, strategy=settings.strategy, method=method, items=items, pool_size=len(pool_ids),
        scored=len(candidate_ids) if scores is not None else 0, seconds=round(time.perf_counter() - started, 3),
        notes=notes,
    )


def _posterior_for_selection(project, context, settings: SelectSettings, notes: list[str]):
    """(version, posterior, method); builds a zero-shot posterior when none exists yet."""
    from alkit.workflows.current_posterior import load_current_posterior
    from alkit.workflows.fit import FitSettings, fit_posterior

    if settings.strategy == "random":
        return None, None, "random"
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


def _feature_kind(posterior) -> str:
    return posterior.feature_kind


def _score(project, context, posterior, candidate_ids: np.ndarray, settings: SelectSettings, scorer, query_vectors) -> np.ndarray:
    """Scores `(N,)` for the candidates, in chunks, with one set of shared weight samples."""
    from alkit.storage.vectors import load_vectors

    kind = _feature_kind(posterior)
    weights = posterior.sample_weights(settings.samples, settings.seed) if scorer.needs_samples else None
    target_probs = None
    if scorer.needs_targets:
        # EPIG is a small difference of O(1) entropies (1e-6 nats on a zero-shot BayesVLM), so
        # its draws and probabilities are float64: float32 round-off was 3.6e-7 there.
        weights = promote_samples(weights)
        target_ids = _epig_target_ids(project, context, candidate_ids, settings)
        _, target_x = load_vectors(project, context.spec.id, target_ids, kind=kind)
        target_probs = posterior.sample_probs(weights, target_x)  # (S, M, K), same draws as the pool
    # Logits fast path (same scores up to float32 round-off): sampled logits in cache-sized
    # sub-chunks, no softmax / per-element log, sub-chunks on torch's threads.
    fast = weights is not None and scorer.logits_function is not None and posterior.fast_sample_logits
    scores = np.empty(len(candidate_ids), dtype=np.float64)
    for start in range(0, len(candidate_ids), settings.chunk_size):
        chunk = candidate_ids[start : start + settings.chunk_size]
        ids, x = load_vectors(project, context.spec.id, chunk, kind=kind)
        if scorer.moments_function is not None:  # analytic: no samples, no probabilities
            values = scorer.moments_function(*posterior.logit_moments(x))
        elif fast:
            from alkit.acquisition.pipeline import score_logits_in_chunks

            values = score_logits_in_chunks(
                lambda a, b: posterior.sample_logits(weights, x[a:b]), len(x), settings.strategy
            )
        else:
            if weights is None:
                probs = posterior.predict(x)[None]  # (1, n, K): analytic predictive
            else:
                probs = posterior.sample_probs(weights, x)  # (S, n, K)
            values = scorer.function(probs, target_probs) if scorer.needs_targets else scorer.function(probs)
        scores[start : start + len(chunk)] = values
    return scores


def _epig_target_ids(project, context, candidate_ids: np.ndarray, settings: SelectSettings) -> np.ndarray:
    """M target inputs: the target split if given, else a sample of the candidate set."""
    rng = np.random.default_rng(settings.seed + 7919)
    if settings.target_split:
        from alkit.storage.vectors import embedded_image_ids

        ids = embedded_image_ids(project, context.spec.id, images.c.split == settings.target_split)
        if len(ids) == 0:
            raise StateError(
                f"split {settings.target_split!r} has no embedded images; `alkit add --split {settings.target_split}` and `alkit embed`"
            )
    else:
        ids = candidate_ids
    if len(ids) > settings.num_targets:
        ids = rng.choice(ids, settings.num_targets, replace=False)
    return np.sort(ids)


def check_finite_scores(scores: np.ndarray, candidate_ids: np.ndarray, strategy: str) -> None:
    """A NaN or infinite score is an error naming the images, never a silent zero."""
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise IntegrityError(
            f"{bad.size} of {len(scores)} {strategy} scores are not finite (image ids "
            f"{', '.join(str(int(i)) for i in candidate_ids[bad[:5]])}); their stored vectors are probably "
            "zero or corrupt: re-embed those images (`alkit embed`) or re-import the embeddings"
        )


def promote_samples(weights):
    """The same shared posterior draws in float64 (every float32 array field of the draws'
    dataclass is cast; anything else is returned unchanged)."""
    import dataclasses

    if weights is None or not dataclasses.is_dataclass(weights):
        return weights
    changes = {
        f.name: getattr(weights, f.name).astype(np.float64)
        for f in dataclasses.fields(weights)
        if isinstance(getattr(weights, f.name), np.ndarray) and getattr(weights, f.name).dtype == np.float32
    }
    return dataclasses.replace(weights, **changes) if changes else weights


def _batch(project, spec_id: int, candidate_ids: np.ndarray, scores: np.ndarray, settings: SelectSettings, notes) -> np.ndarray:
    from alkit.acquisition import select_batch, select_without_near_duplicates
    from alkit.storage.vectors import load_vectors_in_order

    budget = settings.budget
    scores = np.clip(scores, 0.0, None)  # round-off below zero (BALD, EPIG are >= 0)
    if settings.dedup_threshold is None:
        return select_batch(scores, budget, mode=settings.batch_mode, seed=settings.seed, beta=settings.beta)
    draws = min(len(candidate_ids), ORDER_OVERSAMPLE * budget + 64)
    while True:
        order = select_batch(scores, draws, mode=settings.batch_mode, seed=settings.seed, beta=settings.beta)
        aligned = load_vectors_in_order(project, spec_id, candidate_ids[order])  # rows in draw order
        kept = select_without_near_duplicates(np.arange(len(order)), aligned, budget, settings.dedup_threshold)
        if len(kept) == budget or draws == len(candidate_ids):
            break
        draws = min(len(candidate_ids), draws * 4)
    if len(kept) < budget:
        notes.append(
            f"only {len(kept)} of {budget} items are farther apart than cosine {settings.dedup_threshold}; "
            "raise --dedup-threshold to allow closer items"
        )
    return order[kept]


def _batchbald(project, context, posterior, candidate_ids, scores, settings: SelectSettings, notes) -> np.ndarray:
    """Greedy BatchBALD over the top candidates by the strategy's score (shared samples)."""
    from alkit.acquisition.batchbald import batchbald
    from alkit.storage.vectors import load_vectors

    shortlist = np.argsort(-scores, kind="stable")[: max(settings.budget, BATCHBALD_CANDIDATES)]
    ids, x = load_vectors(project, context.spec.id, candidate_ids[shortlist], kind=_feature_kind(posterior))
    positions = np.searchsorted(candidate_ids, ids)  # load_vectors returns ascending ids
    probs = posterior.sample_probs(posterior.sample_weights(settings.samples, settings.seed), x)  # (S, n, K)
    chosen = batchbald(probs, settings.budget, seed=settings.seed)
    notes.append(f"BatchBALD chose {settings.budget} of the top {len(ids)} items by {settings.strategy}")
    return positions[chosen]


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

    ids, x = load_vectors(project, context.spec.id, image_ids, kind=_feature_kind(posterior))
    probs = posterior.predict(x)  # (B, K)
    best = probs.argmax(axis=1)
    return {int(i): (context.class_names[int(k)], float(probs[row, k])) for row, (i, k) in enumerate(zip(ids, best))}


def _record_round(project, context, settings, method, posterior_version, chosen_ids, chosen_scores, predictions):
    now = utcnow()
    items: list[SelectedItem] = []
    with project.engine.begin() as connection:
        # The claim is the transaction's first statement: one conditional write that takes the
        # database's write lock (SQLite) or the rows' locks (PostgreSQL) and only moves images that
        # are still free, so two concurrent selects never share an image.
        claimed = claim_images(connection, chosen_ids.tolist(), now)
        if claimed != len(chosen_ids):  # raising rolls the claim back
            raise StateError(
                f"{len(chosen_ids) - claimed} of {len(chosen_ids)} chosen images were taken by a concurrent "
                "`alkit select` (or labelled) meanwhile; nothing was recorded, run it again"
            )
        round_id = connection.execute(
            rounds.insert()
            .values(
                strategy=settings.strategy, settings={**settings.snapshot(), "method": method}, seed=settings.seed,
                status=RoundStatus.OPEN, created_at=now, embedding_spec_id=context.spec.id, posterior_version=posterior_version,
            )
            .returning(rounds.c.id)
        ).scalar_one()
        paths = dict(connection.execute(sa.select(images.c.id, images.c.path).where(images.c.id.in_(chosen_ids.tolist()))).all())
        rows = []
        for rank, (image_id, score) in enumerate(zip(chosen_ids.tolist(), chosen_scores), start=1):
            predicted, probability = predictions.get(image_id, (None, None))
            rows.append(
                dict(
                    round_id=round_id, image_id=image_id, rank=rank, score=score,
                    components={"predicted_class": predicted, "probability": probability, "method": method},
                )
            )
            items.append(SelectedItem(image_id, paths[image_id], rank, score, predicted, probability))
        connection.execute(round_items.insert(), rows)
    return round_id, items


CLAIM_CHUNK = 5000  # ids per conditional UPDATE (below every backend's bound-parameter limit)


def claim_images(connection, image_ids: list[int], now) -> int:
    """Mark free images as selected with conditional UPDATEs; returns how many moved.

    "Free" is re-checked by the database itself in the WHERE clause, under the write lock, so a
    row-count short of `len(image_ids)` means another process claimed (or labelled) some first.
    """
    has_label = sa.exists().where(labels.c.image_id == images.c.id)
    claimed = 0
    for start in range(0, len(image_ids), CLAIM_CHUNK):
        chunk = image_ids[start : start + CLAIM_CHUNK]
        result = connection.execute(
            images.update()
            .where(
                images.c.id.in_(chunk),
                images.c.status.not_in([ImageStatus.REJECTED.value, ImageStatus.LABELED.value, *OPEN_STATUSES]),
                ~has_label,
            )
            .values(status=ImageStatus.SELECTED.value, updated_at=now)
        )
        claimed += int(result.rowcount)
    return claimed


def _query_vectors(project, context, settings: SelectSettings):
    """Unit vectors `(Q, D)` for --query / --like / --target with --candidates; None when absent."""
    if not (settings.query or settings.like or (settings.target_split and settings.candidates)):
        return None
    from alkit.workflows.retrieve import query_vectors

    return query_vectors(
        project, context.spec, text=settings.query, like=list(settings.like),
        target_split=settings.target_split if settings.candidates else None,
    )
