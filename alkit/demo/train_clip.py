"""Train the tiny CLIP model contrastively on image-caption pairs; cache the checkpoint.

Captions come from several templates ("a photo of the digit seven", "a handwritten seven",
...) so that the text tower learns the class word, not one sentence. The loss is InfoNCE
with a learnable logit scale, in both directions (image -> text, text -> image), with one
change from CLIP's: every caption of the same class in the batch counts as a positive
(targets spread evenly over them). With 10 classes a batch of 256 holds ~25 items per
class, and plain InfoNCE would push apart 24 correct pairs for every one it pulls together.

Determinism: a fixed seed, a fixed thread count and `torch.use_deterministic_algorithms`
give the same weights on the same machine and torch build (not across builds).
The checkpoint is a safetensors file of the plain `state_dict()`, which
`open_clip.create_model_and_transforms(name, pretrained=PATH)` loads strictly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from alkit.demo.data import CLASS_NAMES

# Bump when the training code changes in a way that changes the weights (invalidates caches).
TRAINING_CODE_VERSION = 1

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of the digit {}",
    "a handwritten {}",
    "the number {}",
    "a picture of a {}",
    "the digit {}",
    "a drawing of the number {}",
)


@dataclass(frozen=True)
class TinyClipTrainSettings:
    """Everything that decides the trained weights (hashed into the cache key)."""

    seed: int = 0
    epochs: int = 30
    batch_size: int = 250
    learning_rate: float = 3e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    num_threads: int = 1  # 1 beats 2 on a busy 2-core machine; part of the cache key
    templates: tuple[str, ...] = CAPTION_TEMPLATES
    class_names: tuple[str, ...] = CLASS_NAMES
    max_steps: int | None = None  # stop early (for tests); None = all epochs


@dataclass
class TrainingReport:
    """What one training run did and how long it took."""

    checkpoint: Path
    steps: int
    seconds: float  # wall clock
    cpu_seconds: float  # process CPU time: the fairer figure on a shared machine
    final_loss: float
    checkpoint_bytes: int
    losses: list[float] = field(default_factory=list)


@contextlib.contextmanager
def _deterministic_torch(num_threads: int):
    """Fixed thread count and deterministic kernels for the block; previous settings restored."""
    import torch

    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        torch.set_num_threads(previous_threads)


def multi_positive_info_nce(image_emb, text_emb, labels, logit_scale):
    """Symmetric InfoNCE where same-label pairs are all positives; scalar loss.

    image_emb, text_emb: (B, D) unit norm, row i of each is one pair; labels (B,).
    """
    import torch

    logits = logit_scale.exp() * image_emb @ text_emb.T  # (B, B)
    same = (labels[:, None] == labels[None, :]).float()  # (B, B), symmetric
    targets = same / same.sum(dim=1, keepdim=True)
    image_to_text = -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    text_to_image = -(targets * torch.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return (image_to_text + text_to_image) / 2


def train_tiny_clip(
    images: np.ndarray,
    labels: np.ndarray,
    out_path: str | Path,
    settings: TinyClipTrainSettings = TinyClipTrainSettings(),
    model_name: str | None = None,
) -> TrainingReport:
    """Train the tiny CLIP on uint8 images (n, 28, 28) with int labels (n,); save to out_path.

    Each step pairs every image with a caption from a random template of its class. AdamW
    with linear warm-up then cosine decay; the logit scale is learned (clamped at 100, as
    in CLIP). Written atomically (temp file + rename) as safetensors.
    """
    import torch
    from safetensors.torch import save_file

    from alkit.demo.data import images_to_tensor
    from alkit.demo.tiny_clip import TINY_CLIP_NAME, create_tiny_clip

    out_path = Path(out_path)
    started, started_cpu = time.perf_counter(), time.process_time()
    with _deterministic_torch(settings.num_threads):
        model, preprocess, tokenizer = create_tiny_clip(None, name=model_name or TINY_CLIP_NAME, seed=settings.seed)
        model.train()
        pixels = images_to_tensor(images, preprocess)  # (n, 3, 28, 28)
        targets = torch.as_tensor(labels, dtype=torch.long)
        # All captions tokenised once: (classes, templates, context_length).
        captions = tokenizer([t.format(c) for c in settings.class_names for t in settings.templates])
        captions = captions.reshape(len(settings.class_names), len(settings.templates), -1)

        generator = torch.Generator().manual_seed(settings.seed)
        steps_per_epoch = math.ceil(len(pixels) / settings.batch_size)
        total_steps = settings.epochs * steps_per_epoch
        if settings.max_steps is not None:
            total_steps = min(total_steps, settings.max_steps)
        # The token table (49,408 x 64) stays at its seeded random values: the captions use
        # ~20 of its rows, and a dense AdamW update of all of them dominated the step time.
        model.token_embedding.weight.requires_grad_(False)
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        optimiser = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda step: _warmup_cosine(step, settings.warmup_steps, total_steps)
        )
        losses: list[float] = []
        step = 0
        while step < total_steps:
            order = torch.randperm(len(pixels), generator=generator)
            for start in range(0, len(order), settings.batch_size):
                if step >= total_steps:
                    break
                batch = order[start : start + settings.batch_size]
                batch_labels = targets[batch]
                template = torch.randint(len(settings.templates), (len(batch),), generator=generator)
                image_emb = model.encode_image(pixels[batch], normalize=True)
                text_emb = model.encode_text(captions[batch_labels, template], normalize=True)
                loss = multi_positive_info_nce(image_emb, text_emb, batch_labels, model.logit_scale)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(100))
                losses.append(float(loss.detach()))
                step += 1
        model.eval()
        state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + f".partial-{os.getpid()}")
    save_file(state, str(partial), metadata={"alkit": json.dumps(_settings_dict(settings))})
    partial.chmod(0o644)  # safetensors writes 0600; the cache may be shared
    partial.replace(out_path)
    return TrainingReport(
        checkpoint=out_path,
        steps=step,
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - started_cpu,
        final_loss=losses[-1] if losses else float("nan"),
        checkpoint_bytes=out_path.stat().st_size,
        losses=losses,
    )


def _warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _settings_dict(settings: TinyClipTrainSettings) -> dict:
    return {**asdict(settings), "training_code_version": TRAINING_CODE_VERSION}


def settings_hash(settings: TinyClipTrainSettings, data_seed: int) -> str:
    """Cache key: a short hash of the training settings, model config, data seed and code version."""
    from alkit.demo.tiny_clip import TINY_CLIP_CONFIG

    payload = json.dumps(
        {"settings": _settings_dict(settings), "config": TINY_CLIP_CONFIG, "data_seed": data_seed}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """`$ALKIT_CACHE_DIR`, else `$XDG_CACHE_HOME/alkit`, else `~/.cache/alkit`."""
    if os.environ.get("ALKIT_CACHE_DIR"):
        return Path(os.environ["ALKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "alkit"


def ensure_demo_model(
    cache_dir: str | Path | None = None,
    settings: TinyClipTrainSettings = TinyClipTrainSettings(),
    data_seed: int = 0,
) -> Path:
    """Path of the trained demo checkpoint, training it (~1 min on 2 cores) only if not cached.

    The file is `<cache_dir>/demo-models/alkit-tiny-clip-<hash>.safetensors`, where the hash
    covers every setting that changes the weights; a JSON sidecar records the training report.
    Train on `make_demo_split(data_seed).train_*`.
    """
    from alkit.demo.data import make_demo_split

    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / "demo-models" / f"alkit-tiny-clip-{settings_hash(settings, data_seed)}.safetensors"
    if path.is_file():
        return path
    split = make_demo_split(seed=data_seed)
    report = train_tiny_clip(split.train_images, split.train_labels, path, settings)
    sidecar = {
        "steps": report.steps,
        "seconds": round(report.seconds, 2),
        "cpu_seconds": round(report.cpu_seconds, 2),
        "final_loss": report.final_loss,
        "checkpoint_bytes": report.checkpoint_bytes,
        "settings": _settings_dict(settings),
        "data_seed": data_seed,
    }
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    return path
