"""Every script in examples/ runs (as a user would run it) and does what it says."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


def test_variation_ratio_against_a_loop():
    module = load("custom_scorer")
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=(7, 5))  # (S=7, N=5, K=4)
    expected = []
    for n in range(5):
        votes = [int(np.argmax(probs[s, n])) for s in range(7)]
        expected.append(1 - max(votes.count(k) for k in range(4)) / 7)
    np.testing.assert_allclose(module.variation_ratio(probs), expected)


@pytest.fixture
def scorers():
    """The global scorer registry; whatever a test registers is removed afterwards, so other
    tests (e.g. the registry's list of names) see the built-in scorers only, in any order."""
    from alkit.acquisition import SCORERS

    with SCORERS.scoped():
        yield SCORERS


def test_custom_scorer_example_selects_by_the_registered_name(tmp_path, scorers):
    module = load("custom_scorer")
    built_in = scorers.names()
    chosen = module.main(tmp_path)

    assert scorers.names() == sorted([*built_in, "variation_ratio"])
    assert len(chosen) == 5 and len(set(chosen)) == 5
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'project' / 'alkit.db'}")
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT strategy FROM rounds")).scalar_one() == "variation_ratio"
    engine.dispose()


def test_library_loop_example_runs_as_a_script(tmp_path):
    out = subprocess.run([sys.executable, str(EXAMPLES / "library_loop.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])  # the script prints one JSON object
    assert summary["added"] == 30 and summary["labels_imported"] == 6
    assert summary["refit_labels"] == 6 and summary["refit_version"] == summary["zero_shot_version"] + 1
    assert 0.0 <= summary["accuracy_on_pool"] <= 1.0


def test_scoped_registration_leaves_the_registry_as_it_was():
    from alkit.acquisition import SCORERS

    before = SCORERS.names()
    with SCORERS.scoped():
        load("custom_scorer").register()
        assert "variation_ratio" in SCORERS
    assert SCORERS.names() == before and "variation_ratio" not in SCORERS
