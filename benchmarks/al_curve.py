"""Benchmark: simulated active-learning curves on the demo's shifted MNIST (issues 6 and 8).

Arrays only (no project, no DB): the demo's tiny CLIP (trained on a disjoint clean split by
`ensure_demo_model`) embeds the shifted pool and the shifted test split once; the arrays
(phi, unit embeddings, class-prompt text embeddings, P, logit scale, labels) are cached
under `<alkit cache>/benchmarks/`. Labels never enter the embeddings.

Per seed: a pool of `--pool` images is drawn (seeded) from the 2,000 shifted pool images,
the zero-shot BayesVLM posterior is built on its phi (`from_pool_curvature`), and each
strategy runs `--rounds` rounds of `--budget` labels:

  score the unlabelled pool with S shared posterior samples (`sample_weights(S, seed)` +
  `sample_probs`) -> choose B -> oracle labels -> refit from the zero-shot base with ALL
  labels (weight decay lam / L, as `alkit fit` does) -> test accuracy and ECE.

Strategies: random; entropy, bald, epig (top-B; EPIG targets = M seeded unlabelled pool
items); power-bald (BALD scores, Gumbel power batch, beta 1); probvlm-entropy and
probvlm-aleatoric (top-B) when `alkit.posterior.probvlm` provides what `ProbVLMAdapter`
needs, else reported as unavailable.

    python -m benchmarks.al_curve                                  # 5 seeds, 6 rounds of 20, pool 1,000
    python -m benchmarks.al_curve --seeds 2 --rounds 3 --pool 500  # development size
    python -m benchmarks.al_curve --strategies random,bald,probvlm-entropy,probvlm-aleatoric
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_STRATEGIES = ("random", "entropy", "bald", "epig", "power-bald", "probvlm-entropy", "probvlm-aleatoric")
PROBVLM_STRATEGIES = ("probvlm-entropy", "probvlm-aleatoric")
PSEUDO_DATA = 10.0  # alkit fit's default pseudo-data count n
CACHE_VERSION = 1


# ---------------------------------------------------------------------- features (cached)


@dataclass(frozen=True)
class Features:
    pool_phi: np.ndarray  # (Np, d) float32: inputs of visual.proj
    pool_emb: np.ndarray  # (Np, D) float32 unit-norm image embeddings
    pool_labels: np.ndarray  # (Np,) int64: the oracle's answers, never used for features
    test_phi: np.ndarray
    test_emb: np.ndarray
    test_labels: np.ndarray
    text_emb: np.ndarray  # (K, D) unit-norm class-prompt embeddings
    projection: np.ndarray  # (D, d): BayesVLM's P = visual.proj.T
    logit_scale: float  # s = exp(model.logit_scale)


def embed_demo_split(split_seed: int, threads: int, log) -> tuple[Features, str, float]:
    """(features, cache path, seconds spent embedding or loading)."""
    import torch

    from alkit.demo.train_clip import default_cache_dir, ensure_demo_model

    started = time.perf_counter()
    torch.set_num_threads(threads)
    checkpoint = ensure_demo_model()
    key = hashlib.sha256(f"{checkpoint.name}|{split_seed}|{CACHE_VERSION}".encode()).hexdigest()[:16]
    path = default_cache_dir() / "benchmarks" / f"al_curve-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as arrays:
            data = {name: arrays[name] for name in arrays.files}
        data["logit_scale"] = float(data["logit_scale"])
        return Features(**data), str(path), time.perf_counter() - started

    from alkit.demo.data import class_prompts, images_to_tensor, make_demo_split
    from alkit.demo.tiny_clip import (
        create_tiny_clip,
        image_features_and_phi,
        image_projection_matrix,
        text_features_and_psi,
    )

    log(f"features: embedding the demo split (seed {split_seed}) with {checkpoint.name} ...")
    split = make_demo_split(seed=split_seed)  # the model trained on make_demo_split(0).train
    model, preprocess, tokenizer = create_tiny_clip(checkpoint)

    def embed(images):
        embs, phis = [], []
        for lo in range(0, len(images), 256):
            emb, phi = image_features_and_phi(model, images_to_tensor(images[lo : lo + 256], preprocess))
            embs.append(emb.numpy())
            phis.append(phi.numpy())
        return np.concatenate(embs).astype(np.float32), np.concatenate(phis).astype(np.float32)

    pool_emb, pool_phi = embed(split.pool_images)
    test_emb, test_phi = embed(split.test_images)
    text_emb, _ = text_features_and_psi(model, tokenizer(class_prompts()))
    features = Features(
        pool_phi=pool_phi, pool_emb=pool_emb, pool_labels=split.pool_labels.astype(np.int64),
        test_phi=test_phi, test_emb=test_emb, test_labels=split.test_labels.astype(np.int64),
        text_emb=text_emb.numpy().astype(np.float32),
        projection=image_projection_matrix(model).numpy().astype(np.float64),
        logit_scale=float(model.logit_scale.detach().exp()),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, **{k: v for k, v in features.__dict__.items()})
    os.replace(partial, path)
    return features, str(path), time.perf_counter() - started


# ---------------------------------------------------------------------- ProbVLM (optional)


class ProbVLMUnavailable(RuntimeError):
    pass


PROBVLM_CONTRACT = (
    "alkit.posterior.probvlm must expose a trainer `fit_probvlm` or `train_probvlm` (first argument: unit image "
    "embeddings (N, D); optional keyword text/class-prompt embeddings and seed) returning an adapter with "
    "aleatoric uncertainty per input (`aleatoric_uncertainty(x)` or `aleatoric(x)` -> (N,), or `uncertainty(x)` -> "
    "dict/object with 'aleatoric') "
    "and samples (`sample_weights(S, seed)` + `sample_probs(w, x)` -> (S, N, K), or "
    "`sample_embeddings(x, S, seed)` -> (S, N, D))"
)


def _call_with_supported(function, *args, **maybe):
    """Call `function(*args, **k)` passing only the keyword arguments its signature accepts."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return function(*args)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return function(*args, **maybe)
    return function(*args, **{k: v for k, v in maybe.items() if k in parameters})


def _field(value, name: str):
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)


class ProbVLMAdapter:
    """Wraps whatever `alkit.posterior.probvlm` provides into two score functions over embeddings.

    ProbVLM is trained on the pool's own unit embeddings and the class-prompt embeddings, plus
    (by default, every round) the labelled images paired with their class prompt; with
    `--probvlm-static` it is trained once per seed without labels. Its scores only rank the
    pool: the classifier whose accuracy is reported is the refitted BayesVLM posterior for
    every strategy, so the curves compare selections, not classifiers.
    """

    def __init__(self):
        try:
            module = importlib.import_module("alkit.posterior.probvlm")
        except ImportError as reason:
            raise ProbVLMUnavailable(f"alkit.posterior.probvlm is not importable ({reason})") from reason
        self.module = module
        self.trainer = next((getattr(module, n) for n in ("fit_probvlm", "train_probvlm") if callable(getattr(module, n, None))), None)
        if self.trainer is None:
            raise ProbVLMUnavailable(f"alkit.posterior.probvlm has no fit_probvlm/train_probvlm; {PROBVLM_CONTRACT}")

    def fit(self, pool_emb: np.ndarray, text_emb: np.ndarray, logit_scale: float, seed: int,
            labelled_emb: np.ndarray | None = None, labels: np.ndarray | None = None):
        pairs = {} if labels is None or len(labels) == 0 else {"labelled_images": labelled_emb, "labels": labels}
        model = _call_with_supported(
            self.trainer, pool_emb, text_embeddings=text_emb, text_emb=text_emb, class_text=text_emb,
            logit_scale=logit_scale, seed=seed, progress=False, **pairs,
        )
        model = model[0] if isinstance(model, tuple) else model
        has_aleatoric = any(callable(getattr(model, n, None)) for n in ("aleatoric_uncertainty", "aleatoric", "uncertainty"))
        has_samples = (callable(getattr(model, "sample_weights", None)) and callable(getattr(model, "sample_probs", None))) or callable(
            getattr(model, "sample_embeddings", None)
        )
        if not (has_aleatoric and has_samples):
            raise ProbVLMUnavailable(f"the ProbVLM adapter ({type(model).__name__}) lacks methods; {PROBVLM_CONTRACT}")
        return model

    @staticmethod
    def aleatoric(model, emb: np.ndarray) -> np.ndarray:
        if callable(getattr(model, "aleatoric_uncertainty", None)):
            values = model.aleatoric_uncertainty(emb)
        elif callable(getattr(model, "aleatoric", None)):
            values = model.aleatoric(emb)
        else:
            values = _field(model.uncertainty(emb), "aleatoric")
        values = np.asarray(values, dtype=np.float64)
        return values.sum(axis=1) if values.ndim == 2 else values  # per-dim variances -> their sum

    @staticmethod
    def sample_probs(model, emb: np.ndarray, text_emb: np.ndarray, logit_scale: float, samples: int, seed: int) -> np.ndarray:
        if callable(getattr(model, "sample_weights", None)) and callable(getattr(model, "sample_probs", None)):
            return np.asarray(model.sample_probs(model.sample_weights(samples, seed), emb))  # shared draws
        draws = np.asarray(model.sample_embeddings(emb, samples, seed), dtype=np.float64)  # (S, N, D)
        draws /= np.linalg.norm(draws, axis=-1, keepdims=True)
        logits = logit_scale * draws @ text_emb.astype(np.float64).T
        logits -= logits.max(axis=-1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------- the loop


@dataclass
class Settings:
    seeds: int = 5
    rounds: int = 6
    budget: int = 20
    pool: int = 1000
    samples: int = 64
    targets: int = 100
    beta: float = 1.0
    split_seed: int = 0
    threads: int = 1
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    probvlm_static: bool = False


@dataclass
class Curve:
    labels: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    ece: list[float] = field(default_factory=list)
    seconds: float = 0.0


def zero_shot_base(features: Features, pool_index: np.ndarray):
    from alkit.posterior.bayesvlm import BayesVLMPosterior

    return BayesVLMPosterior.from_pool_curvature(
        features.pool_phi[pool_index].astype(np.float64), features.projection, features.text_emb.astype(np.float64),
        features.logit_scale, PSEUDO_DATA,
    )


def evaluate(posterior, features: Features) -> tuple[float, float]:
    from alkit.metrics import accuracy, ece

    probs = posterior.predict(features.test_phi)
    return accuracy(probs, features.test_labels), ece(probs, features.test_labels, 15)[0]


def choose(strategy: str, posterior, pool_phi, unlabelled: np.ndarray, settings: Settings, seed: int,
           probvlm_scores) -> np.ndarray:
    """Positions (into `unlabelled`) of the next B items."""
    from alkit.acquisition import SCORERS, select_batch

    budget = settings.budget
    if strategy == "random":
        return np.random.default_rng(seed).choice(len(unlabelled), budget, replace=False)
    if strategy in PROBVLM_STRATEGIES:
        scores = probvlm_scores(strategy, seed)[unlabelled]
        return select_batch(np.clip(np.nan_to_num(scores), 0.0, None), budget, mode="top", seed=seed)
    weights = posterior.sample_weights(settings.samples, seed)
    probs = posterior.sample_probs(weights, pool_phi[unlabelled])  # (S, U, K), shared draws
    if strategy == "epig":
        rng = np.random.default_rng(seed + 7919)
        targets = rng.choice(len(unlabelled), min(settings.targets, len(unlabelled)), replace=False)
        scores = SCORERS.get("epig").function(probs, probs[:, np.sort(targets)])
    else:
        scores = SCORERS.get("bald" if strategy == "power-bald" else strategy).function(probs)
    scores = np.clip(np.nan_to_num(scores, nan=0.0), 0.0, None)
    mode = "power" if strategy == "power-bald" else "top"
    return select_batch(scores, budget, mode=mode, seed=seed, beta=settings.beta)


def run_strategy(strategy: str, base, features: Features, pool_index: np.ndarray, settings: Settings, seed: int,
                 probvlm: ProbVLMScorer | None) -> Curve:
    from alkit.posterior.bayesvlm_refit import RefitSettings, refit

    started = time.perf_counter()
    pool_phi = features.pool_phi[pool_index]
    pool_labels = features.pool_labels[pool_index]
    labelled = np.zeros(len(pool_index), dtype=bool)
    curve = Curve()
    posterior = base
    for round_number in range(settings.rounds + 1):
        if round_number > 0:
            unlabelled = np.flatnonzero(~labelled)
            round_seed = seed * 1000 + round_number
            scorer = None if probvlm is None else (lambda name, s: probvlm.scores(name, labelled, s))
            picked = choose(strategy, posterior, pool_phi, unlabelled, settings, round_seed, scorer)
            labelled[unlabelled[picked]] = True
            taken = np.flatnonzero(labelled)
            # As alkit fit: refit from the zero-shot base with ALL labels, weight decay lam / L.
            posterior = refit(base, pool_phi[taken], pool_labels[taken],
                              RefitSettings(), seed=seed)
        acc, calibration = evaluate(posterior, features)
        curve.labels.append(int(labelled.sum()))
        curve.accuracy.append(acc)
        curve.ece.append(calibration)
    curve.seconds = time.perf_counter() - started
    return curve


class ProbVLMScorer:
    """ProbVLM scores over one seed's pool: refit on pool + labelled pairs each round, or once (static)."""

    def __init__(self, adapter: ProbVLMAdapter, features: Features, pool_index: np.ndarray, settings: Settings, seed: int):
        self.adapter, self.features, self.settings, self.seed = adapter, features, settings, seed
        self.emb = features.pool_emb[pool_index]
        self.labels = features.pool_labels[pool_index]
        self.cache: dict = {}
        self.fit_seconds = 0.0

    def scores(self, strategy: str, labelled: np.ndarray, round_seed: int) -> np.ndarray:
        from alkit.acquisition import SCORERS

        key = None if self.settings.probvlm_static else labelled.tobytes()
        if key not in self.cache:
            started = time.perf_counter()
            taken = np.flatnonzero(labelled) if key is not None else np.zeros(0, dtype=np.int64)
            model = self.adapter.fit(self.emb, self.features.text_emb, self.features.logit_scale, self.seed,
                                     self.emb[taken], self.labels[taken])
            self.fit_seconds += time.perf_counter() - started
            self.cache = {key: (model, {})}  # one labelled set at a time
        model, computed = self.cache[key]
        if strategy not in computed:
            if strategy == "probvlm-entropy":
                probs = ProbVLMAdapter.sample_probs(model, self.emb, self.features.text_emb, self.features.logit_scale,
                                                    self.settings.samples, round_seed)
                computed[strategy] = SCORERS.get("entropy").function(probs)
            else:
                computed[strategy] = ProbVLMAdapter.aleatoric(model, self.emb)
        return computed[strategy]


# ---------------------------------------------------------------------- report


def mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def report(curves: dict[str, list[Curve]], settings: Settings) -> str:
    from alkit.metrics import labels_to_reach

    names = list(curves)
    labels = curves[names[0]][0].labels
    lines = ["accuracy on the shifted test split (mean +- std over seeds)", ""]
    lines.append("| labels | " + " | ".join(names) + " |")
    lines.append("| --- | " + " | ".join("---" for _ in names) + " |")
    means = {}
    for name in names:
        acc = np.array([c.accuracy for c in curves[name]])  # (seeds, R+1)
        means[name] = acc.mean(axis=0)
    for r, count in enumerate(labels):
        cells = [f"{mean_std([c.accuracy[r] for c in curves[n]])[0]:.3f} +- {mean_std([c.accuracy[r] for c in curves[n]])[1]:.3f}" for n in names]
        lines.append(f"| {count} | " + " | ".join(cells) + " |")
    lines += ["", "ECE (15 bins) on the shifted test split (mean +- std over seeds)", ""]
    lines.append("| labels | " + " | ".join(names) + " |")
    lines.append("| --- | " + " | ".join("---" for _ in names) + " |")
    for r, count in enumerate(labels):
        cells = [f"{mean_std([c.ece[r] for c in curves[n]])[0]:.3f} +- {mean_std([c.ece[r] for c in curves[n]])[1]:.3f}" for n in names]
        lines.append(f"| {count} | " + " | ".join(cells) + " |")
    lines.append("")
    if "random" in means:
        target = float(means["random"][-1])
        lines.append(f"labels to reach random's final mean accuracy ({target:.3f} at {labels[-1]} labels); "
                     "per-seed: labels where that seed's curve first reaches the target")
        lines.append("")
        lines.append("| strategy | mean curve | per seed | gain over random, mean over rounds > 0 (paired, mean +- std over seeds) | final - random final (paired, mean +- std) | seconds per seed |")
        lines.append("| --- | --- | --- | --- | --- | --- |")
        random_acc = np.array([c.accuracy for c in curves["random"]])
        for name in names:
            reach = labels_to_reach(labels, means[name], target)
            per_seed = [labels_to_reach(c.labels, c.accuracy, target) for c in curves[name]]
            acc = np.array([c.accuracy for c in curves[name]])
            gain_m, gain_s = mean_std((acc[:, 1:] - random_acc[:, 1:]).mean(axis=1))  # per-seed mean gain
            final_m, final_s = mean_std(acc[:, -1] - random_acc[:, -1])
            per = ", ".join("-" if v is None else str(v) for v in per_seed)
            secs = np.mean([c.seconds for c in curves[name]])
            lines.append(f"| {name} | {'not reached' if reach is None else reach} | {per} | {gain_m:+.3f} +- {gain_s:.3f} | "
                         f"{final_m:+.3f} +- {final_s:.3f} | {secs:.1f} |")
    return "\n".join(lines)


def parse_args(argv=None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--budget", type=int, default=20, help="labels per round")
    parser.add_argument("--pool", type=int, default=1000, help="pool size drawn per seed from the 2,000 shifted images")
    parser.add_argument("--samples", type=int, default=64, help="S shared posterior samples per selection")
    parser.add_argument("--targets", type=int, default=100, help="M EPIG targets (seeded sample of the unlabelled pool)")
    parser.add_argument("--beta", type=float, default=1.0, help="power-bald exponent")
    parser.add_argument("--split-seed", type=int, default=0, help="make_demo_split seed (0: disjoint from the model's training part)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on the shared 2-core box)")
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                        help="comma-separated; probvlm-* are skipped with a note when alkit.posterior.probvlm lacks them")
    parser.add_argument("--probvlm-static", action="store_true",
                        help="train ProbVLM once per seed without labels (default: refit each round with the labelled pairs)")
    parser.add_argument("--json", type=Path, help="also write the raw curves here")
    args = parser.parse_args(argv)
    strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    unknown = sorted(set(strategies) - set(DEFAULT_STRATEGIES))
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {', '.join(DEFAULT_STRATEGIES)}")
    if args.split_seed != 0:
        print("note: --split-seed != 0 overlaps the model's training part (trained on make_demo_split(0).train)", file=sys.stderr)
    settings = Settings(args.seeds, args.rounds, args.budget, args.pool, args.samples, args.targets, args.beta,
                        args.split_seed, args.threads, strategies, args.probvlm_static)
    settings.json = args.json  # type: ignore[attr-defined]
    return settings


def main(argv=None) -> int:
    import torch

    settings = parse_args(argv)
    torch.set_num_threads(settings.threads)
    log = lambda message: print(message, flush=True)
    started = time.perf_counter()
    load_before = os.getloadavg()
    features, cache, feature_seconds = embed_demo_split(settings.split_seed, settings.threads, log)
    log(f"features: pool {features.pool_phi.shape}, test {features.test_phi.shape}, K={features.text_emb.shape[0]}, "
        f"s={features.logit_scale:.2f} ({feature_seconds:.1f} s; cache {cache})")
    if settings.pool > len(features.pool_labels):
        raise SystemExit(f"--pool {settings.pool} > {len(features.pool_labels)} pool images")
    if settings.rounds * settings.budget > settings.pool:
        raise SystemExit("--rounds x --budget exceeds --pool")

    strategies = list(settings.strategies)
    adapter = None
    wanted_probvlm = [s for s in strategies if s in PROBVLM_STRATEGIES]
    if wanted_probvlm:
        try:
            adapter = ProbVLMAdapter()
        except ProbVLMUnavailable as reason:
            log(f"probvlm: {', '.join(wanted_probvlm)} unavailable: {reason}")
            strategies = [s for s in strategies if s not in PROBVLM_STRATEGIES]

    curves: dict[str, list[Curve]] = {name: [] for name in strategies}
    for seed in range(settings.seeds):
        pool_index = np.sort(np.random.default_rng(10_000 + seed).choice(len(features.pool_labels), settings.pool, replace=False))
        base = zero_shot_base(features, pool_index)
        probvlm = None if adapter is None else ProbVLMScorer(adapter, features, pool_index, settings, seed)
        for name in list(strategies):
            try:
                curve = run_strategy(name, base, features, pool_index, settings, seed,
                                     probvlm if name in PROBVLM_STRATEGIES else None)
            except ProbVLMUnavailable as reason:
                log(f"probvlm: unavailable: {reason}")
                for dropped in PROBVLM_STRATEGIES:
                    curves.pop(dropped, None)
                strategies = [s for s in strategies if s not in PROBVLM_STRATEGIES]
                continue
            curves[name].append(curve)
            log(f"seed {seed} {name:<17} acc " + " ".join(f"{a:.3f}" for a in curve.accuracy) + f"  ({curve.seconds:.1f} s)")

    total = time.perf_counter() - started
    log("")
    log(f"settings: {json.dumps({k: v for k, v in settings.__dict__.items() if k != 'json'}, default=str)}")
    log(report(curves, settings))
    log("")
    log(f"total {total:.0f} s wall, {time.process_time():.0f} s process CPU; load average at start "
        f"{load_before[0]:.1f}, at end {os.getloadavg()[0]:.1f} (2 shared cores)")
    if getattr(settings, "json", None):
        settings.json.write_text(json.dumps({name: [c.__dict__ for c in cs] for name, cs in curves.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
