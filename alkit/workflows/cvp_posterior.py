"""The CVP weight posterior and calibration of a `--cvp-blocks k` spec: fitted once, when the
spec is first embedded, and stored beside its projections (`cvp.safetensors`).

Fitting follows `alkit.cvp`: a diagonal Laplace of the zero-shot contrastive likelihood over the
last k vision blocks, from a seeded sample of at most CURVATURE_IMAGES unlabelled pool images
with the class prompts as candidates (prior precision per role by evidence); then the
calibration (block scales, then an output scale) by NLL on at most CALIBRATION_IMAGES labelled
non-test images, none of them in the curvature sample. Labels are required (at least
MIN_CALIBRATION_LABELS): uncalibrated, the evidence leaves most weights at their prior variance
and the demo's calibration shrank them 20-100x (benchmarks/README.md, CVP section).

Why once per spec: the stored variances depend on the posterior and its calibration, so a
refit halfway through would mix two calibrations in one spec's shards. The file is written
(atomically) before the first shard; a resumed run reads it back. After more labelling rounds,
`alkit embed --cvp-blocks k --recalibrate` refits the calibration (the Laplace posterior and
its curvature images are kept) and re-embeds the spec: its rows are deleted before the new
file is written, so a kill at any point leaves one calibration per spec. The output scale is recorded
but not applied to the stored variances (`phi_var` is what the calibrated blocks give; BayesVLM's
refit on the labels scales its own posterior).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from alkit.arrays import l2_normalise
from alkit.errors import InputError, StateError
from alkit.project import Project
from alkit.storage.classes import class_rows
from alkit.storage.images import paths_by_id, split_and_status, usable_ids_by_path
from alkit.storage.labels import resolved_labels
from alkit.storage.schema import TRAINING_SPLITS, Split
from alkit.storage.shards import drop_spec_rows
from alkit.storage.spec_files import CVP_FILE, load_tensors_with_metadata, save_tensors

CURVATURE_IMAGES = 64  # unlabelled pool images in the Laplace curvature
CALIBRATION_IMAGES = 256  # labelled images the calibration sees at most
MIN_CALIBRATION_LABELS = 10
METADATA_KEY = "cvp"


def cvp_path(directory: Path) -> Path:
    return directory / CVP_FILE


def save_cvp_posterior(path: Path, posterior, calibration, record: dict) -> None:
    """Variances as `block<i>.<role>` tensors; prior precisions, calibration and `record` as JSON metadata."""
    from alkit.cvp.weights import ROLES

    tensors = {f"block{i}.{role}": getattr(block, role).detach().cpu().numpy()
               for i, block in enumerate(posterior.blocks) for role in ROLES}
    info = {**record, "num_blocks": posterior.num_blocks, "prior_precision": list(posterior.prior_precision),
            "pseudo_data": posterior.pseudo_data, "calibration": calibration.as_json()}
    save_tensors(path, tensors, metadata={METADATA_KEY: json.dumps(info, sort_keys=True)})


def load_cvp_posterior(path: Path, device: str = "cpu"):
    """(WeightPosterior, Calibration, record) saved by `save_cvp_posterior`, the variances on `device`."""
    import torch

    from alkit.cvp.calibration import Calibration
    from alkit.cvp.weights import ROLES, BlockVariances, WeightPosterior

    tensors, metadata = load_tensors_with_metadata(path)
    info = json.loads(metadata[METADATA_KEY])
    blocks = tuple(BlockVariances(**{role: torch.from_numpy(np.array(tensors[f"block{i}.{role}"])).to(device) for role in ROLES})
                   for i in range(int(info["num_blocks"])))
    posterior = WeightPosterior(blocks, tuple(dict(p) for p in info["prior_precision"]), float(info["pseudo_data"]))
    cal = info["calibration"]
    calibration = Calibration(tuple(cal["block_scales"]), float(cal["output_scale"]), float(cal["nll_before"]),
                              float(cal["nll_after"]), int(cal["num_images"]))
    return posterior, calibration, info


def _images_for_fit(project: Project, seed: int, held_out: set[int]) -> tuple[list[int], list[int], np.ndarray]:
    """(curvature ids: unlabelled pool sample, calibration ids (none of `held_out`), their class indices)."""
    with project.engine.connect() as connection:
        usable = np.array(sorted(usable_ids_by_path(connection).values()), dtype=np.int64)
        labels = resolved_labels(connection)
        position = {row.id: index for index, row in enumerate(class_rows(connection))}
        usable_set = set(usable.tolist())
        labelled = np.array(sorted(i for i in labels if i in usable_set and i not in held_out), dtype=np.int64)
        rng = np.random.default_rng(seed)
        labelled = rng.permutation(labelled)[: 4 * CALIBRATION_IMAGES]
        rows = split_and_status(connection, labelled.tolist()) if len(labelled) else {}
        calibration = [int(i) for i in labelled if rows[int(i)].split in TRAINING_SPLITS][:CALIBRATION_IMAGES]
        unlabelled = rng.permutation(np.setdiff1d(usable, np.array(sorted(labels), dtype=np.int64)))[: 8 * CURVATURE_IMAGES]
        rows = split_and_status(connection, unlabelled.tolist()) if len(unlabelled) else {}
        curvature = [int(i) for i in unlabelled if rows[int(i)].split == Split.POOL][:CURVATURE_IMAGES]
    if len(calibration) < MIN_CALIBRATION_LABELS:
        raise InputError(
            f"--cvp-blocks needs at least {MIN_CALIBRATION_LABELS} labelled pool/target images to calibrate the "
            f"variances (found {len(calibration)}); embed without it first, label a round, then run alkit embed --cvp-blocks K"
        )
    if not curvature:
        raise StateError("--cvp-blocks needs unlabelled pool images for the curvature; run alkit add first")
    return curvature, calibration, np.array([position[labels[i]] for i in calibration], dtype=np.int64)


def load_pixels(project: Project, encoder, image_ids: list[int]):
    """Preprocessed pixels `(n, 3, H, W)` of these images (undecodable ones are left out) and their ids."""
    import torch

    from alkit.embedding.decode import open_rgb_image

    with project.engine.connect() as connection:
        paths = paths_by_id(connection, image_ids)
    kept, pixels = [], []
    for image_id in image_ids:
        try:
            image = open_rgb_image(paths[image_id], encoder.image_size, project.settings.max_pixels)
        except (OSError, ValueError):
            continue
        kept.append(image_id)
        pixels.append(encoder.preprocess(image))
    return torch.stack(pixels).to(encoder.device), kept


def ensure_cvp_posterior(project: Project, directory: Path, encoder, blocks: int, prompts: list[str],
                         recalibrate: bool = False, spec_id: int | None = None):
    """The spec's stored (posterior, calibration), fitted (class `prompts` as the candidates) and
    saved first if the spec has none yet. Call before the spec row is written: a fit that fails
    (no classes, too few labels) leaves the project as it was.

    `recalibrate`: keep the stored posterior, refit the calibration on the current labels (never
    on the curvature images) and forget the spec's vectors (`spec_id`'s rows, before the new
    file is written), so that the run re-embeds every image and no spec mixes two calibrations."""
    path = cvp_path(directory)
    stored = load_cvp_posterior(path, encoder.device) if path.is_file() else None
    if stored is not None and stored[0].num_blocks != blocks:
        raise StateError(f"{path} holds a posterior over {stored[0].num_blocks} blocks, not {blocks}; it is damaged")
    if stored is not None and not recalibrate:
        return stored[0], stored[1]
    if not prompts:
        raise InputError("--cvp-blocks needs the class list (its prompts are the likelihood's candidates); run alkit classes set first")
    import torch

    from alkit.cvp.blocks import prefix_tokens
    from alkit.cvp.calibration import fit_calibration
    from alkit.cvp.laplace import fit_diagonal_laplace

    held_out = set(stored[2].get("curvature_ids", [])) if stored is not None else set()
    curvature_ids, calibration_ids, labels = _images_for_fit(project, project.settings.seed, held_out)
    visual = encoder.model.visual
    emb, _ = encoder.encode_texts(list(prompts))
    text = torch.as_tensor(l2_normalise(emb.numpy())).to(encoder.device)
    scale = float(encoder.model.logit_scale.detach().exp())
    if stored is None:
        curvature_pixels, curvature_ids = load_pixels(project, encoder, curvature_ids)
        with torch.no_grad():
            curvature_tokens = prefix_tokens(visual, curvature_pixels, blocks)
        posterior = fit_diagonal_laplace(visual, curvature_tokens, text, scale, blocks)
    else:
        posterior, curvature_ids = stored[0], stored[2]["curvature_ids"]
    calibration_pixels, kept = load_pixels(project, encoder, calibration_ids)
    labels = labels[[calibration_ids.index(i) for i in kept]]
    with torch.no_grad():
        tokens = prefix_tokens(visual, calibration_pixels, blocks)
    calibration = fit_calibration(visual, tokens, labels, posterior, text, scale)
    record = {"curvature_ids": [int(i) for i in curvature_ids], "seed": project.settings.seed, "num_classes": len(prompts)}
    if stored is not None and spec_id is not None:
        with project.engine.begin() as connection:
            drop_spec_rows(connection, spec_id)
    save_cvp_posterior(path, posterior, calibration, record)
    return posterior, calibration
