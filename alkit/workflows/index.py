"""`alkit index build`, `alkit similar`, `alkit dedup`: the FAISS index of the current spec,
and the nearest pool candidates `alkit select --query/--like/--target` scores.

The index lives in `.alkit/index/<spec key>/` with a manifest; every use goes through
`ensure_index`, which loads it only when it covers exactly the spec's embedded images and
otherwise extends or rebuilds it (and says which), so a stale index is never used silently.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alkit.arrays import l2_normalise
from alkit.errors import InputError, StateError
from alkit.jsonable import JsonResult
from alkit.project import Project
from alkit.retrieval.settings import DEFAULT_NEIGHBOURS, DUPLICATE_THRESHOLD, IndexKind, IndexSettings


@dataclass
class IndexReport(JsonResult):
    action: str  # loaded | extended | rebuilt | built
    reason: str
    kind: str
    rows: int
    directory: str
    seconds: float


def index_directory(project: Project, spec) -> Path:
    return project.artefacts_dir / "index" / spec.key


def _stored_or_default_settings(directory: Path):
    from alkit.retrieval.store import read_manifest

    if (directory / "manifest.json").is_file():
        try:
            return IndexSettings.from_dict(read_manifest(directory).requested_settings)
        except Exception:  # an unreadable manifest is rebuilt by ensure_index
            return IndexSettings()
    return IndexSettings()


def ensure_project_index(project: Project, spec=None, settings=None):
    """(EnsuredIndex, spec): the index of `spec` (default: current) covering all its vectors."""
    from alkit.retrieval.store import ensure_index
    from alkit.storage.specs import current_spec
    from alkit.storage.vectors import embedded_image_ids, load_vectors_in_order

    if spec is None:
        with project.engine.connect() as connection:
            spec = current_spec(connection)
    directory = index_directory(project, spec)
    ids = embedded_image_ids(project, spec.id)
    if len(ids) == 0:
        raise StateError("no embeddings to index; run `alkit embed` first")

    def load(wanted: np.ndarray) -> np.ndarray:
        return load_vectors_in_order(project, spec.id, wanted)

    settings = settings or _stored_or_default_settings(directory)
    from alkit.progress import stage

    with stage(f"index: making the FAISS index cover {len(ids):,} embedded images (loaded, extended or rebuilt)"):
        ensured = ensure_index(directory, spec.key, ids, load, settings, expected_dim=spec.dim)
    ensured.index.reranker = load  # PQ indexes re-rank their short list with the stored float16 vectors
    return ensured, spec


def build_index(project: Project, kind: str | IndexKind = IndexKind.AUTO, nlist: int | None = None,
                pq_m: int | None = None, nprobe: int = IndexSettings.nprobe) -> IndexReport:
    """Build, extend or rebuild the current spec's index so it covers every embedded image."""
    started = time.perf_counter()
    settings = IndexSettings(kind=kind, nlist=nlist, pq_m=pq_m, nprobe=nprobe)
    ensured, spec = ensure_project_index(project, settings=settings)
    return IndexReport(
        action=ensured.action, reason=ensured.reason, kind=ensured.index.kind.value, rows=ensured.index.ntotal,
        directory=str(index_directory(project, spec)), seconds=round(time.perf_counter() - started, 3),
    )


def search_index(project: Project, spec, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores (Q, k), ids (Q, k)) from the spec's index (built or refreshed as needed)."""
    from alkit.retrieval.index import search

    ensured, _ = ensure_project_index(project, spec)
    k = min(k, ensured.index.ntotal)
    return search(ensured.index, np.asarray(queries, dtype=np.float32), k)


def similar(project: Project, image: str | None = None, text: str | None = None, image_id: int | None = None,
            k: int = DEFAULT_NEIGHBOURS) -> list[dict]:
    """Nearest pool neighbours of one query (an image file, a text, or a stored image id)."""
    from alkit.storage.images import paths_by_id
    from alkit.storage.specs import current_spec
    from alkit.storage.vectors import load_vectors
    from alkit.workflows.query_vectors import image_vectors, text_vectors

    if sum(x is not None for x in (image, text, image_id)) != 1:
        raise InputError("give exactly one of IMAGE, --text or --id")
    if k < 1:
        raise InputError(f"-k must be >= 1, got {k}")
    with project.engine.connect() as connection:
        spec = current_spec(connection)
    if image_id is not None:
        ids, vectors = load_vectors(project, spec.id, [image_id])
        if len(ids) == 0:
            raise InputError(f"image id {image_id} has no embedding in spec {spec.name!r}; check `alkit status`")
        query = l2_normalise(vectors)
    elif text is not None:
        query = text_vectors(project, spec, [text])
    else:
        query = image_vectors(project, spec, [image])
    scores, ids = search_index(project, spec, query, k)
    found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
    with project.engine.connect() as connection:
        paths = paths_by_id(connection, [i for i, _ in found])
    return [{"rank": rank, "id": i, "score": s, "path": paths.get(i)} for rank, (i, s) in enumerate(found, start=1)]


def near_duplicates(project: Project, threshold: float = DUPLICATE_THRESHOLD) -> list[dict]:
    """Clusters of images whose embeddings have cosine >= threshold (exact search): the one
    near-duplicate rule, `alkit.acquisition.batch.is_near_duplicate`."""
    from alkit.retrieval.dedup import near_duplicate_clusters
    from alkit.storage.images import paths_by_id
    from alkit.storage.specs import current_spec
    from alkit.storage.vectors import load_vectors

    with project.engine.connect() as connection:
        spec = current_spec(connection)
    ids, vectors = load_vectors(project, spec.id)
    clusters = near_duplicate_clusters(l2_normalise(vectors), ids, threshold)
    members = sorted({i for cluster in clusters for i in cluster})
    with project.engine.connect() as connection:
        paths = paths_by_id(connection, members) if members else {}
    return [{"cluster": n, "ids": cluster, "paths": [paths[i] for i in cluster]} for n, cluster in enumerate(clusters, start=1)]


def nearest_candidates(project: Project, spec, queries: np.ndarray, allowed_ids: np.ndarray, wanted: int) -> np.ndarray:
    """Up to `wanted` allowed pool ids nearest to the queries (each query contributes in turn),
    from the project's FAISS index; sorted ascending."""
    from alkit.retrieval.neighbours import candidates_near

    ensured, _ = ensure_project_index(project, spec)
    excluded = np.setdiff1d(ensured.index.ids, np.asarray(allowed_ids, dtype=np.int64))
    return np.sort(candidates_near(ensured.index, queries, wanted, exclude_ids=excluded))
