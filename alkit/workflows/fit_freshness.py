"""Is the newest posterior already what `alkit fit` would build? (No new labels, same settings.)

The labels a fit consumes are summarised by a fingerprint of the resolved (image, class) pairs
of the embedded non-test images; it is stored with the fit settings, so a later fit with the same
fingerprint, kind and settings has nothing new to learn and reports the existing version.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from alkit.project import Project
from alkit.storage.labels import resolved_labels
from alkit.storage.schema import TRAINING_SPLITS
from alkit.storage.vectors import embedded_image_ids


def labels_fingerprint(project: Project, spec_id: int) -> str:
    """blake2b of the sorted resolved labels of the images a fit trains on."""
    candidate_ids = embedded_image_ids(project, spec_id, splits=TRAINING_SPLITS).tolist()
    with project.engine.connect() as connection:
        resolved = resolved_labels(connection, candidate_ids) if candidate_ids else {}
    digest = hashlib.blake2b(digest_size=16)
    for image_id, class_id in sorted(resolved.items()):
        digest.update(f"{image_id}:{class_id};".encode())
    return digest.hexdigest()


def is_up_to_date(previous, kind: str, fit_settings: dict, posterior_dir: Path | None) -> bool:
    """True when `previous` (a posteriors row or None) was fitted with this kind and exactly these
    settings (fingerprint included) and its files are still there."""
    if previous is None or previous.kind != kind:
        return False
    stored = (previous.settings or {}).get("fit")
    return stored == fit_settings and posterior_dir is not None and posterior_dir.is_dir()
