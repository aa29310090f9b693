"""`alkit embed` pipeline throughput against a bare open_clip forward loop, same images.

    HF_HUB_OFFLINE=1 python benchmarks/embed.py [--n 256] [--model ViT-B-32] [--batch-size 32]
        [--workers 2] [--width 640 --height 480] [--threads N]

Generates N JPEGs, registers them in a fresh project, then times
  bare:     open_clip forward on pre-decoded, preprocessed tensors (decode not timed);
  pipeline: `embed_images` (DataLoader decode workers, forward, phi, fp16 shards, DB rows),
            timed over its embedding loop (model load excluded, as for bare).
Random weights (`pretrained=None`): throughput does not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/ holds files named like stdlib modules (select.py): keep it off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_jpegs(folder: Path, count: int, width: int, height: int) -> list[str]:
    """Smooth random photos-like JPEGs (quality 90), distinct per index."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        coarse = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        noise = rng.integers(-12, 13, size=(height, width, 3))
        pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        path = folder / f"img_{index:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def decode_cost(paths: list[str], preprocess, min_size: int) -> tuple[float, float]:
    """ms per image of decode + preprocess in one process: (full decode, alkit's draft decode)."""
    from PIL import Image

    from alkit.embedding.decode import open_rgb_image

    started = time.perf_counter()
    for path in paths:
        preprocess(Image.open(path).convert("RGB"))
    full = (time.perf_counter() - started) * 1000 / len(paths)
    started = time.perf_counter()
    for path in paths:
        preprocess(open_rgb_image(path, min_size))
    return full, (time.perf_counter() - started) * 1000 / len(paths)


def load_bare(model_name: str):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
    return model.eval(), preprocess


def bare_forward(model, preprocess, paths: list[str], batch_size: int) -> float:
    """images/s of model.encode_image on pre-decoded tensors."""
    import torch
    from PIL import Image

    pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])  # (N, 3, H, W), not timed
    with torch.no_grad():
        model.encode_image(pixels[:batch_size])  # warm-up
        started = time.perf_counter()
        for start in range(0, len(pixels), batch_size):
            model.encode_image(pixels[start : start + batch_size])
        seconds = time.perf_counter() - started
    return len(paths) / seconds


def pipeline(model_name: str, paths: list[str], batch_size: int, workers: int, root: Path, engine: str = "local") -> tuple[float, float]:
    """(images/s of the embed loop, wall seconds including model load)."""
    from alkit.project import init_project, open_project
    from alkit.workflows.embed import embed_images
    from alkit.workflows.ingest import add_images

    import shutil

    shutil.rmtree(root, ignore_errors=True)
    init_project(root)
    add_images(open_project(root), paths, show_progress=False)
    project = open_project(root, {"model": model_name, "pretrained": "none", "batch_size": batch_size, "workers": workers, "device": "cpu"})
    started = time.perf_counter()
    result = embed_images(project, show_progress=False, engine=engine)
    wall = time.perf_counter() - started
    assert result.embedded == len(paths), result.as_json()
    return result.images_per_second, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=1, help="alternate bare/pipeline; best of each is kept")
    parser.add_argument("--tiny", action="store_true", help="use alkit's tiny test config (smoke run)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="ray: also time `embed --engine ray` (--workers actors on a local Ray) next to local")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        from alkit.embedding.tiny import register_config

        args.model = register_config()
    with tempfile.TemporaryDirectory(prefix="alkit-bench-embed-") as tmp:
        root = Path(tmp)
        paths = make_jpegs(root / "images", args.n, args.width, args.height)
        print(f"{args.n} JPEGs {args.width}x{args.height}, model {args.model} (random weights), batch {args.batch_size}, "
              f"torch threads {torch.get_num_threads()}, decode workers {args.workers}, cpu count {os.cpu_count()}")
        model, preprocess = load_bare(args.model)
        full, draft = decode_cost(paths[:64], preprocess, max(model.visual.image_size))
        print(f"decode + preprocess, one process: {full:.1f} ms/img full decode, {draft:.1f} ms/img alkit (JPEG draft)")
        bares, pipes = [], []
        for round_ in range(args.rounds):
            bares.append(bare_forward(model, preprocess, paths, args.batch_size))
            piped, wall = pipeline(args.model, paths, args.batch_size, args.workers, root / "project")
            pipes.append(piped)
            print(f"round {round_ + 1}: bare forward (pre-decoded tensors) {bares[-1]:.2f} img/s; "
                  f"alkit embed pipeline {piped:.2f} img/s (wall {wall:.1f} s incl. model load)")
        print(f"best: bare {max(bares):.2f} img/s, pipeline {max(pipes):.2f} img/s; "
              f"ratio pipeline / bare: {max(pipes) / max(bares):.3f}  (target >= 0.9)")
        if args.engine == "ray":
            import ray

            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            if args.tiny:  # actors get the tiny config from the driver; warm the cluster once
                pipeline(args.model, paths[: args.batch_size], args.batch_size, args.workers, root / "warm", "ray")
            piped, wall = pipeline(args.model, paths, args.batch_size, args.workers, root / "ray", "ray")
            print(f"ray engine ({args.workers} actors, one model each, decode in the actor): {piped:.2f} img/s "
                  f"(wall {wall:.1f} s incl. driver model load and actor start)")
            ray.shutdown()


if __name__ == "__main__":
    main()
