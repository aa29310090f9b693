"""Posterior save/load: exact round trip, refusal of a foreign spec or class list, registry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alkit.errors import IntegrityError, UnknownNameError
from alkit.posterior.bayesvlm import BayesVLMPosterior
from alkit.posterior.base import FeatureKind, Posterior
from alkit.posterior.io import load_posterior, save_posterior
from alkit.posterior.laplace_head import LaplaceHeadPosterior, fit_laplace_head
from alkit.posterior.registry import POSTERIORS, feature_kind, posterior_class

CLASSES = ("cat", "dog", "fox")


def _bayesvlm():
    rng = np.random.default_rng(0)
    text = rng.normal(size=(3, 6))
    return BayesVLMPosterior.from_pool_curvature(
        rng.normal(size=(20, 4)), rng.normal(size=(6, 4)), text, 10.0, 4.0, candidate_batch_size=2,
        classes=CLASSES, embedding_spec_key="ViT-B-32/openai",
    )


def _head():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(15, 5))
    return fit_laplace_head(x, rng.integers(0, 3, 15), 3, rng.normal(size=(3, 5)), 4.0, classes=CLASSES,
                            embedding_spec_key="imported:abc")


@pytest.mark.parametrize("make", [_bayesvlm, _head])
def test_round_trip_is_exact(tmp_path, make):
    post = make()
    save_posterior(post, tmp_path / "v1")
    loaded = load_posterior(tmp_path / "v1", post.embedding_spec_key, list(CLASSES))
    assert type(loaded) is type(post)
    for name, value in post.to_state()[0].items():
        np.testing.assert_array_equal(loaded.to_state()[0][name], value)
    assert loaded.to_state()[1] == json.loads(json.dumps(post.to_state()[1]))
    assert loaded.provenance.curvature_source == post.provenance.curvature_source
    x = np.random.default_rng(2).normal(size=(4, 4 if make is _bayesvlm else 5))
    np.testing.assert_array_equal(loaded.predict(x), post.predict(x))
    header = json.loads((tmp_path / "v1" / "header.json").read_text())
    assert header["kind"] == post.kind and header["classes"] == list(CLASSES)
    assert "pickle" not in (tmp_path / "v1" / "arrays.safetensors").read_bytes()[:200].decode("latin1")


def test_candidate_batch_size_is_recorded(tmp_path):
    save_posterior(_bayesvlm(), tmp_path)
    assert load_posterior(tmp_path).factors.candidate_batch_size == 2


def test_load_refuses_another_spec_or_class_list(tmp_path):
    save_posterior(_bayesvlm(), tmp_path)
    with pytest.raises(IntegrityError, match=r"'ViT-B-32/openai'.*'ViT-L-14/openai'.*alkit fit"):
        load_posterior(tmp_path, "ViT-L-14/openai", list(CLASSES))
    with pytest.raises(IntegrityError, match=r"3 classes.*2 classes.*alkit fit"):
        load_posterior(tmp_path, "ViT-B-32/openai", ["cat", "dog"])
    with pytest.raises(IntegrityError, match="classes"):
        load_posterior(tmp_path, "ViT-B-32/openai", ["dog", "cat", "fox"])  # order matters
    with pytest.raises(IntegrityError, match="no posterior header"):
        load_posterior(tmp_path / "missing")


def test_registry_names_and_unknown_name():
    assert POSTERIORS.names() == ["bayesvlm", "ensemble", "hetsngp", "laplace_head", "mimo", "probvlm"]
    assert posterior_class("laplace_head") is LaplaceHeadPosterior
    with pytest.raises(UnknownNameError, match="bayesvlm, ensemble, hetsngp, laplace_head, mimo, probvlm"):
        posterior_class("nope")


def test_every_kind_declares_its_features_and_has_one_builder():
    from alkit.workflows.fit_builders import BUILDERS

    assert BUILDERS.names() == POSTERIORS.names()
    assert feature_kind("bayesvlm") is FeatureKind.PHI
    assert {feature_kind(name) for name in POSTERIORS.names() if name != "bayesvlm"} == {FeatureKind.EMBEDDING}
    for name in POSTERIORS.names():
        cls = posterior_class(name)
        assert cls.kind == name and isinstance(cls.fast_sample_logits, bool)
        for method in ("logit_moments", "predict", "map_predict", "sample_weights", "sample_logits", "sample_probs", "to_state", "from_state"):
            assert callable(getattr(cls, method)), (name, method)


def test_sample_logits_are_the_log_of_sample_probs_up_to_a_shift():
    post = _bayesvlm()
    assert isinstance(post, Posterior) and not post.fast_sample_logits
    x = np.random.default_rng(3).normal(size=(5, 4))
    weights = post.sample_weights(3, seed=1)
    logits = post.sample_logits(weights, x)
    expected = np.exp(logits - logits.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(expected / expected.sum(-1, keepdims=True), post.sample_probs(weights, x), rtol=1e-5, atol=1e-6)


def test_save_replaces_files_atomically(tmp_path, monkeypatch):
    first, second = _bayesvlm(), _head()
    save_posterior(first, tmp_path)
    save_posterior(second, tmp_path)  # the same directory: both files replaced, no temporary file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.safetensors", "header.json"]
    assert type(load_posterior(tmp_path)) is LaplaceHeadPosterior
    header = (tmp_path / "header.json").read_bytes()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    import alkit.posterior.io as io

    monkeypatch.setattr(io, "atomic_write_text", lambda path, text: broken())
    with pytest.raises(OSError, match="No space"):
        save_posterior(first, tmp_path)
    assert (tmp_path / "header.json").read_bytes() == header  # a failed save never leaves a half-written header
