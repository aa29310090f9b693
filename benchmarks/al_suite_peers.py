"""Peers of the active-learning suite: scikit-activeml and modAL on the same arrays.

Not runtime dependencies of alkit: they come with the `bench` extra
(`pip install -e '.[bench]'`). Every peer uses one classifier, multinomial
`LogisticRegression` whose C (0.1 ... 1000) is chosen each round by 3-fold cross-validated
log-loss on the labels so far (`tuned_logistic_regression`); its test accuracy, NLL and ECE are the peer's
curve. The first round of every peer with no labels is uniform random (seeded) unless the
peer is a cold-start selector (TypiClust), because a classifier cannot be fitted on nothing.

- `lr-random`: random batches (the peers' own random baseline);
- `skactiveml-margin`, `skactiveml-entropy`: `skactiveml.pool.UncertaintySampling`
  (margin_sampling / entropy) on `SklearnClassifier(LogisticRegression(C))`;
- `skactiveml-typiclust`: `skactiveml.pool.TypiClust` every round;
- `modal-qbc`: `modAL.models.Committee` of 5 bootstrapped LogisticRegression learners with
  `modAL.disagreement.vote_entropy_sampling` (query by committee, an ensemble head).
"""

from __future__ import annotations

import time

import numpy as np

C_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)
PEERS = ("lr-random", "skactiveml-margin", "skactiveml-entropy", "skactiveml-typiclust", "modal-qbc")


def full_probs(model, x: np.ndarray, num_classes: int) -> np.ndarray:
    """(n, K) probabilities with classes the model never saw at a tiny floor, renormalised."""
    probs = np.full((len(x), num_classes), 1e-6)
    probs[:, model.classes_.astype(int)] = model.predict_proba(x)
    return probs / probs.sum(axis=1, keepdims=True)


def tuned_C(x: np.ndarray, y: np.ndarray, num_classes: int, seed: int) -> float:
    """C from `C_GRID` with the lowest 3-fold cross-validated NLL (1.0 with fewer than 6 labels).

    Each fold walks the grid upwards with warm starts (as LogisticRegressionCV's path does)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold

    if len(y) < 6 or len(np.unique(y)) < 2:
        return 1.0
    nll = np.zeros(len(C_GRID))
    for train, valid in KFold(3, shuffle=True, random_state=seed).split(x):
        if len(np.unique(y[train])) < 2:
            nll += np.log(num_classes) * len(valid)
            continue
        model = LogisticRegression(max_iter=500, warm_start=True)
        for index, c in enumerate(C_GRID):
            model.set_params(C=c).fit(x[train], y[train])
            probs = full_probs(model, x[valid], num_classes)
            nll[index] -= np.log(probs[np.arange(len(valid)), y[valid]]).sum()
    return float(C_GRID[int(np.argmin(nll))])


def tuned_logistic_regression(x, y, num_classes: int, seed: int):
    from sklearn.linear_model import LogisticRegression

    c = tuned_C(x, y, num_classes, seed)
    if len(np.unique(y)) < 2:
        return None, c
    return LogisticRegression(C=c, max_iter=1000).fit(x, y), c


def _query(peer: str, x: np.ndarray, labels_so_far: np.ndarray, labelled: np.ndarray, budget: int, C: float,
           num_classes: int, rng: np.random.Generator, seed: int) -> np.ndarray:
    """Pool positions of the next batch."""
    from sklearn.linear_model import LogisticRegression

    unlabelled = np.flatnonzero(~labelled)
    have_classifier = labelled.sum() >= 2 and len(np.unique(labels_so_far[labelled])) >= 2
    if peer == "lr-random" or (peer != "skactiveml-typiclust" and not have_classifier):
        return rng.choice(unlabelled, budget, replace=False)
    if peer.startswith("skactiveml"):
        from skactiveml.classifier import SklearnClassifier
        from skactiveml.pool import TypiClust, UncertaintySampling

        y = np.full(len(x), np.nan)
        y[labelled] = labels_so_far[labelled]
        if peer == "skactiveml-typiclust":
            return np.asarray(TypiClust(random_state=seed).query(X=x, y=y, batch_size=budget))
        method = {"skactiveml-margin": "margin_sampling", "skactiveml-entropy": "entropy"}[peer]
        clf = SklearnClassifier(LogisticRegression(C=C, max_iter=1000), classes=np.arange(num_classes), random_state=seed)
        return np.asarray(UncertaintySampling(method=method, random_state=seed).query(X=x, y=y, clf=clf, batch_size=budget))
    if peer == "modal-qbc":
        from modAL.disagreement import vote_entropy_sampling
        from modAL.models import ActiveLearner, Committee

        xl, yl = x[labelled], labels_so_far[labelled]
        learners = []
        for member in range(5):
            pick = np.random.default_rng(seed * 31 + member).choice(len(yl), len(yl), replace=True)
            if len(np.unique(yl[pick])) < 2:
                pick = np.arange(len(yl))
            learners.append(ActiveLearner(estimator=LogisticRegression(C=C, max_iter=1000), X_training=xl[pick],
                                          y_training=yl[pick]))
        committee = Committee(learner_list=learners, query_strategy=vote_entropy_sampling)
        chosen = vote_entropy_sampling(committee, x[unlabelled], n_instances=budget, random_tie_break=True)
        chosen = chosen[0] if isinstance(chosen, tuple) else chosen
        return unlabelled[np.asarray(chosen, dtype=np.int64)]
    raise ValueError(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")


def run_peer(peer: str, data, rounds: int, budget: int, seed: int):
    """One peer's curve on `data` (a SuiteData): list of per-round dicts like the alkit loop's."""
    from alkit.metrics import accuracy, ece, nll

    num_classes = len(data.class_names)
    rng = np.random.default_rng(seed * 7717 + 1)
    labelled = np.zeros(len(data.pool_y), dtype=bool)
    C = 1.0
    points = []
    for round_number in range(1, rounds + 1):
        started = time.perf_counter()
        chosen = _query(peer, data.pool_x, data.pool_y, labelled, budget, C, num_classes, rng, seed * 1000 + round_number)
        if len(np.unique(chosen)) != budget or labelled[chosen].any():
            raise RuntimeError(f"{peer} returned {len(np.unique(chosen))} distinct new items for budget {budget}")
        labelled[chosen] = True
        model, C = tuned_logistic_regression(data.pool_x[labelled], data.pool_y[labelled], num_classes, seed)
        if model is None:
            probs = np.full((len(data.test_y), num_classes), 1.0 / num_classes)
        else:
            probs = full_probs(model, data.test_x, num_classes)
        points.append(dict(
            round=round_number, labels=int(labelled.sum()), accuracy=accuracy(probs, data.test_y),
            nll=nll(probs, data.test_y), ece=ece(probs, data.test_y, 15)[0],
            chosen_classes=data.pool_y[chosen].tolist(), seconds=time.perf_counter() - started, C=C,
        ))
    return points
