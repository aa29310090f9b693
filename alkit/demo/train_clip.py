"""Train the tiny CLIP model contrastively on image-caption pairs; cache the checkpoint.

Captions come from several templates ("a photo of the digit seven", "a handwritten seven",
...) so that the text tower learns the class word, not one sentence. The loss is InfoNCE
with a learnable logit scale, in both directions (image -> text, text -> image), with one
change from CLIP's: every caption of the same class in the batch counts as a positive
(targets spread evenly over them). With 10 classes a batch of 256 holds ~25 items per
class, and plain InfoNCE would push apart 24 correct pairs for every one it pulls together.

Shifted views (TRAINING_CODE_VERSION 2): each batch also yields two views in the demo's
shifted style (rotation, inverted contrast, noise; `shifted_views`). A supervised
contrastive loss between them, on a throw-away linear head over phi, teaches the image
tower features that separate the digits in that style; only a small fraction of the
caption pairs (`caption_view_fraction`) shows a shifted view. The result behaves like a
foundation model under domain shift: a linear probe on the shifted pool is far above the
zero-shot accuracy there. The fraction sets the zero-shot accuracy steeply (measured, with
noise 0.15 and 45 epochs: 0 -> 0.02, 0.005 -> 0.51 (the default), 0.01 -> 0.78, 0.025 -> 0.86, 0.05 -> 0.90; linear
probe 0.90-0.92 throughout); see benchmarks/README.md.

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
TRAINING_CODE_VERSION = 2  # 2: shifted-style views (rotation + noise) during training

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
    epochs: int = 45
    batch_size: int = 250
    learning_rate: float = 3e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    num_threads: int = 1  # 1 beats 2 on a busy 2-core machine; part of the cache key
    templates: tuple[str, ...] = CAPTION_TEMPLATES
    class_names: tuple[str, ...] = CLASS_NAMES
    max_steps: int | None = None  # stop early (for tests); None = all epochs
    # Shifted-style views of each batch (random rotation + Gaussian noise, like the demo's
    # pool): `view_weight` weighs a label-supervised contrastive loss between two such views,
    # which teaches the image tower features that separate the classes under the shift;
    # `caption_view_fraction` of the caption pairs use a shifted view instead of the clean image.
    view_weight: float = 1.0
    caption_view_fraction: float = 0.005
    view_rotation_degrees: float = 35.0
    view_noise_std: float = 0.15
    view_invert: bool = True  # views with inverted contrast (white background), as `ShiftSettings.invert`
    view_temperature: float = 0.1
    view_head: bool = True  # the view loss on a separate linear head over phi, not on the text-aligned embedding
    view_labels: bool = True  # supervised contrastive (same class = positive) or SimCLR (same image only)


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


def supervised_view_contrastive(first, second, labels, temperature: float):
    """Supervised contrastive loss (Khosla et al. 2020) over two views; scalar.

    first, second: (B, D) unit-norm embeddings of two views of the same B images; labels (B,).
    Every other embedding of the same label (either view) is a positive of an anchor, the
    rest of the 2B - 1 embeddings are its negatives; mean over anchors of -mean log p(positive).
    """
    import torch

    z = torch.cat([first, second])  # (2B, D)
    y = torch.cat([labels, labels])
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positives = (y[:, None] == y[None, :]) & ~self_mask
    log_prob = torch.log_softmax(logits, dim=1).masked_fill(~positives, 0.0)
    return -(log_prob.sum(dim=1) / positives.sum(dim=1).clamp(min=1)).mean()


def shifted_views(pixels, generator, max_rotation_degrees: float, noise_std: float, invert: bool = False):
    """Random rotation (bilinear, zero fill), optional inversion, Gaussian noise of grey images (B, H, W) in [0, 1].

    The same steps in the same order as `alkit.demo.data.shift_style`, in torch, per batch.
    """
    import torch
    import torch.nn.functional as F

    angles = (torch.rand(len(pixels), generator=generator) * 2 - 1) * math.radians(max_rotation_degrees)
    cos, sin = torch.cos(angles), torch.sin(angles)
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, (len(pixels), 1, *pixels.shape[1:]), align_corners=False)
    rotated = F.grid_sample(pixels[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
    if invert:
        rotated = 1.0 - rotated
    noisy = rotated + noise_std * torch.randn(rotated.shape, generator=generator)
    return noisy.clamp(0.0, 1.0)


def _head_embedding(model, head, images):
    """Unit-norm `head(phi)` for preprocessed images: phi is the input of `visual.proj`."""
    import torch.nn.functional as F

    from alkit.demo.tiny_clip import projection_removed

    with projection_removed(model.visual, "proj"):
        phi = model.visual(images)
    return F.normalize(head(phi), dim=-1)


def _normaliser(preprocess):
    """(B, H, W) grey in [0, 1] -> (B, 3, H, W) as the model's own transform would give (RGB, Normalize)."""
    import torch
    from torchvision.transforms import Normalize

    normalize = next(t for t in preprocess.transforms if isinstance(t, Normalize))
    mean = torch.tensor(normalize.mean, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(normalize.std, dtype=torch.float32)[None, :, None, None]
    return lambda grey: (grey[:, None].expand(-1, 3, -1, -1) - mean) / std


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
        grey = torch.as_tensor(np.asarray(images), dtype=torch.float32) / 255.0  # (n, 28, 28)
        to_input = _normaliser(preprocess)
        use_views = settings.view_weight > 0 or settings.caption_view_fraction > 0
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
        head = None
        if settings.view_weight > 0 and settings.view_head:
            # A throw-away head (not saved): the view loss shapes phi without pulling the shifted
            # images onto the text-aligned embedding, as a projection head does in SimCLR.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(settings.seed + 1)
                head = torch.nn.Linear(model.visual.proj.shape[0], model.visual.proj.shape[1])
            trainable += list(head.parameters())
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
                batch_pixels = pixels[batch]
                if use_views:
                    views = [to_input(shifted_views(grey[batch], generator, settings.view_rotation_degrees,
                                                    settings.view_noise_std, settings.view_invert)) for _ in range(2)]
                    swap = torch.rand(len(batch), generator=generator) < settings.caption_view_fraction
                    batch_pixels = torch.where(swap[:, None, None, None], views[0], batch_pixels)
                image_emb = model.encode_image(batch_pixels, normalize=True)
                text_emb = model.encode_text(captions[batch_labels, template], normalize=True)
                loss = multi_positive_info_nce(image_emb, text_emb, batch_labels, model.logit_scale)
                if settings.view_weight > 0:
                    if head is None:
                        first, second = (model.encode_image(view, normalize=True) for view in views)
                    else:
                        first, second = (_head_embedding(model, head, view) for view in views)
                    view_labels = batch_labels if settings.view_labels else torch.arange(len(batch))
                    loss = loss + settings.view_weight * supervised_view_contrastive(
                        first, second, view_labels, settings.view_temperature)
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


def demo_model_quality(checkpoint: str | Path, data_seed: int = 0) -> dict:
    """Zero-shot and linear-probe accuracy of a demo checkpoint (`alkit.demo.quality`), cached in its sidecar.

    Measured once per checkpoint (a few seconds) and stored in the `.json` next to it.
    """
    from alkit.demo.data import make_demo_split
    from alkit.demo.quality import encoder_quality

    sidecar_path = Path(checkpoint).with_suffix(".json")
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (OSError, ValueError):
        sidecar = {}
    if isinstance(sidecar.get("quality"), dict) and sidecar.get("quality_data_seed") == data_seed:
        return sidecar["quality"]
    quality = encoder_quality(checkpoint, make_demo_split(seed=data_seed)).as_json()
    partial = sidecar_path.with_name(sidecar_path.name + f".partial-{os.getpid()}")
    partial.write_text(json.dumps({**sidecar, "quality": quality, "quality_data_seed": data_seed}, indent=2))
    partial.replace(sidecar_path)
    return quality
