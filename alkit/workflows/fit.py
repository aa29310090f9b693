"""`alkit fit`: build a new posterior version from the pool's labels (and pairs/factors).

The posterior is always rebuilt from its base (zero-shot curvature from the pool against the
class prompts, or loaded factors) plus ALL current labels: refitting a refitted posterior
would count earlier labels' curvature twice. The previous version is recorded as parent and
is never modified (`refit` is a pure function).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from alkit.errors import InputError, StateError
from alkit.project import Project
from alkit.registry import Registry
from alkit.storage.db import utcnow
from alkit.storage.pool import class_rows, resolved_labels
from alkit.storage.schema import Split, images, posteriors
from alkit.storage.vectors import embedded_image_ids, load_vectors, load_vectors_in_order

# What each posterior consumes per image: the projection input phi, or the embedding.
POSTERIOR_FEATURES: Registry[str] = Registry("posterior")
POSTERIOR_FEATURES.register("bayesvlm", "phi", "Laplace over CLIP's image projection (open_clip embeddings), n chosen by the labels' evidence, Monte Carlo predictive")
POSTERIOR_FEATURES.register("laplace_head", "embedding", "Laplace over a linear head on the embeddings (any imported embeddings)")
POSTERIOR_FEATURES.register(
    "probvlm", "embedding",
    "ProbVLM adapters (needs class-prompt text embeddings); measured on the demo: its scores find zero-shot errors "
    "no better than zero-shot entropy (AUROC 0.62-0.76 vs 0.76), so it is never a default",
)
POSTERIOR_FEATURES.register("ensemble", "embedding", "Ensemble of 8 anchored linear heads on the embeddings (--hyper: members differ in weight decay)")
POSTERIOR_FEATURES.register("mimo", "embedding", "MIMO: 3 subnetworks in one small MLP on the embeddings, one forward pass (needs 2+ labels)")
POSTERIOR_FEATURES.register("hetsngp", "embedding", "HetSNGP: spectral-norm MLP, random-feature GP output (Laplace) + heteroscedastic noise (needs 2+ labels)")

DEFAULT_PSEUDO_DATA = 10.0  # BayesVLM's n with no labels (the reference uses 4-10)
# With labels and no --pseudo-data, n is chosen from this grid by the labels' Laplace evidence.
PSEUDO_DATA_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)
DEFAULT_CURVATURE_IMAGES = 20_000  # pool images sampled for the zero-shot curvature
IMPORTED_LOGIT_SCALE = 100.0  # CLIP's s, used for imported embeddings with text embeddings


@dataclass(frozen=True)
class FitSettings:
    posterior: str | None = None  # None: bayesvlm for open_clip specs, laplace_head otherwise
    pseudo_data: float | None = None  # None: chosen by evidence (PSEUDO_DATA_GRID), DEFAULT_PSEUDO_DATA without labels
    candidate_batch_size: int | None = None
    curvature_images: int = DEFAULT_CURVATURE_IMAGES
    factors_dir: str | None = None
    pairs_csv: str | None = None
    seed: int = 0
    epochs: int = 30  # probvlm: training epochs (early stopping may end sooner)
    learning_rate: float = 3e-3  # probvlm: Adam step size (science.md says 1e-4; 3e-3 moved the adapters in 30 epochs, 1e-4 barely did)
    hyper: bool = False  # ensemble: members also differ in weight decay (hyperparameter ensemble)
    labels_fingerprint: str | None = None  # set by fit_posterior: which labels the fit saw (fit_freshness)


@dataclass(frozen=True)
class FitResult:
    version: int
    kind: str
    labels_used: int
    curvature_source: str
    prior_precision: float | None  # None for posteriors without a Laplace prior (probvlm)
    path: str
    seconds: float
    up_to_date: bool = False  # True: no new labels and the same settings; `version` is the existing one

    def as_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PoolContext:
    """The current spec, class list and text features that every posterior is checked against."""

    spec: sa.Row
    class_names: list[str]
    classes_key: str
    text: object  # alkit.storage.vectors.TextFeatures


def jsonable(value):
    """A JSON-safe copy (numpy scalars and arrays become plain numbers and lists)."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def pool_context(project: Project) -> PoolContext:
    from alkit.storage.specs import current_spec
    from alkit.workflows.classes import classes_key
    from alkit.workflows.text_features import load_text_features

    with project.engine.connect() as connection:
        spec = current_spec(connection)
        rows = class_rows(connection)
    if not rows:
        raise StateError("no classes defined; run `alkit classes set NAME...` first")
    names = [row.name for row in rows]
    key = classes_key(names, [row.prompt for row in rows])
    return PoolContext(spec, names, key, load_text_features(project, spec.id))


def default_posterior_kind(context: PoolContext) -> str:
    """The Laplace head, for open_clip and imported embeddings alike (zero-shot from the class
    prompts as its prior mean when there are prompts). Measured in the active-learning suite on
    the demo's CLIP features: BayesVLM's refit stayed at its zero-shot accuracy (0.708 -> 0.704
    after 200 labels; the labels' evidence keeps it at the zero-shot posterior) while the Laplace
    head reached 0.746 (LogisticRegression: 0.75). BayesVLM stays available (--posterior bayesvlm)."""
    return "laplace_head"


def labelled_training_set(project: Project, context: PoolContext, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image ids (L,), features (L, F), class indices (L,)) of labelled non-test images."""

    candidate_ids = embedded_image_ids(project, context.spec.id, images.c.split != Split.TEST.value).tolist()
    with project.engine.connect() as connection:
        resolved = resolved_labels(connection, candidate_ids) if candidate_ids else {}
        position = {row.id: index for index, row in enumerate(class_rows(connection))}
    ids, features = load_vectors(project, context.spec.id, sorted(resolved), kind=POSTERIOR_FEATURES.get(kind))
    labels = np.array([position[resolved[int(i)]] for i in ids], dtype=np.int64)
    return ids, features, labels


def latest_posterior_row(project: Project, spec_id: int, classes_key: str | None = None):
    query = sa.select(posteriors).where(posteriors.c.spec_id == spec_id)
    if classes_key is not None:
        query = query.where(posteriors.c.classes_key == classes_key)
    with project.engine.connect() as connection:
        return connection.execute(query.order_by(posteriors.c.version.desc()).limit(1)).first()


def load_current_posterior(project: Project, context: PoolContext):
    """(row, posterior) of the newest posterior for this spec and class list, or (None, None)."""
    from alkit.posterior.io import load_posterior

    row = latest_posterior_row(project, context.spec.id, context.classes_key)
    if row is None:
        return None, None
    return row, load_posterior(project.resolve_stored(row.path), context.spec.key, context.class_names)


def _refit_choosing_pseudo_data(base, features, labels, settings: FitSettings, parent_version):
    from alkit.posterior.bayesvlm import refit_choosing_pseudo_data

    candidates = [settings.pseudo_data] if settings.pseudo_data is not None else list(PSEUDO_DATA_GRID)
    return refit_choosing_pseudo_data(base, features, labels, candidates, seed=settings.seed, parent_version=parent_version)


def _bayesvlm_base(project: Project, context: PoolContext, settings: FitSettings, exclude: set[int] = frozenset()):
    from alkit.posterior.bayesvlm import BayesVLMPosterior

    text = context.text
    if text.P is None or text.text_emb is None or not context.spec.phi_dim:
        raise StateError(
            f"embedding spec {context.spec.name!r} has no projection layer or class-prompt features, so BayesVLM "
            "cannot be built; use --posterior laplace_head or embed with an open_clip model"
        )
    projection = np.asarray(text.P, dtype=np.float64).T  # open_clip's (d, D) -> BayesVLM's (D, d)
    scale = math.exp(text.logit_scale)
    if settings.factors_dir:
        return _bayesvlm_from_factors(Path(settings.factors_dir), projection, context, scale, settings)
    if settings.pairs_csv:
        return _bayesvlm_from_pairs(project, Path(settings.pairs_csv), projection, context, scale, settings)
    # Labelled images enter the refit's curvature with their labels; leaving them in the
    # zero-shot curvature as well would count them twice.
    pool_ids = [i for i in embedded_image_ids(project, context.spec.id, images.c.split == Split.POOL.value).tolist() if i not in exclude]
    if not pool_ids:
        raise StateError("no embedded pool images to estimate the curvature from; run `alkit add` and `alkit embed`")
    rng = np.random.default_rng(settings.seed)
    if len(pool_ids) > settings.curvature_images:
        pool_ids = rng.choice(np.asarray(pool_ids), settings.curvature_images, replace=False).tolist()
    _, phi = load_vectors(project, context.spec.id, pool_ids, kind="phi")
    return BayesVLMPosterior.from_pool_curvature(
        phi, projection, text.text_emb, scale, settings.pseudo_data or DEFAULT_PSEUDO_DATA, settings.candidate_batch_size,
        classes=context.class_names, embedding_spec_key=context.spec.key,
    )


def _bayesvlm_from_factors(directory: Path, projection, context: PoolContext, scale: float, settings: FitSettings):
    from alkit.posterior.bayesvlm import BayesVLMPosterior

    arrays = {}
    for name in ("A_img", "B_img", "A_txt", "B_txt", "n", "lam"):
        path = directory / f"{name}.npy"
        if path.is_file():
            arrays[name] = np.load(path, allow_pickle=False)
    missing = {"A_img", "B_img"} - set(arrays)
    if missing:
        raise InputError(f"{directory} lacks {', '.join(sorted(missing))}.npy; factors are A_img, B_img[, A_txt, B_txt, n, lam] as .npy")
    pseudo = float(arrays["n"]) if "n" in arrays else (settings.pseudo_data or DEFAULT_PSEUDO_DATA)
    lam = float(arrays["lam"]) if "lam" in arrays else None
    return BayesVLMPosterior.from_factors(
        arrays["A_img"], arrays["B_img"], projection, context.text.text_emb, scale, pseudo, lam,
        classes=context.class_names, embedding_spec_key=context.spec.key,
        curvature_source=f"factors from {directory}",
    )


def read_pairs_csv(path: Path) -> list[tuple[str, str]]:
    """`image_path,caption` rows of a pairs file (header required)."""
    import csv

    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"image_path", "caption"} <= {f.strip() for f in reader.fieldnames}:
                raise InputError(f"{path}: needs a header with columns image_path,caption; found {reader.fieldnames}")
            rows = [((row.get("image_path") or "").strip(), (row.get("caption") or "").strip()) for row in reader]
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror}; check the path") from None
    except (csv.Error, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a readable UTF-8 CSV ({error})") from None
    empty = [n for n, (image, caption) in enumerate(rows, start=2) if not image or not caption]
    if empty:
        raise InputError(f"{path}:{empty[0]}: empty image_path or caption ({len(empty)} such rows); fix or delete them")
    if not rows:
        raise InputError(f"{path} has no pairs; add image_path,caption rows")
    return rows


def _bayesvlm_from_pairs(project: Project, path: Path, projection, context: PoolContext, scale: float, settings: FitSettings):
    """Both projections' KFAC factors from user image-caption pairs (InfoNCE both ways)."""
    import os

    from alkit.posterior.bayesvlm import BayesVLMPosterior
    from alkit.posterior.kfac import kfac_factors
    from alkit.workflows.embed_model import encoder_for_spec

    rows = read_pairs_csv(path)
    with project.engine.connect() as connection:
        known = dict(connection.execute(sa.select(images.c.path, images.c.id)).all())
    image_ids, missing = [], []
    for raw, _ in rows:
        candidates = [os.path.realpath(path.parent / raw), os.path.realpath(raw)]
        found = next((known[c] for c in candidates if c in known), None)
        (missing if found is None else image_ids).append(raw if found is None else found)
    if missing:
        raise InputError(
            f"{len(missing)} of {len(rows)} pair images are not in the pool (first: {missing[0]}); "
            "`alkit add` and `alkit embed` them first"
        )
    phi = load_vectors_in_order(project, context.spec.id, image_ids, kind="phi")  # pair order; images may repeat
    image_emb = load_vectors_in_order(project, context.spec.id, image_ids)
    encoder = encoder_for_spec(project, context.spec)
    captions = [caption for _, caption in rows]
    text_emb, psi = [], []
    for start in range(0, len(captions), 256):
        emb, features = encoder.encode_texts(captions[start : start + 256])
        text_emb.append(emb.numpy())
        psi.append(None if features is None else features.numpy())
    caption_emb = np.concatenate(text_emb)
    caption_emb /= np.linalg.norm(caption_emb, axis=1, keepdims=True)
    image_emb = image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True)
    batch = settings.candidate_batch_size
    image_side = kfac_factors(phi, projection, caption_emb, scale, batch, "infonce")  # softmax over captions
    text = context.text
    text_kwargs = {}
    if psi[0] is not None and text.Q is not None and text.psi is not None:
        q_projection = np.asarray(text.Q, dtype=np.float64).T  # (d_t, D) -> (D, d_t)
        text_side = kfac_factors(np.concatenate(psi), q_projection, image_emb, scale, batch, "infonce")  # softmax over images
        text_kwargs = dict(A_txt=text_side.A, B_txt=text_side.B, text_features=text.psi, text_projection=q_projection)
    return BayesVLMPosterior.from_factors(
        image_side.A, image_side.B, projection, text.text_emb, scale, settings.pseudo_data or DEFAULT_PSEUDO_DATA,
        num_inputs=len(rows), classes=context.class_names, embedding_spec_key=context.spec.key,
        curvature_source=f"{len(rows)} image-caption pairs from {path.name}"
        + (" (image and text projections)" if text_kwargs else " (image projection)"),
        candidate_batch_size=batch, **text_kwargs,
    )


def _probvlm(project: Project, context: PoolContext, features, labels, settings: FitSettings, parent_version):
    """ProbVLM adapters on the non-test images (at most `curvature_images` of them, sampled) + labelled pairs."""
    from alkit.posterior.probvlm import ProbVLMSettings, fit_probvlm

    if settings.pairs_csv:
        raise InputError(
            f"--pairs {settings.pairs_csv}: probvlm does not train on captions (it pairs labelled images with their "
            "class prompt); drop --pairs or use --posterior bayesvlm"
        )
    text = context.text
    if text.text_emb is None:
        raise StateError(
            "probvlm turns embeddings into class probabilities against class-prompt text embeddings and this spec has "
            "none; import embeddings with text_embeddings, embed with an open_clip model, or use --posterior laplace_head"
        )
    vectors = _unlabelled_sample(project, context, settings)
    scale = math.exp(text.logit_scale) if text.logit_scale is not None else IMPORTED_LOGIT_SCALE
    return fit_probvlm(
        vectors, features, labels, class_text=text.text_emb, logit_scale=scale,
        settings=ProbVLMSettings(epochs=settings.epochs, learning_rate=settings.learning_rate), seed=settings.seed,
        classes=context.class_names, embedding_spec_key=context.spec.key, parent_version=parent_version,
    )


def fit_posterior(project: Project, settings: FitSettings = FitSettings(), force: bool = False) -> FitResult:
    """Build, save and record a new posterior version; returns what was fitted. With no new
    labels and unchanged settings the newest version is returned as `up_to_date` (no new
    version) unless `force`."""
    started = time.perf_counter()
    context = pool_context(project)
    # --factors and --pairs are curvature sources of BayesVLM, so they imply it.
    kind = settings.posterior or ("bayesvlm" if settings.factors_dir or settings.pairs_csv else default_posterior_kind(context))
    POSTERIOR_FEATURES.get(kind)
    previous = latest_posterior_row(project, context.spec.id, context.classes_key)
    parent_version = None if previous is None else previous.version
    from dataclasses import replace

    from alkit.workflows.fit_freshness import is_up_to_date, labels_fingerprint

    settings = replace(settings, labels_fingerprint=labels_fingerprint(project, context.spec.id))
    previous_dir = None if previous is None else project.resolve_stored(previous.path)
    if not force and is_up_to_date(previous, kind, jsonable(settings.__dict__), previous_dir):
        return FitResult(
            version=int(previous.version), kind=kind, labels_used=int(previous.labels_used),
            curvature_source=previous.curvature_source, prior_precision=None, path=str(previous_dir),
            seconds=round(time.perf_counter() - started, 3), up_to_date=True,
        )
    from alkit.progress import note as progress_note

    progress_note(f"fit: {kind} posterior ({'refit forced' if force and previous is not None else 'labels or settings changed' if previous is not None else 'no posterior yet'})")
    ids, features, labels = labelled_training_set(project, context, kind)

    if kind == "bayesvlm":
        base = _bayesvlm_base(project, context, settings, exclude=set(int(i) for i in ids))
        posterior = base if not len(labels) else _refit_choosing_pseudo_data(base, features, labels, settings, parent_version)
    elif kind == "probvlm":
        posterior = _probvlm(project, context, features, labels, settings, parent_version)
    elif kind in ("ensemble", "mimo", "hetsngp"):
        from alkit.workflows.fit_trained_heads import fit_trained_head

        posterior = fit_trained_head(project, context, kind, features, labels, settings, parent_version)
    else:
        from alkit.posterior.laplace_head import fit_laplace_head

        text = context.text
        if text.text_emb is None and len(labels) < 2:
            raise StateError(
                f"the Laplace head needs class-prompt text embeddings or labels; {len(labels)} labels and no text "
                "embeddings: import labels (`alkit labels import`) or embeddings with text_embeddings"
            )
        scale = math.exp(text.logit_scale) if text.logit_scale is not None else IMPORTED_LOGIT_SCALE
        posterior = fit_laplace_head(
            features, labels, len(context.class_names), class_text=text.text_emb, logit_scale=scale,
            classes=context.class_names, embedding_spec_key=context.spec.key, parent_version=parent_version,
            unlabelled=_unlabelled_sample(project, context, settings),
        )
    return _record(project, context, posterior, kind, parent_version, settings, started)


def _unlabelled_sample(project: Project, context: PoolContext, settings: FitSettings) -> np.ndarray:
    """Embeddings of up to `curvature_images` non-test images (seeded sample): the Laplace
    head's input centring and ProbVLM's training set come from them, never from the test split."""
    image_ids = embedded_image_ids(project, context.spec.id, images.c.split != Split.TEST.value)
    if len(image_ids) > settings.curvature_images:
        image_ids = np.random.default_rng(settings.seed).choice(image_ids, settings.curvature_images, replace=False)
    return load_vectors(project, context.spec.id, np.asarray(image_ids).tolist(), kind="embedding")[1]


def _record(project, context: PoolContext, posterior, kind: str, parent_version, settings: FitSettings, started: float) -> FitResult:
    directory = project.artefact_path("posteriors", f"{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}", "x").parent
    posterior.save(directory)  # files first: a row never points at a missing posterior
    provenance = posterior.provenance
    with project.engine.begin() as connection:
        version = connection.execute(
            posteriors.insert()
            .values(
                kind=kind,
                spec_id=context.spec.id,
                classes_key=context.classes_key,
                parent_version=parent_version,
                path=project.stored_path(directory),  # relative: a moved or copied project keeps its own files
                curvature_source=provenance.curvature_source,
                labels_used=provenance.labels_used,
                settings=jsonable({**dict(provenance.settings), "fit": settings.__dict__}),
                created_at=utcnow(),
            )
            .returning(posteriors.c.version)
        ).scalar_one()
    return FitResult(
        version=int(version),
        kind=kind,
        labels_used=int(provenance.labels_used),
        curvature_source=provenance.curvature_source,
        prior_precision=None if posterior.prior_precision is None else float(posterior.prior_precision),
        path=str(directory),
        seconds=round(time.perf_counter() - started, 3),
    )
