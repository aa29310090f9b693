"""The logits fast path equals the probability path (softmax first, then the score)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alkit.acquisition import SCORERS
from alkit.acquisition.pipeline import score_logits_in_chunks, top_candidates


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@settings(max_examples=30, deadline=None)
@given(
    samples=st.integers(1, 6), items=st.integers(1, 7), classes=st.integers(2, 6),
    scale=st.floats(0.1, 20.0), seed=st.integers(0, 10_000),
)
def test_logits_functions_match_probability_scorers(samples, items, classes, scale, seed):
    logits = scale * np.random.default_rng(seed).normal(size=(samples, items, classes))
    probs = softmax(logits)
    checked = 0
    for name in SCORERS.names():
        spec = SCORERS.get(name)
        if getattr(spec, "logits_function", None) is None:
            continue
        np.testing.assert_allclose(spec.logits_function(logits), spec.function(probs), atol=1e-9, rtol=1e-7)
        checked += 1
    assert checked >= 4  # entropy, bald, margin, least_confidence at least


def test_chunked_logits_scores_equal_one_shot():
    logits = np.random.default_rng(3).normal(size=(8, 300, 5)) * 3

    def predict_logits(start, stop):
        return logits[:, start:stop]

    chunked = score_logits_in_chunks(predict_logits, 300, "bald", chunk_size=64)
    np.testing.assert_allclose(chunked, SCORERS.get("bald").function(softmax(logits)), atol=1e-6)


def test_top_candidates_against_sorting():
    values = np.random.default_rng(1).random(50)
    kept = top_candidates(values, 7)
    assert kept.tolist() == sorted(np.argsort(-values)[:7].tolist())
    with pytest.raises(Exception):
        top_candidates(values, 0)
