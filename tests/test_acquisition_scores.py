"""Acquisition scores against loop-based references, plus Hypothesis properties of the maths."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alkit.acquisition import scores
from alkit.acquisition.pipeline import score_in_chunks
from alkit.errors import InputError, UnknownNameError

TOL = 1e-9  # float64 round-off allowance for the exact bounds


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exps = np.exp(shifted)
    return exps / exps.sum(axis=-1, keepdims=True)


def random_logits(seed: int, num_samples: int, num_items: int, num_classes: int, sharpness: float) -> np.ndarray:
    """Logits with a shared per-item mean plus per-sample spread, like a real posterior."""
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal((1, num_items, num_classes)) * sharpness
    spread = rng.standard_normal((num_samples, num_items, num_classes)) * sharpness * rng.uniform(0.1, 1.5)
    return mean + spread


def linear_head_logits(seed: int, num_samples: int, num_items: int, num_classes: int, dim: int = 3) -> np.ndarray:
    """Logits X W_k^T of one weight draw W_k per sample shared by all inputs (correlated items)."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((num_items, dim))
    weights = rng.standard_normal((1, num_classes, dim)) + rng.standard_normal((num_samples, num_classes, dim))
    return np.einsum("nd,skd->snk", features, weights)


# ---- slow, loop-based references -------------------------------------------------------


def ref_entropy_of(distribution) -> float:
    return -sum(p * math.log(p) for p in distribution if p > 0)


def ref_mean(probs, item) -> list[float]:
    num_samples, _, num_classes = probs.shape
    return [sum(probs[k, item, c] for k in range(num_samples)) / num_samples for c in range(num_classes)]


def ref_scores(probs) -> dict[str, list[float]]:
    num_samples, num_items, _ = probs.shape
    out: dict[str, list[float]] = {"entropy": [], "least_confidence": [], "margin": [], "bald": []}
    for item in range(num_items):
        pbar = ref_mean(probs, item)
        total = ref_entropy_of(pbar)
        expected = sum(ref_entropy_of(probs[k, item]) for k in range(num_samples)) / num_samples
        ranked = sorted(pbar, reverse=True)
        out["entropy"].append(total)
        out["least_confidence"].append(1 - ranked[0])
        out["margin"].append(1 - (ranked[0] - ranked[1]))
        out["bald"].append(min(max(total - expected, 0.0), total))
    return out


def ref_logit_variance(logits) -> list[float]:
    """Variance over samples of class-centred logits, averaged over classes, from the LOGITS."""
    num_samples, num_items, num_classes = logits.shape
    result = []
    for item in range(num_items):
        centred = [[logits[k, item, c] - sum(logits[k, item]) / num_classes for c in range(num_classes)] for k in range(num_samples)]
        per_class = []
        for c in range(num_classes):
            column = [centred[k][c] for k in range(num_samples)]
            mean = sum(column) / num_samples
            per_class.append(sum((v - mean) ** 2 for v in column) / num_samples)
        result.append(sum(per_class) / num_classes)
    return result


def ref_epig(pool, targets) -> list[float]:
    """Mean over targets of the mutual information sum P log(P / (pbar pbar*)), by loops."""
    num_samples, num_items, num_classes = pool.shape
    num_targets = targets.shape[1]
    result = []
    for item in range(num_items):
        pbar = ref_mean(pool, item)
        total = 0.0
        for j in range(num_targets):
            tbar = ref_mean(targets, j)
            for c in range(num_classes):
                for c2 in range(num_classes):
                    joint = sum(pool[k, item, c] * targets[k, j, c2] for k in range(num_samples)) / num_samples
                    if joint > 0:
                        total += joint * math.log(joint / (pbar[c] * tbar[c2]))
        result.append(total / num_targets)
    return result


# ---- oracle tests ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_scores_match_loop_references(seed):
    probs = softmax(random_logits(seed, 6, 9, 4, sharpness=2.0))
    expected = ref_scores(probs)
    np.testing.assert_allclose(scores.predictive_entropy(probs), expected["entropy"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(scores.least_confidence(probs), expected["least_confidence"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(scores.margin(probs), expected["margin"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(scores.bald(probs), expected["bald"], rtol=1e-8, atol=1e-12)


def test_logit_variance_matches_variance_of_the_generating_logits():
    logits = random_logits(3, 7, 5, 4, sharpness=1.5)
    np.testing.assert_allclose(scores.logit_variance(softmax(logits)), ref_logit_variance(logits), rtol=1e-8)


def test_logit_variance_from_moments_is_the_class_mean():
    variances = np.random.default_rng(0).uniform(0, 2, size=(6, 3))
    np.testing.assert_allclose(scores.logit_variance_from_moments(variances), [sum(r) / 3 for r in variances])


@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_epig_matches_loop_reference(chunk_size):
    logits = linear_head_logits(5, 8, 11, 3)
    pool, targets = softmax(logits[:, :7]), softmax(logits[:, 7:])
    expected = ref_epig(pool, targets)
    assert min(expected) > 1e-3  # a case where EPIG is far from 0
    np.testing.assert_allclose(scores.epig(pool, targets, chunk_size=chunk_size), expected, rtol=1e-7, atol=1e-12)


def test_float32_input_agrees_with_float64():
    probs = softmax(random_logits(2, 8, 10, 5, sharpness=2.0))
    for name in ("entropy", "bald", "margin", "least_confidence"):
        spec = scores.get_scorer(name)
        np.testing.assert_allclose(spec.score(probs.astype(np.float32)), spec.score(probs), atol=2e-5)
    np.testing.assert_allclose(scores.epig(probs.astype(np.float32), probs[:, :4].astype(np.float32)), scores.epig(probs, probs[:, :4]), atol=2e-5)


# ---- properties ------------------------------------------------------------------------

shapes = st.tuples(
    st.integers(0, 10_000),  # seed
    st.integers(1, 6),  # S
    st.integers(1, 7),  # N
    st.integers(2, 6),  # K
    st.floats(0.01, 8.0),  # sharpness: near-uniform to near-deterministic
)


@settings(max_examples=40, deadline=None)
@given(shapes)
def test_entropy_bald_epig_bounds(shape):
    seed, num_samples, num_items, num_classes, sharpness = shape
    logits = linear_head_logits(seed, num_samples, num_items + 3, num_classes) * sharpness
    probs, targets = softmax(logits[:, :num_items]), softmax(logits[:, num_items:])
    entropy = scores.predictive_entropy(probs)
    bald = scores.bald(probs)
    epig = scores.epig(probs, targets)
    assert np.all(entropy >= 0) and np.all(entropy <= math.log(num_classes) + TOL)
    assert np.all(bald >= 0) and np.all(bald <= entropy)
    assert np.all(epig >= 0) and np.all(epig <= bald + TOL)
    assert np.all(scores.margin(probs) >= 0) and np.all(scores.margin(probs) <= 1 + TOL)
    assert np.all(scores.least_confidence(probs) <= 1 - 1 / num_classes + TOL)


@settings(max_examples=25, deadline=None)
@given(shapes)
def test_bald_is_zero_when_all_samples_agree(shape):
    seed, num_samples, num_items, num_classes, sharpness = shape
    one_sample = softmax(random_logits(seed, 1, num_items, num_classes, sharpness))
    probs = np.repeat(one_sample, num_samples, axis=0)
    np.testing.assert_allclose(scores.bald(probs), 0.0, atol=TOL)
    np.testing.assert_allclose(scores.logit_variance(probs), 0.0, atol=1e-12)
    np.testing.assert_allclose(scores.epig(probs, probs), 0.0, atol=TOL)


@settings(max_examples=25, deadline=None)
@given(shapes, st.randoms(use_true_random=False))
def test_scores_are_permutation_equivariant(shape, rnd):
    seed, num_samples, num_items, num_classes, sharpness = shape
    logits = random_logits(seed, num_samples, num_items + 2, num_classes, sharpness)
    probs, targets = softmax(logits[:, :num_items]), softmax(logits[:, num_items:])
    permutation = list(range(num_items))
    rnd.shuffle(permutation)
    for name in ("entropy", "least_confidence", "margin", "bald", "logit_variance", "epig"):
        spec = scores.get_scorer(name)
        direct = spec.score(probs, probs_target=targets)
        permuted = spec.score(probs[:, permutation], probs_target=targets)
        np.testing.assert_allclose(permuted, direct[permutation], rtol=1e-10, atol=1e-13)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(1, 4), st.integers(2, 5))
def test_epig_is_zero_for_targets_independent_of_the_pool(seed, factor_a, factor_b, num_classes):
    """Samples are a grid (a, b): pool probs depend on a only, targets on b only, so the
    joint predictive factorises and the pool tells nothing about the targets."""
    rng = np.random.default_rng(seed)
    pool_a = softmax(rng.standard_normal((factor_a, 5, num_classes)) * 3)
    targets_b = softmax(rng.standard_normal((factor_b, 4, num_classes)) * 3)
    pool = np.repeat(pool_a, factor_b, axis=0)  # sample k = a * factor_b + b
    targets = np.tile(targets_b, (factor_a, 1, 1))
    np.testing.assert_allclose(scores.epig(pool, targets), 0.0, atol=TOL)


def test_epig_depends_on_the_target_set():
    logits = linear_head_logits(7, 16, 10, 4)
    pool = softmax(logits[:, :6])
    first, second = scores.epig(pool, softmax(logits[:, 6:8])), scores.epig(pool, softmax(logits[:, 8:10]))
    assert np.max(np.abs(first - second)) > 0.1 * max(first.max(), second.max())


def test_epig_is_highest_for_a_pool_item_that_is_a_target():
    """A target's own copy in the pool carries the most information about it."""
    probs = softmax(linear_head_logits(11, 32, 8, 4))
    for target in (3, 6):
        assert int(np.argmax(scores.epig(probs, probs[:, [target]]))) == target


def test_epig_rejects_targets_from_other_samples():
    probs = softmax(random_logits(0, 4, 3, 3, 1.0))
    with pytest.raises(InputError, match="S=4"):
        scores.epig(probs, probs[:2])


# ---- registry, random, pipeline --------------------------------------------------------


def test_registry_names_and_flags():
    assert scores.SCORERS.names() == sorted(
        ["entropy", "least_confidence", "margin", "bald", "bald_analytic", "epig", "logit_variance", "random"]
    )
    assert scores.get_scorer("epig").needs_targets and scores.get_scorer("bald").needs_samples
    assert not scores.get_scorer("entropy").needs_samples
    with pytest.raises(UnknownNameError, match="bald, bald_analytic, entropy"):
        scores.get_scorer("badl")


def test_random_scores_are_seeded():
    np.testing.assert_array_equal(scores.random_scores(50, 3), scores.random_scores(50, 3))
    assert not np.array_equal(scores.random_scores(50, 3), scores.random_scores(50, 4))
    assert scores.random_scores(50, 3).min() >= 0 and scores.random_scores(50, 3).max() < 1


@pytest.mark.parametrize("name", ["entropy", "least_confidence", "margin", "bald", "logit_variance", "epig"])
@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_score_in_chunks_equals_scoring_at_once(name, chunk_size):
    logits = random_logits(4, 5, 14, 3, sharpness=2.0)
    probs, targets = softmax(logits[:, :10]), softmax(logits[:, 10:])
    calls = []

    def predict_chunk(start, stop):
        calls.append((start, stop))
        return probs[:, start:stop]

    chunked = score_in_chunks(predict_chunk, 10, name, chunk_size=chunk_size, targets_probs=targets)
    np.testing.assert_allclose(chunked, scores.get_scorer(name).score(probs, probs_target=targets), rtol=1e-12)
    assert calls[0][0] == 0 and calls[-1][1] == 10 and all(b - a <= chunk_size for a, b in calls)


def test_score_in_chunks_random_and_errors():
    def never(start, stop):
        raise AssertionError("random must not predict")

    np.testing.assert_array_equal(score_in_chunks(never, 7, "random", seed=2), scores.random_scores(7, 2))
    with pytest.raises(InputError, match="target"):
        score_in_chunks(lambda a, b: np.full((2, b - a, 3), 1 / 3), 4, "epig")
    with pytest.raises(InputError, match="expected"):
        score_in_chunks(lambda a, b: np.full((2, 1, 3), 1 / 3), 4, "bald", chunk_size=2)
