"""Shared fixtures: tiny real projects, tiny real images, a CliRunner bound to the app."""

from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub download attempt takes ~46 s to fail here
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner


def write_png(path: Path, seed: int, size: tuple[int, int] = (16, 12), mode: str = "RGB") -> Path:
    """A small random image; different seeds give different content (and hashes)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture
def make_images(tmp_path):
    """`make_images(n, folder="images", start_seed=0)` writes n distinct PNGs and returns their paths."""

    def make(count: int, folder: str = "images", start_seed: int = 0, size=(16, 12)) -> list[Path]:
        return [write_png(tmp_path / folder / f"img_{start_seed + i:04d}.png", start_seed + i, size) for i in range(count)]

    return make


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def cli(runner, tmp_path, monkeypatch):
    """`cli("add", "dir", "--json")` runs alkit in a fresh project dir; returns the Result."""
    from alkit_cli.main import app

    project_dir = tmp_path / "project"
    monkeypatch.delenv("ALKIT_PROJECT", raising=False)
    for name in list(os.environ):
        if name.startswith("ALKIT_") and name != "ALKIT_LS_TOKEN":
            monkeypatch.delenv(name, raising=False)

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(app, ["--project", str(project_dir), *map(str, args)], input=input, catch_exceptions=False)

    invoke.project_dir = project_dir
    return invoke


@pytest.fixture
def project(tmp_path):
    """An initialised project (SQLite) opened through the library API."""
    from alkit.project import init_project, open_project

    directory = tmp_path / "lib_project"
    init_project(directory)
    return open_project(directory)


@dataclass
class ClusteredPool:
    """Images on disk with synthetic embeddings drawn around one centre per class, and the npz
    that `alkit embed --from` imports (class centres as the text embeddings)."""

    pool: list[Path]
    test: list[Path]
    names: list[str]
    class_index: np.ndarray  # (N,) class position of pool images, then test images
    centres: np.ndarray  # (K, D)
    vectors: np.ndarray  # (N, D)
    npz: Path
    text_embeddings: bool = True

    @property
    def truth(self) -> dict[str, str]:
        """path -> class name."""
        return {str(path): self.names[k] for path, k in zip(self.pool + self.test, self.class_index)}

    def write_npz(self) -> Path:
        """(Re)write the npz from `vectors` (tests may edit them first)."""
        extra = {"text_embeddings": self.centres.astype(np.float32)} if self.text_embeddings else {}
        np.savez(self.npz, paths=np.array([str(path) for path in self.pool + self.test]),
                 embeddings=self.vectors.astype(np.float32), **extra)
        return self.npz

    def write_labels(self, paths: list[Path], csv: Path) -> Path:
        """A labels CSV giving each of `paths` its true class."""
        truth = self.truth
        csv.write_text("path,label\n" + "".join(f"{path},{truth[str(path)]}\n" for path in paths))
        return csv


@pytest.fixture
def clustered_pool(make_images, tmp_path):
    """`clustered_pool(count, dim, names, noise, seed, test_count, unit_centres)`: image i (pool, then test)
    belongs to class i % K and its embedding is centre + noise * N(0, I)."""

    def make(count: int = 60, dim: int = 16, names=("a", "b", "c"), noise: float = 0.8, seed: int = 0,
             test_count: int = 0, size=(16, 12), text_embeddings: bool = True,
             unit_centres: bool = True) -> ClusteredPool:
        rng = np.random.default_rng(seed)
        centres = rng.normal(size=(len(names), dim))  # (K, D)
        if unit_centres:
            centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        pool = make_images(count, size=size)
        test = make_images(test_count, folder="test", start_seed=500, size=size) if test_count else []
        class_index = np.arange(count + test_count) % len(names)  # (N,)
        vectors = centres[class_index] + noise * rng.normal(size=(count + test_count, dim))  # (N, D)
        data = ClusteredPool(pool, test, list(names), class_index, centres, vectors, tmp_path / "clustered.npz",
                             text_embeddings)
        data.write_npz()
        return data

    return make


@pytest.fixture
def imported_project(cli, clustered_pool, tmp_path):
    """`imported_project(labelled_pool=6, label_test=True, edit=None, spec_name=..., **clustered_pool options)`: init, add
    the pool (and the test split), set the classes, import the embeddings (after `edit(data)` may change
    them) and the true labels of the first `labelled_pool` pool images (and of the test split)."""

    def make(labelled_pool: int = 0, label_test: bool = False, edit=None, spec_name: str = "synthetic",
             **options) -> ClusteredPool:
        data = clustered_pool(**options)
        if edit is not None:
            edit(data)
            data.write_npz()
        labelled = data.pool[:labelled_pool] + (data.test if label_test else [])
        steps = [("init",), ("add", data.pool[0].parent)]
        if data.test:
            steps.append(("add", data.test[0].parent, "--split", "test"))
        steps += [("classes", "set", *data.names), ("embed", "--from", data.npz, "--name", spec_name)]
        if labelled:
            steps.append(("labels", "import", data.write_labels(labelled, tmp_path / "labels.csv")))
        for step in steps:
            result = cli(*step)
            assert result.exit_code == 0, (step, result.output)
        return data

    return make


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm, float32 (what FAISS and the scorers expect)."""
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def one_faiss_thread():
    """The CI box has 2 shared cores; OpenMP spinning on both slows tiny searches a lot."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def ls():
    """The session's real Label Studio server (tests/lsserver.py); fails loudly if not installed."""
    from lsserver import shared_server

    try:
        return shared_server()
    except RuntimeError as error:
        pytest.fail(str(error))


@pytest.fixture
def token_env(ls, monkeypatch):
    monkeypatch.setenv("ALKIT_LS_TOKEN", ls.token)
    return ls.token


@pytest.fixture(scope="module")
def pg_url():
    """A throwaway PostgreSQL server for one test module (tests/pgserver.py)."""
    from pgserver import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture
def one_torch_thread():
    """Tiny matmuls: a second torch thread only adds contention on the shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local_ray():
    """A local 2-CPU Ray cluster for one test module (started once, shut down after it)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
