"""Which model a project embeds with, and the encoder behind a stored spec.

`choose_model` turns the settings (`--model`, `--pretrained`, alkit.toml) and the project's
recorded model into a `PlannedSpec`, never silently falling back to another model;
`encoder_for_spec` reloads the open_clip model that made a spec's vectors (for text queries,
new images and BayesVLM's projections).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alkit.embedding.spec import (
    OPEN_CLIP_KIND,
    PlannedSpec,
    WeightsSource,
    check_architecture,
    checkpoint_problem,
    encoder_precision,
    for_precision,
    plan_spec,
    planned_from_record,
)
from alkit.errors import InputError, IntegrityError, StateError
from alkit.project import Project
from alkit.storage.specs import current_spec_or_none, resolve_spec

RANDOM_WEIGHTS = "none"  # `--pretrained none`: seeded random weights, only when asked for by name
NO_MODEL_HINT = (
    "pass --model ARCH --pretrained TAG|CHECKPOINT (e.g. --model ViT-B-32 --pretrained laion2b_s34b_b79k); "
    "the project then remembers it, so later a bare `alkit embed` reuses it (--pretrained none: random weights, tests only)"
)


def choose_model(project: Project) -> PlannedSpec:
    """The (architecture, weights) `alkit embed` uses, never a silent fallback:

    - `pretrained` given (flag, ALKIT_PRETRAINED or alkit.toml): that tag or checkpoint with
      `model` (without `model`: the project's architecture, if it has one); the word `none`
      means seeded random weights, the only way to get them;
    - otherwise the project's recorded model (its current open_clip spec, the last one
      embedded), as long as a given `model` names the same architecture; a checkpoint must
      still hash the same;
    - otherwise an InputError naming --model/--pretrained.
    """
    settings = project.settings
    sources = getattr(settings, "sources", {}) or {}
    pretrained = settings.pretrained
    model_given = sources.get("model", "default") != "default"
    if model_given:
        check_architecture(settings.model)  # an unknown name is reported as such first
    with project.engine.connect() as connection:
        recorded = current_spec_or_none(connection)
    if pretrained:
        architecture = settings.model
        if not model_given and recorded is not None and recorded.kind == OPEN_CLIP_KIND:
            architecture = recorded.spec["architecture"]  # new weights for the project's architecture
        random = pretrained.strip().lower() == RANDOM_WEIGHTS
        return for_precision(plan_spec(architecture, None if random else pretrained, settings.seed), settings.precision)
    if recorded is None or recorded.kind != OPEN_CLIP_KIND:
        given = f"--model {settings.model} without --pretrained" if model_given else "no model given"
        what = (
            "the project has no embedding model yet" if recorded is None
            else f"the project's current embedding space {recorded.name!r} was imported from a file (it has no model)"
        )
        raise InputError(f"{given}, and {what}; {NO_MODEL_HINT}")
    architecture = recorded.spec["architecture"]
    if model_given and settings.model != architecture:
        raise InputError(
            f"--model {settings.model} differs from the project's model {recorded.name!r} and no --pretrained was given; "
            f"{NO_MODEL_HINT}"
        )
    check_architecture(architecture)  # registers bundled configs in this process
    weights = WeightsSource.from_json(recorded.spec["weights"])
    path = Path(str(weights.value))
    problem = checkpoint_problem(weights)
    if problem == "missing":
        raise IntegrityError(
            f"checkpoint {path} of the project's model {recorded.name!r} is missing; restore it or pass --pretrained"
        )
    if problem == "changed":
        raise IntegrityError(
            f"checkpoint {path} changed since the project's model {recorded.name!r} was recorded (hash differs); "
            "restore it, or pass --pretrained PATH to embed with the new weights as a new spec"
        )
    return for_precision(planned_from_record(architecture, weights, recorded.spec, recorded.key), settings.precision)


def encoder_for_spec(project: Project, spec: Any):
    """The open_clip encoder that made a spec's vectors (spec row or id); device/precision
    from the project settings. Imported specs have none: StateError."""
    from alkit.embedding.model import load_open_clip

    row = resolve_spec(project.engine, spec)
    if row.kind != OPEN_CLIP_KIND:
        raise StateError(
            f"embedding spec {row.name!r} was imported from a file and has no encoder, so it cannot embed text "
            "queries or new images; run alkit embed --model ARCH to use an open_clip spec"
        )
    weights = WeightsSource.from_json(row.spec["weights"])
    path = Path(str(weights.value))
    problem = checkpoint_problem(weights)
    if problem == "missing":
        raise IntegrityError(f"checkpoint {path} of embedding spec {row.name!r} is missing; restore the file")
    if problem == "changed":
        raise IntegrityError(
            f"checkpoint {path} changed since spec {row.name!r} was embedded (hash differs); restore it or re-embed"
        )
    settings = project.settings
    return load_open_clip(row.spec["architecture"], weights, settings.device, encoder_precision(row.spec, settings.precision))
