"""`alkit embed --from`: only finite, non-degenerate numeric vectors get in, all or nothing.

Each hostile file is refused with exit 4 and one line on stderr, and afterwards the project is
exactly as before: no spec, no registered images, no current-spec change.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa


def _npz(path, paths, embeddings, **extra):
    np.savez(path, paths=np.array([str(p) for p in paths]), embeddings=embeddings, **extra)
    return path


def _snapshot(project_dir):
    engine = sa.create_engine(f"sqlite:///{project_dir / 'alkit.db'}")
    with engine.connect() as connection:
        state = (
            connection.execute(sa.text("SELECT count(*) FROM images")).scalar_one(),
            connection.execute(sa.text("SELECT count(*) FROM embeddings")).scalar_one(),
            connection.execute(sa.text("SELECT id, name, is_current FROM embedding_specs ORDER BY id")).all(),
        )
    engine.dispose()
    return state


@pytest.fixture
def fresh(cli, make_images, tmp_path):
    images = make_images(4, size=(40, 30))
    assert cli("init").exit_code == 0
    assert cli("classes", "set", "a", "b").exit_code == 0
    good = _npz(tmp_path / "first.npz", images[:2], np.random.default_rng(0).normal(size=(2, 6)))
    assert cli("embed", "--from", str(good), "--name", "first").exit_code == 0
    return images


def _hostile(case, images, tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(4, 6))
    if case == "float64_beyond_float32":
        vectors[2, 3] = 1e300
        return _npz(tmp_path / "x.npz", images, vectors)
    if case == "nan":
        vectors[1, 0] = np.nan
        return _npz(tmp_path / "x.npz", images, vectors.astype(np.float32))
    if case == "zero_row":
        vectors[3] = 0
        return _npz(tmp_path / "x.npz", images, vectors)
    if case == "near_zero_row":
        vectors[0] = 1e-12
        return _npz(tmp_path / "x.npz", images, vectors)
    if case == "string_embeddings":
        return _npz(tmp_path / "x.npz", images, vectors.astype(str))
    if case == "object_embeddings":  # needs pickle to load, which alkit never does
        return _npz(tmp_path / "x.npz", images, vectors.astype(object))
    if case == "bool_embeddings":
        return _npz(tmp_path / "x.npz", images, vectors > 0)
    if case == "nan_text":
        return _npz(tmp_path / "x.npz", images, vectors, text_embeddings=np.full((2, 6), np.nan))
    if case == "string_text":
        return _npz(tmp_path / "x.npz", images, vectors, text_embeddings=rng.normal(size=(2, 6)).astype(str))
    if case == "zero_text":
        return _npz(tmp_path / "x.npz", images, vectors, text_embeddings=np.zeros((2, 6)))
    if case == "truncated_npz":
        whole = _npz(tmp_path / "whole.npz", images, vectors).read_bytes()
        (tmp_path / "x.npz").write_bytes(whole[: len(whole) // 2])
        return tmp_path / "x.npz"
    if case == "npy":
        np.save(tmp_path / "x.npy", vectors)
        return tmp_path / "x.npy"
    if case == "not_numpy":
        (tmp_path / "x.npz").write_text("paths,embeddings\n")
        return tmp_path / "x.npz"
    raise AssertionError(case)


CASES = {
    "float64_beyond_float32": "beyond float32",
    "nan": "NaN, inf",
    "zero_row": "zero or near-zero rows",
    "near_zero_row": "zero or near-zero rows",
    "string_embeddings": "must hold numbers",
    "bool_embeddings": "must hold numbers",
    "object_embeddings": "not plain arrays",
    "nan_text": "`text_embeddings` has 2 rows with NaN",
    "string_text": "`text_embeddings` must hold numbers",
    "zero_text": "`text_embeddings` has 2 zero",
    "truncated_npz": "cannot read",
    "npy": "a single array (a .npy file)",
    "not_numpy": "cannot read",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_import_is_refused_and_changes_nothing(cli, fresh, tmp_path, case):
    file = _hostile(case, fresh, tmp_path)
    before = _snapshot(cli.project_dir)
    result = cli("embed", "--from", str(file), "--name", "second")
    assert result.exit_code == 4, result.output
    assert CASES[case] in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    assert _snapshot(cli.project_dir) == before


def test_from_without_name_takes_the_file_stem_and_becomes_current_at_the_end(cli, fresh, tmp_path):
    file = _npz(tmp_path / "clip_vectors.npz", fresh, np.random.default_rng(2).normal(size=(4, 6)) * 1e30)
    result = cli("embed", "--from", str(file), "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["spec_name"] == "clip_vectors" and payload["embedded"] == 4
    specs = _snapshot(cli.project_dir)[2]
    assert [(name, bool(current)) for _, name, current in specs] == [("first", False), ("clip_vectors", True)]
    from alkit.project import open_project
    from alkit.storage.vectors import load_vectors

    _, vectors = load_vectors(open_project(cli.project_dir), payload["spec_id"])
    assert np.isfinite(vectors).all()  # 1e30 overflows float32 norms unless normalised in float64
    np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float64), axis=1), 1, atol=2e-3)


@pytest.mark.parametrize("flag", [("--model", "ViT-B-32"), ("--pretrained", "none"), ("--engine", "ray"), ("--batch-size", "3")])
def test_model_flags_with_from_are_a_usage_error(cli, fresh, tmp_path, flag):
    file = _npz(tmp_path / "v.npz", fresh, np.random.default_rng(2).normal(size=(4, 6)))
    result = cli("embed", "--from", str(file), *flag)
    assert result.exit_code == 2 and "do not apply with --from" in result.output


def test_json_output_never_contains_nan():
    from alkit_cli.render import _dumps

    text = _dumps({"a": float("nan"), "b": [np.float32("inf"), 1.5], "c": np.array([np.nan, 2.0]), "d": np.float64(3)})
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": [None, 2.0], "d": 3.0}
    assert "NaN" not in text and "Infinity" not in text
