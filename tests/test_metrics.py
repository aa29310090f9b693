"""Metrics against hand computations on tiny cases, Hypothesis properties, plots and the HTML report."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from alkit.metrics.calibration import (
    accuracy,
    brier,
    ece,
    labels_to_reach,
    nll,
    per_class_accuracy,
    reliability_bins,
    summary,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Three items, three classes; hand-checked below.
PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.25, 0.5, 0.25]])
LABELS = np.array([0, 1, 1])  # item 0 right (conf .7), item 1 wrong (conf .6), item 2 right (conf .5)


def test_accuracy_by_hand():
    assert accuracy(PROBS, LABELS) == pytest.approx(2 / 3)


def test_nll_by_hand():
    expected = -(math.log(0.7) + math.log(0.3) + math.log(0.5)) / 3
    assert nll(PROBS, LABELS) == pytest.approx(expected)


def test_nll_floors_zero_probability_instead_of_infinity():
    assert nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-math.log(1e-12))


def test_brier_by_hand_sums_classes_and_averages_items():
    item0 = (0.7 - 1) ** 2 + 0.2**2 + 0.1**2
    item1 = 0.1**2 + (0.3 - 1) ** 2 + 0.6**2
    item2 = 0.25**2 + (0.5 - 1) ** 2 + 0.25**2
    assert brier(PROBS, LABELS) == pytest.approx((item0 + item1 + item2) / 3)


def test_ece_by_hand_with_two_bins():
    # Bins (0, .5] and (.5, 1]: item 2 (conf .5, right) alone in bin 0;
    # items 0 (conf .7, right) and 1 (conf .6, wrong) in bin 1: acc .5, conf .65.
    value, bins = ece(PROBS, LABELS, num_bins=2)
    assert bins.counts.tolist() == [1, 2]
    assert bins.accuracy.tolist() == pytest.approx([1.0, 0.5])
    assert bins.confidence.tolist() == pytest.approx([0.5, 0.65])
    assert value == pytest.approx(1 / 3 * abs(1.0 - 0.5) + 2 / 3 * abs(0.5 - 0.65))


def test_ece_matches_a_loop_over_bins_with_default_15_bins():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(200, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 4, size=200)
    expected = 0.0
    for b in range(15):
        low, high = b / 15, (b + 1) / 15
        members = [i for i in range(200) if (low < probs[i].max() <= high) or (b == 0 and probs[i].max() == 0)]
        if members:
            acc = np.mean([probs[i].argmax() == labels[i] for i in members])
            conf = np.mean([probs[i].max() for i in members])
            expected += len(members) / 200 * abs(acc - conf)
    value, bins = ece(probs, labels)
    assert len(bins.counts) == 15 and bins.counts.sum() == 200
    assert value == pytest.approx(expected)


def test_empty_bins_are_nan_and_ignored():
    _, bins = ece(np.array([[0.95, 0.05]]), np.array([0]), num_bins=10)
    assert bins.counts.tolist() == [0] * 9 + [1]
    assert np.isnan(bins.accuracy[:9]).all() and bins.accuracy[9] == 1.0


def test_per_class_accuracy_by_hand():
    result = per_class_accuracy(PROBS, LABELS)
    assert result[0] == 1.0 and result[1] == pytest.approx(0.5) and np.isnan(result[2])


def test_labels_to_reach_first_round_at_or_above_target():
    assert labels_to_reach([10, 20, 30, 40], [0.5, 0.7, 0.69, 0.8], 0.7) == 20
    assert labels_to_reach([10, 20], [0.5, 0.6], 0.9) is None


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="expected probs"):
        accuracy(PROBS, LABELS[:2])


def test_summary_records_bin_count():
    result = summary(PROBS, LABELS, num_bins=2)
    assert result["ece_bins"] == 2 and result["accuracy"] == pytest.approx(2 / 3)


@st.composite
def probs_and_labels(draw):
    n = draw(st.integers(1, 30))
    k = draw(st.integers(2, 6))
    raw = draw(arrays(np.float64, (n, k), elements=st.floats(0.0, 1.0)))
    raw = raw + 1e-3
    probs = raw / raw.sum(axis=1, keepdims=True)
    labels = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    return probs, labels


@settings(max_examples=60, deadline=None)
@given(probs_and_labels(), st.integers(1, 20))
def test_metric_ranges(case, num_bins):
    probs, labels = case
    value, bins = ece(probs, labels, num_bins)
    assert 0.0 <= value <= 1.0
    assert bins.counts.sum() == len(labels)
    assert 0.0 <= brier(probs, labels) <= 2.0
    assert nll(probs, labels) >= 0.0
    assert 0.0 <= accuracy(probs, labels) <= 1.0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=20))
def test_perfect_confident_predictions_have_zero_ece_nll_brier(label_list):
    labels = np.array(label_list)
    probs = np.eye(5)[labels]
    assert ece(probs, labels)[0] == 0.0
    assert nll(probs, labels) == 0.0
    assert brier(probs, labels) == 0.0
    assert accuracy(probs, labels) == 1.0


def test_reliability_bins_agree_with_ece_return():
    bins = reliability_bins(PROBS, LABELS, num_bins=4)
    assert bins.edges.tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])


def test_plots_write_png_files(tmp_path):
    from alkit.metrics.plots import plot_learning_curves, plot_reliability

    _, bins = ece(PROBS, LABELS)
    reliability = plot_reliability(bins, tmp_path / "reliability.png")
    curves = plot_learning_curves(
        {"random": (np.array([10, 20, 30]), np.array([0.5, 0.6, 0.7])), "bald": ([10, 20, 30], [0.55, 0.7, 0.8])},
        tmp_path / "sub" / "curves.png",
    )
    for path in (reliability, curves):
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 1000


def test_html_report_embeds_images_and_metrics(tmp_path):
    from alkit.metrics.plots import plot_reliability
    from alkit.metrics.report import write_html_report

    _, bins = ece(PROBS, LABELS)
    image = plot_reliability(bins, tmp_path / "reliability.png")
    report = write_html_report(
        tmp_path / "report.html", {"accuracy": 0.6667, "strategy": {"bald": 0.81}, "<name>": "a&b"}, [image]
    )
    text = report.read_text()
    expected_uri = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode("ascii")
    assert expected_uri in text
    assert "0.6667" in text and "<h2>strategy</h2>" in text and "0.81" in text
    assert "&lt;name&gt;" in text and "a&amp;b" in text  # escaped, not raw HTML
    assert 'src="reliability' not in text and "file:" not in text  # no link to a side file
