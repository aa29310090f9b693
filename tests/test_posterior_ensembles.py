"""Trained-head posteriors: `ensemble` (anchored / hyper), `mimo`, `hetsngp`.

Accuracy is checked against scikit-learn's LogisticRegression on the same unit-normalised
toy embeddings; the sample structure (members differ, MIMO subnetworks disagree more off the
data, the GP variance grows with distance) on synthetic data where the answer is known; the
anchored members against a per-member scipy solve (a loop); save/load by exact equality.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from alkit.errors import InputError
from alkit.posterior.ensemble import EnsembleSettings, fit_ensemble, member_precisions
from alkit.posterior.hetsngp import HetSNGPSettings, fit_hetsngp
from alkit.posterior.io import load_posterior, save_posterior
from alkit.posterior.head_inputs import unit_rows
from alkit.posterior.mimo import MimoSettings, diversity, fit_mimo

ACCURACY_TOLERANCE = 0.05  # each kind within 5 points of logistic regression's test accuracy
FAST_MIMO = MimoSettings(steps=300, hidden=32)
FAST_SNGP = HetSNGPSettings(steps=300, hidden=32, features=256)


def blobs(count: int, seed: int, dim: int = 12, classes: int = 3, spread: float = 0.6):
    """Gaussian blobs around random class centres in the first 4 dimensions (the rest zero plus a
    little noise), so 'off the data' directions exist."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(size=(classes, dim)) * np.r_[np.ones(4), np.zeros(dim - 4)]
    labels = rng.integers(classes, size=count)
    x = centres[labels] + spread * rng.normal(size=(count, dim)) * np.r_[np.ones(4), 0.05 * np.ones(dim - 4)]
    return x + np.r_[3.0, np.zeros(dim - 1)], labels  # an offset keeps rows away from zero


def fit_kind(kind: str, x, y, classes: int = 3, **kwargs):
    if kind == "ensemble":
        return fit_ensemble(x, y, classes, **kwargs)
    if kind == "ensemble-hyper":
        return fit_ensemble(x, y, classes, settings=EnsembleSettings(hyper=True), **kwargs)
    if kind == "mimo":
        return fit_mimo(x, y, classes, settings=FAST_MIMO, **kwargs)
    return fit_hetsngp(x, y, classes, settings=FAST_SNGP, **kwargs)


KINDS = ["ensemble", "ensemble-hyper", "mimo", "hetsngp"]


@pytest.fixture(scope="module")
def toy():
    x, y = blobs(300, 0)
    xt, yt = blobs(600, 1)
    return x, y, xt, yt


@pytest.fixture(scope="module")
def fitted(toy):
    x, y, _, _ = toy
    return {kind: fit_kind(kind, x, y) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_fits_as_well_as_logistic_regression(kind, toy, fitted):
    from sklearn.linear_model import LogisticRegression

    x, y, xt, yt = toy
    reference = LogisticRegression(max_iter=2000).fit(unit_rows(x), y).score(unit_rows(xt), yt)
    posterior = fitted[kind]
    accuracy = float((posterior.predict(xt).argmax(axis=1) == yt).mean())
    assert accuracy >= reference - ACCURACY_TOLERANCE, (kind, accuracy, reference)
    probs = posterior.predict(xt)
    assert probs.shape == (600, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    mean, var = posterior.logit_moments(xt)
    assert mean.shape == var.shape == (600, 3) and (var >= 0).all()
    assert posterior.map_predict(xt).shape == (600, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_samples_are_shared_across_chunks(kind, toy, fitted):
    _, _, xt, _ = toy
    posterior = fitted[kind]
    weights = posterior.sample_weights(10, seed=3)
    whole = posterior.sample_probs(weights, xt[:50])
    parts = np.concatenate([posterior.sample_probs(weights, xt[:20]), posterior.sample_probs(weights, xt[20:50])], axis=1)
    assert whole.shape == (10, 50, 3)
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole.sum(axis=2), 1.0, atol=1e-5)
    assert np.ptp(whole, axis=0).max() > 1e-3  # the samples are not all the same model


def test_ensemble_members_differ_and_samples_cycle_over_them(toy, fitted):
    _, _, xt, _ = toy
    posterior = fitted["ensemble"]
    members = posterior.member_logits(xt)  # (M, N, K)
    assert members.shape[0] == 8
    spread = [np.abs(members[a] - members[b]).mean() for a in range(8) for b in range(a + 1, 8)]
    assert min(spread) > 1e-3  # every pair of members differs
    weights = posterior.sample_weights(20, seed=5)
    order = np.random.default_rng(5).permutation(8)
    for s in range(20):  # S > M: a seeded permutation of the members, repeated in order
        np.testing.assert_array_equal(weights.weights[s], posterior.weights[order[s % 8]].astype(np.float32))
    probs = posterior.sample_probs(weights, xt[:30])
    np.testing.assert_allclose(probs[0], probs[8], atol=1e-7)


@pytest.mark.parametrize("bootstrap", [False, True])
def test_anchored_members_are_each_the_minimiser_of_their_own_objective(toy, bootstrap):
    """The joint L-BFGS over all members against one scipy solve per member (a loop), with
    the anchors (and Bayesian-bootstrap weights) rebuilt from the same seed."""
    from scipy.optimize import minimize

    from alkit.posterior.head_inputs import prepare_head_inputs

    x, y, _, _ = toy
    settings = EnsembleSettings(members=3, hyper=True, gradient_tolerance=1e-8, bootstrap=bootstrap)
    posterior = fit_ensemble(x[:80], y[:80], 3, settings=settings, seed=7)
    inputs = prepare_head_inputs(x[:80], y[:80], 3, None, 1.0)
    lam = posterior.provenance.settings["evidence_prior_precision"]  # chosen by the Laplace evidence
    lams = member_precisions(settings, 7, lam)
    np.testing.assert_allclose(posterior.member_precisions, lams)
    assert len(set(lams.tolist())) == 3
    rng = np.random.default_rng([7, 0])
    noise = rng.standard_normal((3,) + inputs.prior.shape)
    noise = (noise - noise.mean(axis=0)) * np.sqrt(3 / 2)  # centred over the members
    anchors = inputs.prior[None] + noise / np.sqrt(lams)[:, None, None]
    row_weights = rng.dirichlet(np.ones(80), size=3) * 80 if bootstrap else np.ones((3, 80))
    for m in range(3):

        def objective(flat, m=m):
            w = flat.reshape(3, -1)
            logits = inputs.xa @ w.T
            log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
            data = -(row_weights[m] * log_probs[np.arange(80), inputs.labels]).sum()
            return data + 0.5 * lams[m] * np.sum((w - anchors[m]) ** 2)

        reference = minimize(objective, np.zeros(anchors[m].size), method="BFGS", options={"gtol": 1e-9}).x
        np.testing.assert_allclose(posterior.weights[m].ravel(), reference, atol=2e-4)


def test_hyper_ensemble_spreads_weight_decay_one_member_per_stratum():
    settings = EnsembleSettings(members=6, hyper=True, prior_precision=2.0, hyper_range=10.0)
    lams = member_precisions(settings, seed=1)
    positions = (np.log(lams / 2.0) / np.log(10.0) + 1) / 2  # in [0, 1)
    assert sorted(np.floor(positions * 6).astype(int).tolist()) == list(range(6))
    assert not np.array_equal(lams, member_precisions(settings, seed=2))
    np.testing.assert_array_equal(member_precisions(EnsembleSettings(members=4), 1), np.full(4, 1.0))


def test_ensemble_without_labels_draws_members_from_the_prompt_prior():
    rng = np.random.default_rng(0)
    text, pool = rng.normal(size=(3, 6)), rng.normal(size=(200, 6))
    posterior = fit_ensemble(np.zeros((0, 6)), np.zeros(0, int), 3, class_text=text, logit_scale=10.0,
                             settings=EnsembleSettings(members=400, prior_precision=4.0), unlabelled=pool)
    prior = posterior.weights.mean(axis=0)
    assert posterior.provenance.labels_used == 0
    np.testing.assert_allclose(posterior.weights.std(axis=0).mean(), 0.5, rtol=0.05)  # 1/sqrt(lam)
    assert np.corrcoef(prior[:, :6].ravel(), (text / np.linalg.norm(text, axis=1, keepdims=True)).ravel())[0, 1] > 0.95


def test_mimo_subnetworks_disagree_more_off_the_data_and_read_their_own_slot(toy, fitted):
    x, y, xt, yt = toy
    posterior = fitted["mimo"]
    assert posterior.provenance.settings["subnetworks_collapsed"] is False
    rng = np.random.default_rng(9)
    off = np.r_[3.0, np.zeros(11)] + rng.normal(size=(600, 12)) * np.r_[np.zeros(4), 3.0 * np.ones(8)]  # unused directions
    inside, outside = diversity(posterior.member_logits(xt)), diversity(posterior.member_logits(off))
    assert outside["symmetric_kl"] > 2 * inside["symmetric_kl"], (inside, outside)
    # Head m learned from slot m only: scrambling the other slots barely moves its accuracy.
    scrambled = [xt if m == 0 else xt[rng.permutation(600)] for m in range(3)]
    head0 = posterior.slot_logits(scrambled)[0].argmax(axis=1)
    assert (head0 == yt).mean() >= (posterior.member_logits(xt)[0].argmax(axis=1) == yt).mean() - 0.1


def test_hetsngp_variance_grows_with_distance_from_the_data_in_2d():
    """Two classes on an arc of the unit circle (angles 0..1 rad); test points further round the circle."""
    rng = np.random.default_rng(0)
    angles = rng.uniform(0.0, 1.0, size=200)
    x = np.c_[np.cos(angles), np.sin(angles)]
    y = (angles > 0.5).astype(int)
    posterior = fit_hetsngp(x, y, 2, settings=HetSNGPSettings(steps=300, hidden=16, features=256), seed=0)
    assert (posterior.predict(x).argmax(axis=1) == y).mean() > 0.9
    distances = [0.0, 0.25, 0.5, 1.0, 2.0, 3.0]  # radians beyond the end of the arc
    variance = []
    for d in distances:
        probe = 1.0 + d + np.linspace(-0.05, 0.05, 11)
        phi = posterior.features(np.c_[np.cos(probe), np.sin(probe)])[1]
        variance.append(float(posterior.gp_variance(phi).mean()))
    inside = float(posterior.gp_variance(posterior.features(x)[1]).mean())
    # Rises with distance until it saturates near the prior variance 1/lam = 1 (|phi| ~ 1).
    assert inside < variance[0] < variance[1] < variance[2] < variance[3], (inside, variance)
    assert min(variance[3:]) > 10 * inside and max(variance) < 1.5
    _, total = posterior.logit_moments(np.c_[np.cos([0.5, 3.0]), np.sin([0.5, 3.0])])
    assert total[1].min() > total[0].max()  # the full logit variance too


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trips_exactly(kind, toy, fitted, tmp_path):
    _, _, xt, _ = toy
    posterior = fitted[kind]
    save_posterior(posterior, tmp_path)
    header = json.loads((tmp_path / "header.json").read_text())
    assert header["kind"] == posterior.kind
    loaded = load_posterior(tmp_path, "unspecified", list(posterior.classes))
    arrays, state = posterior.to_state()
    loaded_arrays, loaded_state = loaded.to_state()
    assert state == loaded_state and arrays.keys() == loaded_arrays.keys()
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], loaded_arrays[name])
    assert loaded.provenance.settings == json.loads(json.dumps(posterior.provenance.settings))
    np.testing.assert_array_equal(loaded.predict(xt), posterior.predict(xt))
    np.testing.assert_array_equal(
        loaded.sample_probs(loaded.sample_weights(5, 1), xt), posterior.sample_probs(posterior.sample_weights(5, 1), xt)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_zero_or_non_finite_rows_are_refused(kind, toy, fitted):
    x, y, xt, _ = toy
    bad = x.copy()
    bad[4] = 0.0
    with pytest.raises(InputError, match=r"rows \[4\]"):
        fit_kind(kind, bad, y)
    probe = xt[:5].copy()
    probe[2, 1] = np.nan
    with pytest.raises(InputError, match="not finite"):
        fitted[kind].predict(probe)
    with pytest.raises(InputError, match="expects"):
        fitted[kind].sample_probs(fitted[kind].sample_weights(2, 0), xt[:, :5])


@pytest.fixture
def imported_project(cli, make_images, tmp_path):
    rng = np.random.default_rng(0)
    paths = make_images(24)
    labels = np.arange(24) % 2
    embeddings = rng.normal(size=(24, 8)) + 2.0 * labels[:, None] * np.r_[1.0, np.zeros(7)] + np.r_[0, 3.0, np.zeros(6)]
    np.savez(tmp_path / "emb.npz", paths=np.array([str(p) for p in paths]), embeddings=embeddings)
    assert cli("init").exit_code == 0
    assert cli("classes", "set", "a", "b").exit_code == 0
    assert cli("embed", "--from", str(tmp_path / "emb.npz")).exit_code == 0
    (tmp_path / "l.csv").write_text("path,label\n" + "".join(f"{paths[i]},{'ab'[labels[i]]}\n" for i in range(10)))
    assert cli("labels", "import", str(tmp_path / "l.csv")).exit_code == 0
    return paths


def test_cli_fits_each_kind_and_selects_with_bald(cli, imported_project):
    for number, (kind, extra) in enumerate([("ensemble", ["--hyper"]), ("mimo", []), ("hetsngp", [])], start=1):
        result = cli("fit", "--posterior", kind, *extra, "--json")
        assert result.exit_code == 0, result.output
        fitted = json.loads(result.stdout)
        assert fitted["kind"] == kind and fitted["labels_used"] == 10 and fitted["version"] == number
        selected = cli("select", "--strategy", "bald", "--budget", "3", "--json")
        assert selected.exit_code == 0, selected.output
        items = [json.loads(line) for line in selected.stdout.splitlines() if line.strip()]
        assert len(items) == 3 and all(item["score"] is not None and item["score"] >= 0 for item in items)
    predicted = cli("predict", "--json")
    assert predicted.exit_code == 0, predicted.output


def test_cli_hyper_needs_the_ensemble_and_strategies_lists_the_kinds(cli, imported_project):
    refused = cli("fit", "--posterior", "mimo", "--hyper")
    assert refused.exit_code == 2 and "--posterior ensemble" in refused.output
    listed = cli("strategies")
    assert listed.exit_code == 0
    for kind in ("ensemble", "mimo", "hetsngp", "laplace_head"):
        assert kind in listed.stdout
