"""`alkit fit --posterior bayesvlm`: the zero-shot base (pool curvature, `--factors` or `--pairs`)
and the refit on the labels.

Projection layout: the spec stores open_clip's `visual.proj` as `TextFeatures.P` `(d, D)`
(g = phi @ P); `alkit.posterior.bayesvlm` works with its transpose, P `(D, d)` (g = P phi), as
the BayesVLM paper writes it. `open_clip_to_bayesvlm` is the one place that converts.

On a spec embedded with `alkit embed --cvp-blocks k` the posterior also uses phi's stored CVP
variance (`with_phi_variance`): curvature and refit stay on phi's means (as without CVP), and
the predictive, its moments and its draws read [phi, a phi_var] (feature kind `phi+phi_var`),
a chosen by cross-validated NLL on the labels (`choose_phi_variance_scale`) unless
`--phi-variance-scale` fixes it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from alkit.errors import InputError, StateError
from alkit.posterior.base import FeatureKind
from alkit.project import Project
from alkit.storage.images import ids_by_path
from alkit.storage.schema import Split
from alkit.storage.vectors import embedded_image_ids, load_vectors, load_vectors_in_order
from alkit.workflows.current_posterior import PosteriorContext
from alkit.workflows.fit_inputs import TrainingSet
from alkit.workflows.fit_settings import DEFAULT_PSEUDO_DATA, PSEUDO_DATA_GRID, FitSettings

FACTOR_FILES = ("A_img", "B_img", "A_txt", "B_txt", "n", "lam")  # `--factors DIR`: NAME.npy each
REQUIRED_FACTORS = {"A_img", "B_img"}
CAPTION_BATCH = 256  # captions per text-encoder call for `--pairs`
PHI_VARIANCE_SCALES = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)  # candidate multipliers of a CVP spec's phi variance
PHI_VARIANCE_FOLDS = 3


def open_clip_to_bayesvlm(stored: np.ndarray) -> np.ndarray:
    """open_clip's projection `(d, D)` -> BayesVLM's P `(D, d)`, float64."""
    return np.asarray(stored, dtype=np.float64).T


def build_bayesvlm(project: Project, context: PosteriorContext, training: TrainingSet, settings: FitSettings, parent_version):
    """The zero-shot base, refitted on the labels (n chosen by their evidence unless --pseudo-data);
    on a CVP spec, reading phi's variance times `phi_variance_scale` (chosen by the labels if None)."""
    from alkit.posterior.bayesvlm_refit import refit_choosing_pseudo_data

    base = bayesvlm_base(project, context, settings, exclude={int(i) for i in training.image_ids})
    fixed = settings.phi_variance_scale
    if not len(training.labels):
        return with_phi_variance(base, context.spec, 1.0 if fixed is None else fixed)
    candidates = [settings.pseudo_data] if settings.pseudo_data is not None else list(PSEUDO_DATA_GRID)
    fitted = refit_choosing_pseudo_data(
        base, training.features, training.labels, candidates, seed=settings.seed, parent_version=parent_version
    )
    if not cvp_blocks(context.spec):
        return fitted
    if fixed is not None:
        return with_phi_variance(fitted, context.spec, fixed)
    _, phi_var = load_vectors(project, context.spec.id, training.image_ids.tolist(), kind="phi_var")
    return with_phi_variance(fitted, context.spec, *choose_phi_variance_scale(base, training, phi_var, fitted.pseudo_data,
                                                                                settings.seed))


def cvp_blocks(spec) -> int:
    """k of a spec embedded with `alkit embed --cvp-blocks k` (0: no stored variances)."""
    return int((spec.spec or {}).get("cvp_blocks") or 0)


def choose_phi_variance_scale(base, training: TrainingSet, phi_var, pseudo_data: float, seed: int):
    """(a, {a: mean held-out NLL}): the multiplier of phi's stored CVP variance with the lowest
    PHI_VARIANCE_FOLDS-fold cross-validated NLL of the refitted posterior's predictive.

    CVP's calibration fits its own predictive (the zero-shot projection, fixed class prompts); in
    BayesVLM the projection is refitted and uncertain too, and phi's variance at full scale made
    the demo's predictions underconfident (benchmarks/README.md, CVP section), so the labels
    choose how much of it the composed predictive takes (0: none). The folds refit with the
    chosen n; with fewer than 2 labels per fold a = 1 (as calibrated)."""
    from dataclasses import replace

    from alkit.posterior.bayesvlm_refit import refit_choosing_pseudo_data

    labels, phi = training.labels, training.features
    if len(labels) < 2 * PHI_VARIANCE_FOLDS:
        return 1.0, {}
    folds = np.random.default_rng(seed).permutation(len(labels)) % PHI_VARIANCE_FOLDS
    totals = np.zeros(len(PHI_VARIANCE_SCALES))
    for fold in range(PHI_VARIANCE_FOLDS):
        train, held = folds != fold, folds == fold
        child = refit_choosing_pseudo_data(base, phi[train], labels[train], [pseudo_data], seed=seed)
        x = np.concatenate([phi[held], phi_var[held]], axis=1)
        for j, scale in enumerate(PHI_VARIANCE_SCALES):
            probs = replace(child, phi_variance_scale=scale).predict(x if scale > 0 else phi[held])
            totals[j] -= np.log(np.clip(probs[np.arange(int(held.sum())), labels[held]], 1e-12, None)).sum()
    best = int(np.argmin(totals))
    return float(PHI_VARIANCE_SCALES[best]), {f"{a:g}": float(t / len(labels)) for a, t in zip(PHI_VARIANCE_SCALES, totals)}


def with_phi_variance(posterior, spec, scale: float = 1.0, scores: dict | None = None):
    """The posterior reading phi's CVP variance times `scale` when `spec` (row) stores it, recorded
    in its provenance (with the cross-validated NLL per candidate scale, when chosen)."""
    from dataclasses import replace

    blocks = cvp_blocks(spec)
    if not blocks:
        return posterior
    provenance = posterior.provenance
    provenance = replace(
        provenance,
        curvature_source=f"{provenance.curvature_source}; phi variance from CVP over the last {blocks} blocks x {scale:g}",
        settings={**provenance.settings, "phi_variance": {"source": "cvp", "blocks": blocks, "scale": float(scale),
                                                          "cross_validated_nll": scores or {}}},
    )
    return replace(posterior, phi_variance_scale=float(scale), provenance=provenance)


def bayesvlm_base(project: Project, context: PosteriorContext, settings: FitSettings, exclude: set[int] = frozenset()):
    from alkit.posterior.bayesvlm import BayesVLMPosterior

    text = context.text
    if text.P is None or text.text_emb is None or not context.spec.phi_dim:
        raise StateError(
            f"embedding spec {context.spec.name!r} has no projection layer or class-prompt features, so BayesVLM "
            "cannot be built; use --posterior laplace_head or embed with an open_clip model"
        )
    projection = open_clip_to_bayesvlm(text.P)
    scale = math.exp(text.logit_scale)
    if settings.factors_dir:
        return _from_factors(Path(settings.factors_dir), projection, context, scale, settings)
    if settings.pairs_csv:
        return _from_pairs(project, Path(settings.pairs_csv), projection, context, scale, settings)
    # Labelled images enter the refit's curvature with their labels; leaving them in the
    # zero-shot curvature as well would count them twice.
    pool_ids = [i for i in embedded_image_ids(project, context.spec.id, splits=(Split.POOL,)).tolist() if i not in exclude]
    if not pool_ids:
        raise StateError("no embedded pool images to estimate the curvature from; run `alkit add` and `alkit embed`")
    rng = np.random.default_rng(settings.seed)
    if len(pool_ids) > settings.unlabelled_sample_size:
        pool_ids = rng.choice(np.asarray(pool_ids), settings.unlabelled_sample_size, replace=False).tolist()
    _, phi = load_vectors(project, context.spec.id, pool_ids, kind=FeatureKind.PHI)
    return BayesVLMPosterior.from_pool_curvature(
        phi, projection, text.text_emb, scale, settings.pseudo_data or DEFAULT_PSEUDO_DATA, settings.candidate_batch_size,
        classes=context.class_names, embedding_spec_key=context.spec.key,
    )


def _from_factors(directory: Path, projection, context: PosteriorContext, scale: float, settings: FitSettings):
    from alkit.posterior.bayesvlm import BayesVLMPosterior

    arrays = {}
    for name in FACTOR_FILES:
        path = directory / f"{name}.npy"
        if path.is_file():
            arrays[name] = np.load(path, allow_pickle=False)
    missing = REQUIRED_FACTORS - set(arrays)
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


def _pair_image_ids(project: Project, path: Path, rows: list[tuple[str, str]]) -> list[int]:
    """Pool image id of each pair's image (relative to the CSV or the working directory)."""
    candidates = {raw: (os.path.realpath(path.parent / raw), os.path.realpath(raw)) for raw, _ in rows}
    with project.engine.connect() as connection:
        known = ids_by_path(connection, [c for pair in candidates.values() for c in pair])
    image_ids, missing = [], []
    for raw, _ in rows:
        found = next((known[c] for c in candidates[raw] if c in known), None)
        (missing if found is None else image_ids).append(raw if found is None else found)
    if missing:
        raise InputError(
            f"{len(missing)} of {len(rows)} pair images are not in the pool (first: {missing[0]}); "
            "`alkit add` and `alkit embed` them first"
        )
    return image_ids


def _from_pairs(project: Project, path: Path, projection, context: PosteriorContext, scale: float, settings: FitSettings):
    """Both projections' KFAC factors from user image-caption pairs (InfoNCE both ways)."""
    from alkit.arrays import l2_normalise
    from alkit.posterior.bayesvlm import BayesVLMPosterior
    from alkit.posterior.kfac import kfac_factors
    from alkit.workflows.embed_model import encoder_for_spec

    rows = read_pairs_csv(path)
    image_ids = _pair_image_ids(project, path, rows)
    phi = load_vectors_in_order(project, context.spec.id, image_ids, kind=FeatureKind.PHI)  # pair order; images may repeat
    image_emb = l2_normalise(load_vectors_in_order(project, context.spec.id, image_ids))
    encoder = encoder_for_spec(project, context.spec)
    captions = [caption for _, caption in rows]
    text_emb, psi = [], []
    for start in range(0, len(captions), CAPTION_BATCH):
        emb, features = encoder.encode_texts(captions[start : start + CAPTION_BATCH])
        text_emb.append(emb.numpy())
        psi.append(None if features is None else features.numpy())
    caption_emb = l2_normalise(np.concatenate(text_emb))
    batch = settings.candidate_batch_size
    image_side = kfac_factors(phi, projection, caption_emb, scale, batch, "infonce")  # softmax over captions
    text = context.text
    text_kwargs = {}
    if psi[0] is not None and text.Q is not None and text.psi is not None:
        q_projection = open_clip_to_bayesvlm(text.Q)  # (d_t, D) -> (D, d_t)
        text_side = kfac_factors(np.concatenate(psi), q_projection, image_emb, scale, batch, "infonce")  # softmax over images
        text_kwargs = dict(A_txt=text_side.A, B_txt=text_side.B, text_features=text.psi, text_projection=q_projection)
    return BayesVLMPosterior.from_factors(
        image_side.A, image_side.B, projection, text.text_emb, scale, settings.pseudo_data or DEFAULT_PSEUDO_DATA,
        num_inputs=len(rows), classes=context.class_names, embedding_spec_key=context.spec.key,
        curvature_source=f"{len(rows)} image-caption pairs from {path.name}"
        + (" (image and text projections)" if text_kwargs else " (image projection)"),
        candidate_batch_size=batch, **text_kwargs,
    )
