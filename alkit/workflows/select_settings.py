"""What `alkit select` is asked to do: the settings dataclass and its named numbers.

Kept apart from `alkit.workflows.select` and free of heavy imports, so the CLI takes its
defaults from here when it builds `alkit select --help`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

CANDIDATES_PER_BUDGET_SLOT = 10  # with --query/--like/--target: score max(10 x budget, ...
MIN_CANDIDATES = 1000  # ... 1000) pool items nearest the queries unless --candidates says otherwise
EPIG_TARGET_SEED_OFFSET = 7919  # EPIG's target sample uses seed + this (a prime): apart from the batch's draws
SCORING_CHUNK_SIZE = 8192  # pool items whose features are loaded and scored at once (8192 x 512 float32 = 16 MB)
DEDUP_OFF = 1.0  # --dedup-threshold at or above this disables near-duplicate suppression
ENGINES = ("local", "ray")  # where the pool is scored: this process, or Ray actors (one shard each)
RAY_SCORING_WORKERS = 2  # Ray actors (shards) for --engine ray unless --workers says otherwise


@dataclass(frozen=True)
class SelectSettings:
    budget: int
    # The default is the strategy + batch mode that won the active-learning suite
    # (benchmarks/README.md): margin + top-B had the best mean AUC rank of alkit's methods over
    # mnist_lt, digits and clip (1.3, against entropy-top 1.7, BALD-power 3.3, EPIG-power 3.7).
    strategy: str = "margin"  # a name in alkit.acquisition.SCORERS
    batch_mode: str = "top"  # a name in alkit.acquisition.BATCH_MODES
    beta: float = 1.0  # coldness of the stochastic batch modes
    seed: int = 0
    samples: int = 128  # S shared posterior samples (64 gave seed-to-seed BALD Spearman 0.87 on digits, 128 0.93)
    num_targets: int = 100  # M EPIG targets
    target_split: str | None = None
    query: str | None = None
    like: tuple[str, ...] = ()
    candidates: int | None = None
    # Cosine similarity at or above which two batch items are near-duplicates (one rule:
    # alkit.acquisition.batch.is_near_duplicate); None disables near-duplicate suppression.
    dedup_threshold: float | None = 0.98
    chunk_size: int = SCORING_CHUNK_SIZE
    cold_start: str = "typiclust"  # a name in alkit.acquisition.COLD_START, used before any posterior
    engine: str = "local"  # a name in ENGINES
    workers: int = RAY_SCORING_WORKERS  # Ray actors with engine "ray"
    address: str | None = None  # Ray cluster address with engine "ray" (None: RAY_ADDRESS or a local Ray)

    def snapshot(self) -> dict:
        """The settings as recorded with the round (JSON types)."""
        return {**asdict(self), "like": list(self.like)}

    def candidate_count(self) -> int:
        """How many pool items near the queries to score (`--candidates` or the default)."""
        return self.candidates or max(CANDIDATES_PER_BUDGET_SLOT * self.budget, MIN_CANDIDATES)

    @property
    def restricts_candidates(self) -> bool:
        """True when only pool items near a text query, example images or target split are scored."""
        return bool(self.query or self.like or (self.target_split and self.candidates))
