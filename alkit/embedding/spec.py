"""What identifies a set of vectors: architecture + weights (+ model config), as data.

`resolve_weights` turns the `pretrained` setting into a `WeightsSource` without loading any
model: a hub tag, a local checkpoint file (identified by its content hash) or nothing
(seeded random weights, for tests only). `spec_key` hashes what makes two runs' vectors
comparable; embeddings of different keys never mix. fp16/bf16 forward passes are recorded, not
keyed (they agree with fp32 within the float16 storage); int8 dynamic quantisation changes the
function (cosine ~0.9998 to fp32, benchmarks/results_embed.md), so it is its own spec
(`for_precision`): int8 and fp32 vectors of one model never mix. Vectors embedded with CVP
over the last k blocks (`alkit embed --cvp-blocks k`, stored with their variances) are their
own spec too (`for_cvp`): with and without variance, or with different k, never mix.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from alkit.errors import InputError, UnknownNameError
from alkit.jsonable import JsonResult
from alkit.registry import Registry

OPEN_CLIP_KIND = "open_clip"
IMPORTED_KIND = "imported"
HASH_CHUNK = 1 << 22  # bytes read at a time while hashing a checkpoint (4 MiB)
# --precision values that change the model's function (not just its rounding) -> what is keyed
QUANTISED_PRECISIONS = {"int8": "int8-dynamic-linear"}


@dataclass(frozen=True)
class WeightsSource(JsonResult):
    """Where a model's weights come from; `identity` is what the spec key depends on."""

    kind: str  # "tag" | "checkpoint" | "random"
    value: str | None  # the tag, the absolute checkpoint path, or None
    checkpoint_hash: str | None = None
    random_seed: int | None = None

    @property
    def identity(self) -> str:
        """What the spec key depends on (a checkpoint's path may change, its hash may not)."""
        if self.kind == "tag":
            return f"tag:{self.value}"
        if self.kind == "checkpoint":
            return f"blake2b:{self.checkpoint_hash}"
        return f"random:seed={self.random_seed}"

    def display(self) -> str:
        if self.kind == "tag":
            return str(self.value)
        if self.kind == "checkpoint":
            return f"{Path(str(self.value)).name}@{str(self.checkpoint_hash)[:8]}"
        return f"RANDOM(seed={self.random_seed})"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "WeightsSource":
        return cls(data["kind"], data.get("value"), data.get("checkpoint_hash"), data.get("random_seed"))


def file_hash(path: str | os.PathLike) -> str:
    """blake2b-256 of a file, read in 4 MiB chunks (checkpoints can be gigabytes)."""
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _register_tiny_clip() -> None:
    from alkit.embedding.tiny import TINY_CLIP_CONFIG, TINY_CLIP_NAME, register_config

    register_config(TINY_CLIP_NAME, TINY_CLIP_CONFIG)


def _register_tiny_vit() -> None:
    from alkit.embedding.tiny import register_config

    register_config()


# Model configs that ship with alkit (as data, not weights): registered with open_clip on
# first use, in whichever process asks for them (`alkit embed --model alkit-tiny-clip`).
BUNDLED_CONFIGS: Registry[Callable[[], None]] = Registry("bundled open_clip config")
BUNDLED_CONFIGS.register("alkit-tiny-clip", _register_tiny_clip, "the demo's small CLIP trained on MNIST digits")
BUNDLED_CONFIGS.register("alkit-tiny-vit", _register_tiny_vit, "a tiny random ViT for tests and benchmarks")


def check_architecture(architecture: str) -> dict[str, Any]:
    """open_clip's config for `architecture` (`{}` for hub-hosted `hf-hub:` models)."""
    import open_clip

    if architecture.startswith(("hf-hub:", "local-dir:")):
        return {}
    if architecture in BUNDLED_CONFIGS and open_clip.get_model_config(architecture) is None:
        BUNDLED_CONFIGS.get(architecture)()
    config = open_clip.get_model_config(architecture)
    if config is None:
        known = open_clip.list_models()
        shown = ", ".join(known[:12])
        raise UnknownNameError(
            f"unknown open_clip architecture {architecture!r} ({len(known)} known, e.g. {shown}); "
            "pass --model NAME from open_clip.list_models()"
        )
    return config


def resolve_weights(architecture: str, pretrained: str | None, seed: int) -> WeightsSource:
    """Classify `pretrained` as hub tag, checkpoint file or absent (random weights)."""
    import open_clip

    if not pretrained:
        return WeightsSource("random", None, random_seed=seed)
    if architecture.startswith(("hf-hub:", "local-dir:")):
        return WeightsSource("tag", pretrained)
    tags = open_clip.list_pretrained_tags_by_model(architecture)
    if pretrained in tags:
        return WeightsSource("tag", pretrained)
    path = Path(pretrained).expanduser()
    if path.is_file():
        resolved = path.resolve()
        return WeightsSource("checkpoint", str(resolved), checkpoint_hash=file_hash(resolved))
    if path.exists():
        raise InputError(f"--pretrained {pretrained}: not a file; pass a checkpoint file or a tag")
    shown = ", ".join(tags) or "none"
    raise InputError(
        f"--pretrained {pretrained!r} is neither a checkpoint file nor a tag of {architecture} "
        f"(tags: {shown}); fix the path or the tag"
    )


def spec_key(kind: str, architecture: str, weights_identity: str, config: dict[str, Any]) -> str:
    """Identity of a vector space; open_clip version, device and precision are recorded, not keyed."""
    payload = json.dumps(
        {"kind": kind, "architecture": architecture, "weights": weights_identity, "config": config},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


def checkpoint_problem(weights: WeightsSource) -> str | None:
    """"missing" or "changed" (content hash differs) for a checkpoint that no longer matches
    what a spec recorded; None when it does, or the weights are not a checkpoint."""
    if weights.kind != "checkpoint":
        return None
    path = Path(str(weights.value))
    if not path.is_file():
        return "missing"
    return "changed" if file_hash(path) != weights.checkpoint_hash else None


@dataclass(frozen=True)
class PlannedSpec:
    """The vector space an embed run will write: architecture, weights, config and its key;
    for a quantised model (`for_precision`) also the quantisation and the float model's key."""

    architecture: str
    weights: WeightsSource
    config: dict
    key: str
    quantisation: str | None = None
    base_key: str | None = None
    cvp_blocks: int = 0  # > 0: CVP over the last k vision blocks (`for_cvp`)
    plain_key: str | None = None  # with cvp_blocks: the key of the same spec without CVP

    @property
    def name(self) -> str:
        base = spec_name(self.architecture, self.weights)
        base = base if self.quantisation is None else f"{base}+{self.quantisation}"
        return base if not self.cvp_blocks else f"{base}+cvp{self.cvp_blocks}"


def quantised_key(base_key: str, quantisation: str) -> str:
    """The spec key of the float model `base_key` run with `quantisation`."""
    return hashlib.blake2b(f"{base_key}|{quantisation}".encode(), digest_size=16).hexdigest()


def for_precision(planned: PlannedSpec, precision: str) -> PlannedSpec:
    """The spec an embed run at `precision` writes: the float spec for fp32/fp16/bf16, its own
    key and name for a quantised precision (int8)."""
    base = planned.base_key or planned.key
    quantisation = QUANTISED_PRECISIONS.get(precision)
    if quantisation is None:
        return replace(planned, key=base, quantisation=None, base_key=None)
    return replace(planned, key=quantised_key(base, quantisation), quantisation=quantisation, base_key=base)


def for_cvp(planned: PlannedSpec, blocks: int) -> PlannedSpec:
    """The spec an embed run with CVP over the last `blocks` blocks writes (0: `planned`, without
    CVP); call after `for_precision`."""
    plain = planned.plain_key or planned.key
    if blocks <= 0:
        return replace(planned, key=plain, cvp_blocks=0, plain_key=None)
    key = hashlib.blake2b(f"{plain}|cvp-blocks={int(blocks)}".encode(), digest_size=16).hexdigest()
    return replace(planned, key=key, cvp_blocks=int(blocks), plain_key=plain)


def planned_from_record(architecture: str, weights: WeightsSource, record: dict, key: str) -> PlannedSpec:
    """The PlannedSpec of a stored spec (its row's `spec` record and key), without CVP: a CVP
    spec gives its plain spec (`for_cvp` adds CVP back when asked for)."""
    return PlannedSpec(architecture, weights, record.get("config") or {}, record.get("cvp_plain_key") or key,
                       record.get("quantisation"), record.get("base_key"))


def encoder_precision(record: dict, requested: str) -> str:
    """The precision to load the encoder of a stored spec at: a quantised spec's own, else the
    requested one unless that is a quantised one (a float spec's vectors come from the float model)."""
    recorded = record.get("precision")
    if record.get("quantisation") and recorded in QUANTISED_PRECISIONS:
        return recorded
    return "fp32" if requested in QUANTISED_PRECISIONS else requested


def plan_spec(architecture: str, pretrained: str | None, seed: int) -> PlannedSpec:
    """Identify the vector space of (architecture, weights) without loading the model."""
    config = check_architecture(architecture)
    weights = resolve_weights(architecture, pretrained, seed)
    return PlannedSpec(architecture, weights, config, spec_key(OPEN_CLIP_KIND, architecture, weights.identity, config))


def spec_record(planned: PlannedSpec, encoder, dims, device: str, precision: str) -> dict[str, Any]:
    """What the spec row of an open_clip spec records: its identity plus how it was embedded
    (image size, dims (`encoder.vector_dims()`), projections, preprocessing, open_clip version,
    device, precision)."""
    import open_clip

    return {
        "architecture": planned.architecture,
        "weights": planned.weights.as_json(),
        "image_size": encoder.image_size,
        "dim": dims.embedding,
        "phi_dim": dims.phi,
        "text_phi_dim": dims.text_phi,
        "image_projection": None if encoder.image_proj is None else encoder.image_proj.name,
        "text_projection": None if encoder.text_proj is None else encoder.text_proj.name,
        "preprocess": {k: (list(v) if isinstance(v, tuple) else v) for k, v in encoder.preprocess_cfg.items()},
        "open_clip_version": open_clip.__version__,
        "device": device,
        "precision": precision,
        "storage_dtype": "float16",
        "config": planned.config,
        **({} if planned.quantisation is None else {"quantisation": planned.quantisation, "base_key": planned.base_key}),
        **({} if not planned.cvp_blocks else {"cvp_blocks": planned.cvp_blocks, "cvp_plain_key": planned.plain_key}),
    }


def imported_key(name: str) -> str:
    return spec_key(IMPORTED_KIND, "", f"name:{name}", {})


def spec_name(architecture: str, weights: WeightsSource) -> str:
    return f"{architecture}/{weights.display()}"
