"""Untrusted inputs: pickles planted where posteriors and indexes live, fuzzed CSV label
imports and alkit.toml values of the wrong type; and concurrency: `embed` while `select` runs.

(`pairs.csv` is not implemented in alkit, so there is nothing of it to fuzz.)
"""

from __future__ import annotations

import json
import pickle
import string
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faults_support import check_invariants, init_pool, run_alkit, snapshot, start_alkit, write_npz, write_tiny_pngs


class _Planted:
    """Unpickling this writes a marker file: proof that a loader ran pickle."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_to(path, marker) -> None:
    planted = _Planted()
    planted.marker = str(marker)
    path.write_bytes(pickle.dumps({"P": planted}))


# -- no pickle on load ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from alkit.workflows.fit import fit_posterior

    base = tmp_path_factory.mktemp("pickle")
    images = write_tiny_pngs(base / "imgs", 20)
    project = init_pool(base / "project", images, write_npz(base / "e.npz", images, dim=8))
    return project, fit_posterior(project)


@pytest.mark.parametrize("planted", ["pickle", "npy_pickle", "garbage"])
def test_posterior_arrays_file_holding_a_pickle_is_refused(fitted, tmp_path, planted, cli):
    import shutil

    from alkit.errors import IntegrityError
    from alkit.posterior.io import ARRAYS_FILE, load_posterior

    project, fit = fitted
    directory = tmp_path / "posterior"
    shutil.copytree(fit.path, directory)
    marker = tmp_path / "pwned"
    arrays = directory / ARRAYS_FILE
    if planted == "pickle":
        _pickle_to(arrays, marker)
    elif planted == "npy_pickle":
        with arrays.open("wb") as handle:
            np.save(handle, np.array([_Planted()], dtype=object), allow_pickle=True)
    else:
        arrays.write_bytes(b"\x00" * 7)
    with pytest.raises(IntegrityError, match="cannot read posterior arrays"):
        load_posterior(directory)
    assert not marker.exists()


def test_selection_on_a_tampered_posterior_is_a_clear_exit_7(fitted, tmp_path):
    """Through the CLI: the newest posterior's arrays replaced by a pickle -> exit 7, one line."""
    from alkit.posterior.io import ARRAYS_FILE

    project, fit = fitted
    marker = tmp_path / "pwned"
    arrays = Path(fit.path) / ARRAYS_FILE
    saved = arrays.read_bytes()
    try:
        _pickle_to(arrays, marker)
        result = run_alkit(project.directory, "select", "--budget", "3")
    finally:
        arrays.write_bytes(saved)
    assert result.returncode == 7, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "run `alkit fit`" in result.stderr
    assert not marker.exists()


def test_index_ids_file_holding_a_pickle_is_refused(tmp_path):
    from alkit.retrieval.errors import IndexCorruptError
    from alkit.retrieval.index import IndexSettings, build_index
    from alkit.retrieval.manifest import IDS_FILE
    from alkit.retrieval.store import load_index, save_index

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, 31, dtype=np.int64)
    save_index(tmp_path, build_index(ids, vectors, IndexSettings(kind="flat")), "spec")
    marker = tmp_path / "pwned"
    with (tmp_path / IDS_FILE).open("wb") as handle:
        planted = _Planted()
        planted.marker = str(marker)
        np.save(handle, np.array([planted], dtype=object), allow_pickle=True)
    with pytest.raises(IndexCorruptError):
        load_index(tmp_path, "spec", ids)
    assert not marker.exists()


# -- fuzzed CSV label imports ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def label_project(tmp_path_factory):
    base = tmp_path_factory.mktemp("csvfuzz")
    images = write_tiny_pngs(base / "imgs", 4)
    project = init_pool(base / "project", images)
    return project, images, base


_cells = st.one_of(
    st.text(alphabet=string.printable + "éß\u00a0\u2028\ufeff\"',;\t", max_size=12),
    st.sampled_from(["cat", "dog", "bird", "zebra", "", " cat ", '"cat"', "img_0000.png"]),
)


@st.composite
def csv_bytes(draw):
    """Random rows over a random (or missing) header, in a random encoding, or raw bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    header = draw(st.sampled_from([["path", "label"], ["label", "path"], ["path"], ["file", "label"], [], ["path", "label", "extra"]]))
    rows = draw(st.lists(st.lists(_cells, min_size=0, max_size=4), max_size=6))
    delimiter = draw(st.sampled_from([",", ";", "\t"]))
    quote = draw(st.sampled_from(['"', "'"]))
    lines = [delimiter.join(header)] if header else []
    for row in rows:
        lines.append(delimiter.join(quote + c.replace(quote, quote * 2) + quote if draw(st.booleans()) else c for c in row))
    text = draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines)
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    return text.encode(encoding, errors="replace")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=csv_bytes())
def test_fuzzed_label_csv_is_an_input_error_or_a_correct_import(label_project, data):
    import sqlalchemy as sa

    from alkit.errors import InputError
    from alkit.storage.schema import labels
    from alkit.workflows.labels import import_labels

    project, images, base = label_project
    path = base / "fuzz.csv"
    path.write_bytes(data)
    with project.engine.begin() as connection:
        connection.execute(labels.delete())
    try:
        result = import_labels(project, path)
    except InputError as error:
        assert "\n" not in str(error) and str(error)
        with project.engine.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(labels)).scalar() == 0
        return
    stored = snapshot(project.directory)["labels"]
    assert result.imported == len(stored) <= len(images)
    skipped = len(result.unknown_paths) + sum(result.unknown_classes.values())
    assert result.imported + result.unchanged + result.updated <= result.rows - skipped  # an image named twice counts once
    assert {c for _, c, *_ in stored} <= {"cat", "dog", "bird"}


def test_label_csv_variants_import_correctly(label_project):
    from alkit.workflows.labels import import_labels

    project, images, base = label_project
    path = base / "ok.csv"
    path.write_bytes(("\ufeffpath,label\r\n" + f'"{images[0]}",cat\r\nimgs/{images[1].name}, dog \r\n{images[2]},zebra\r\n').encode("utf-8"))
    result = import_labels(project, path)
    assert result.imported == 2 and result.unknown_classes == {"zebra": 1}
    got = sorted((p.rsplit("/", 1)[1], c) for p, c, *_ in snapshot(project.directory)["labels"])
    assert got[:2] == [("img_0000.png", "cat"), ("img_0001.png", "dog")]


# -- alkit.toml with wrong types ---------------------------------------------------------------------

_TOML_VALUES = st.one_of(
    st.integers(-5, 5).map(str), st.just("true"), st.just("1.5"), st.just('"text"'), st.just("[1, 2]"),
    st.just("{ a = 1 }"), st.just("1979-05-27"), st.just('"""multi\nline"""'),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["db", "batch_size", "workers", "seed", "max_pixels", "ls_project_id", "template", "ls_url"]), value=_TOML_VALUES)
def test_alkit_toml_with_any_value_type_is_a_config_error_or_works(tmp_path_factory, name, value):
    from alkit.errors import ConfigError
    from alkit.settings import SPECS_BY_NAME, load_settings

    directory = tmp_path_factory.mktemp("toml")
    (directory / "alkit.toml").write_text(f"{name} = {value}\n")
    spec = SPECS_BY_NAME[name]
    try:
        loaded = load_settings(directory, {}, {})
    except ConfigError as error:
        assert name in str(error) and "\n" not in str(error)
        return
    assert isinstance(getattr(loaded, name), spec.type)


@pytest.mark.parametrize("line", ["batch_size = \"lots\"", "seed = [1]", "workers = true", "ls_project_id = 1.5", "template = 3"])
def test_cli_exit_3_on_a_wrong_type_in_alkit_toml(cli, line):
    assert cli("init").exit_code == 0
    path = cli.project_dir / "alkit.toml"
    path.write_text(path.read_text() + line + "\n")
    result = cli("status", "--json")
    assert result.exit_code == 3, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and line.split(" ")[0] in result.stderr


# -- concurrency: embed while select runs ---------------------------------------------------------


def test_embed_while_select_runs_both_complete_consistently(tmp_path):
    """`select` (slowed in the middle) on 40 embedded images while `embed --from` adds and
    embeds 40 more: both exit 0, the round holds B distinct images that were embedded
    before it began, every image has its vector once, statuses agree."""
    base_images = write_tiny_pngs(tmp_path / "imgs", 40)
    new_images = write_tiny_pngs(tmp_path / "more", 40, start_seed=100)
    directory = tmp_path / "project"
    init_pool(directory, base_images, write_npz(tmp_path / "a.npz", base_images, dim=8))
    both = write_npz(tmp_path / "b.npz", base_images + new_images, dim=8)
    ready = tmp_path / "ready"
    selecting = start_alkit(
        directory, "select", "--budget", "5", "--json", ready_file=ready,
        patches={"slow": {"alkit.workflows.select:_batch": 0.5}},
    )
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    embedding = run_alkit(directory, "embed", "--from", str(both), "--name", "imported", "--json")
    out, err = selecting.communicate(timeout=120)
    assert selecting.returncode == 0, err
    assert embedding.returncode == 0, embedding.stderr
    assert json.loads(embedding.stdout)["embedded"] == 40
    snap = snapshot(directory)
    assert len(snap["embeddings"]) == 80 and len(set(snap["embeddings"])) == 80
    (status, chosen), = snap["rounds"]
    assert status == "open" and len(chosen) == 5 == len(set(chosen))
    assert set(chosen) <= {str(p.resolve()) for p in base_images}
    statuses = {path: s for path, _, s, *_ in snap["images"]}
    assert all(statuses[p] == "selected" for p in chosen)
    assert sum(s == "embedded" for s in statuses.values()) == 75
    assert check_invariants(directory) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_pairs_csv_fuzz_never_crashes(tmp_path, data):
    """Any bytes as pairs.csv: parsed rows or an InputError naming the fix, never a traceback."""
    from alkit.errors import InputError
    from alkit.workflows.fit_bayesvlm import read_pairs_csv

    path = tmp_path / "pairs.csv"
    path.write_bytes(data)
    try:
        rows = read_pairs_csv(path)
    except InputError as error:
        assert str(error)
    else:
        assert rows and all(image and caption for image, caption in rows)
