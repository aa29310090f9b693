"""Hostile files not covered by `test_ingest.py`: each is registered and embedded correctly
(with the tiny random open_clip model), or rejected with a reason; a file that vanishes
between `add` and `embed` is rejected at embed time and the rest proceeds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from alkit.embedding.tiny import TINY_VIT, register_config
from faults_support import check_invariants, hostile_images, write_tiny_pngs


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    from alkit.project import init_project, open_project
    from alkit.storage.vectors import load_vectors
    from alkit.workflows.embed import embed_images
    from alkit.workflows.ingest import add_images
    from alkit.storage.schema import images

    register_config()
    base = tmp_path_factory.mktemp("hostile")
    files = hostile_images(base / "files")
    vanishing = write_tiny_pngs(base / "files" / "gone", 2, start_seed=500, size=(40, 30))
    directory = base / "project"
    init_project(directory)
    project = open_project(directory, {"model": TINY_VIT, "pretrained": "none", "workers": 0, "batch_size": 4})
    added = add_images(project, [str(base / "files")], show_progress=False)
    for path in vanishing:
        path.unlink()
    result = embed_images(project, show_progress=False)
    with project.engine.connect() as connection:
        rows = {r.path: r for r in connection.execute(sa.select(images))}
    ids, vectors = load_vectors(project, result.spec_id)
    by_id = dict(zip(ids.tolist(), vectors))
    return files, vanishing, added, result, rows, {path: by_id.get(row.id) for path, row in rows.items()}, directory


@pytest.mark.parametrize("kind", ["cmyk_jpeg", "png16", "palette_png", "alpha_png", "exif_rotated_jpeg", "long_path"])
def test_hostile_file_is_registered_and_embedded(embedded, kind):
    files, _, added, _, rows, vectors, _ = embedded
    path = str(files[kind].resolve())
    assert not [r for r in added.rejected if r["path"] == path]
    assert rows[path].status == "embedded", rows[path].error_reason
    vector = vectors[path]
    assert vector is not None and np.isfinite(vector).all() and abs(np.linalg.norm(vector) - 1) < 5e-3


def test_very_long_path_is_stored_whole(embedded):
    files, _, _, _, rows, _, _ = embedded
    path = str(files["long_path"].resolve())
    assert len(path) > 1000 and path in rows


def _cos(a, b) -> float:
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def test_16_bit_png_embeds_like_its_8_bit_version(embedded):
    """PIL's plain convert("RGB") clips 16-bit values to white; alkit scales them."""
    files, _, _, _, _, vectors, _ = embedded
    a, b = vectors[str(files["png16"].resolve())], vectors[str(files["png16_as_8bit"].resolve())]
    assert _cos(a, b) > 0.999


def test_exif_rotated_jpeg_embeds_like_the_upright_photo(embedded):
    """The annotator sees the EXIF-rotated photo upright; the model must see it the same way."""
    files, _, _, _, rows, vectors, _ = embedded
    rotated, upright = str(files["exif_rotated_jpeg"].resolve()), str(files["upright_twin"].resolve())
    assert _cos(vectors[rotated], vectors[upright]) > 0.99
    assert rows[rotated].width == 56 and rows[rotated].height == 40  # stored size: the file's own


def test_files_that_vanish_before_embed_are_rejected_and_the_rest_proceeds(embedded):
    _, vanishing, added, result, rows, vectors, directory = embedded
    gone = {str(p.resolve()) for p in vanishing}
    assert {r["path"] for r in result.rejected} == gone
    for path in gone:
        assert rows[path].status == "rejected" and "No such file" in rows[path].error_reason
        assert vectors[path] is None
    embedded_rows = [r for r in rows.values() if r.status == "embedded"]
    assert len(embedded_rows) == added.added - len(gone) and result.embedded == len(embedded_rows)
    assert check_invariants(directory) == []


def test_path_longer_than_path_max_is_rejected_with_a_reason(project, tmp_path):
    """A file nested deeper than PATH_MAX (4096) can be created relative to a directory fd but
    not opened by its full path: `add` records it as rejected with a reason and goes on."""
    from PIL import Image

    from alkit.workflows.ingest import add_images

    root = tmp_path / "deep"
    root.mkdir()
    write_tiny_pngs(root, 1)
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(18):
            name = "p" * 250
            os.mkdir(name, dir_fd=fd)
            new = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
        os.fchdir(fd)
        Image.new("RGB", (8, 8), (10, 20, 30)).save("deep.png")
    finally:
        os.close(fd)
        os.chdir(Path(__file__).parent)
    result = add_images(project, [str(root)], show_progress=False)
    assert result.added == 1
    assert len(result.rejected) == 1 and "too long" in result.rejected[0]["reason"]
