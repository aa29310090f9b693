"""Class-prompt text features and projections of an embedding spec, as later stages read them.

Text features depend on the class list, so they are stored per class-list key and computed
once, on first need, by the spec's encoder (imported specs only have what the import file
brought). Projections (P, Q, logit scale) depend on the model only: written at embed time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from alkit.arrays import l2_normalise
from alkit.embedding.spec import OPEN_CLIP_KIND
from alkit.project import Project
from alkit.storage.classes import class_rows
from alkit.storage.spec_files import (
    PROJECTIONS_LAYOUT,
    TextFeatures,
    load_tensors_if_present,
    projections_path,
    save_tensors,
    text_features_path,
)
from alkit.storage.specs import current_spec, resolve_spec, spec_directory, spec_row
from alkit.workflows.classes import classes_key
from alkit.workflows.embed_model import encoder_for_spec


class ClassList(NamedTuple):
    """The project's classes in order, their prompts, and the key of both (None: no classes)."""

    names: list[str]
    prompts: list[str]
    key: str | None


def current_class_list(project: Project) -> ClassList:
    with project.engine.connect() as connection:
        rows = class_rows(connection)
    names, prompts = [r.name for r in rows], [r.prompt for r in rows]
    return ClassList(names, prompts, classes_key(names, prompts) if names else None)


def text_features_file(project: Project, spec_key: str, classes_key_: str) -> Path:
    """Where the text features of spec `spec_key` for class list `classes_key_` are stored."""
    return text_features_path(spec_directory(project, spec_key), classes_key_)


def save_text_features(path: Path, text_emb: np.ndarray, psi: np.ndarray | None, classes_key_: str) -> None:
    """Store class-prompt embeddings (K, D), made unit-norm here, and psi (K, d_t) if any."""
    tensors = {"text_emb": l2_normalise(np.asarray(text_emb, dtype=np.float32))}
    if psi is not None:
        tensors["psi"] = psi
    save_tensors(path, tensors, metadata={"classes_key": classes_key_})


def ensure_text_features(project: Project, spec: Any, encoder=None) -> Path | None:
    """The text-feature file of `spec` (row or id) for the current class list, computed if missing.

    None when there are no classes, or the spec was imported without text embeddings for
    this class list.
    """
    row = resolve_spec(project.engine, spec)
    classes = current_class_list(project)
    if classes.key is None:
        return None
    path = text_features_file(project, row.key, classes.key)
    if path.is_file():
        return path
    if row.kind != OPEN_CLIP_KIND:
        return None
    encoder = encoder or encoder_for_spec(project, row)
    emb, psi = encoder.encode_texts(classes.prompts)  # (K, D), (K, d_t) | None
    save_text_features(path, emb.numpy(), None if psi is None else psi.numpy(), classes.key)
    return path


def save_projections(directory: Path, encoder) -> None:
    """The encoder's projection tensors (P, Q, biases, logit scale), written once per spec."""
    path = projections_path(directory)
    if not path.is_file():
        tensors = {k: v.numpy() for k, v in encoder.projection_tensors().items()}
        save_tensors(path, tensors, metadata={"layout": PROJECTIONS_LAYOUT})


def load_projections(project: Project, spec_id: int) -> dict[str, np.ndarray]:
    """All projection tensors of a spec: P, Q and, where the model has them, P_bias, Q_bias, logit_bias."""
    with project.engine.connect() as connection:
        row = spec_row(connection, spec_id)
    return load_tensors_if_present(projections_path(spec_directory(project, row.key)))


def load_text_features(project: Project, spec_id: int | None = None) -> TextFeatures:
    """(text_emb (K, D), psi (K, d_t), P (d, D), Q (d_t, D), logit_scale) for the current class
    list; recomputed (once, then cached by class-list key) when the class list changed.
    Fields the spec cannot provide are None (imported specs: only text_emb, if given)."""
    with project.engine.connect() as connection:
        row = current_spec(connection) if spec_id is None else spec_row(connection, spec_id)
    path = ensure_text_features(project, row)
    text = load_tensors_if_present(path) if path is not None else {}
    projections = load_tensors_if_present(projections_path(spec_directory(project, row.key)))
    scale = projections.get("logit_scale")
    return TextFeatures(
        text.get("text_emb"), text.get("psi"), projections.get("P"), projections.get("Q"), None if scale is None else float(scale)
    )
