"""`alkit embed` pipeline throughput against a bare open_clip forward loop, same images.

    HF_HUB_OFFLINE=1 python benchmarks/embed.py [--n 256] [--model ViT-B-32] [--batch-size 32]
        [--workers 2] [--width 640 --height 480] [--threads N] [--int8]

Generates N JPEGs, registers them in a fresh project, then times
  bare:     open_clip forward on pre-decoded, preprocessed tensors (decode not timed);
  pipeline: `embed_images` (DataLoader decode workers, forward, phi, fp16 shards, DB rows),
            timed over its embedding loop (model load excluded, as for bare).
Random weights (`pretrained=None`): throughput does not depend on the weights.
`--int8` also times both at `--precision int8` (the Linear layers dynamically quantised,
`alkit.embedding.model.quantise_linear_layers`), alternating with fp32 inside every round so
that the int8 / fp32 ratio is measured side by side under the same load; agreement with fp32
is measured by `benchmarks/int8_agreement.py`. The load average is printed before and after.
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


def quantised_copy(model):
    """An int8 copy of a bare model, quantised as `alkit embed --precision int8` quantises it."""
    import copy

    from alkit.embedding.model import quantise_linear_layers

    int8 = copy.deepcopy(model)
    quantise_linear_layers(int8)
    return int8


def pipeline(model_name: str, paths: list[str], batch_size: int, workers: int, root: Path, engine: str = "local",
             precision: str = "fp32") -> tuple[float, float]:
    """(images/s of the embed loop, wall seconds including model load)."""
    from alkit.project import init_project, open_project
    from alkit.workflows.embed import embed_images
    from alkit.workflows.ingest import add_images

    import shutil

    shutil.rmtree(root, ignore_errors=True)
    init_project(root)
    add_images(open_project(root), paths, show_progress=False)
    project = open_project(root, {"model": model_name, "pretrained": "none", "batch_size": batch_size, "workers": workers, "device": "cpu",
                                  "precision": precision})
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
    parser.add_argument("--int8", action="store_true", help="also time --precision int8, alternating with fp32 in each round")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="ray: also time `embed --engine ray` (--workers actors on a local Ray) next to local")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        from alkit.embedding.tiny import register_config

        args.model = register_config()
    before = os.getloadavg()
    print(f"load average before: {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="alkit-bench-embed-") as tmp:
        root = Path(tmp)
        paths = make_jpegs(root / "images", args.n, args.width, args.height)
        print(f"{args.n} JPEGs {args.width}x{args.height}, model {args.model} (random weights), batch {args.batch_size}, "
              f"torch threads {torch.get_num_threads()}, decode workers {args.workers}, cpu count {os.cpu_count()}")
        model, preprocess = load_bare(args.model)
        full, draft = decode_cost(paths[:64], preprocess, max(model.visual.image_size))
        print(f"decode + preprocess, one process: {full:.1f} ms/img full decode, {draft:.1f} ms/img alkit (JPEG draft)")
        bares, pipes, int8_bares, int8_pipes = [], [], [], []
        for round_ in range(args.rounds):
            bares.append(bare_forward(model, preprocess, paths, args.batch_size))
            piped, wall = pipeline(args.model, paths, args.batch_size, args.workers, root / "project")
            pipes.append(piped)
            print(f"round {round_ + 1}: bare forward (pre-decoded tensors) {bares[-1]:.2f} img/s; "
                  f"alkit embed pipeline {piped:.2f} img/s (wall {wall:.1f} s incl. model load)", flush=True)
            if args.int8:
                int8_model = quantised_copy(model) if round_ == 0 else int8_model
                int8_bares.append(bare_forward(int8_model, preprocess, paths, args.batch_size))
                piped, wall = pipeline(args.model, paths, args.batch_size, args.workers, root / "project", precision="int8")
                int8_pipes.append(piped)
                print(f"round {round_ + 1}: int8 bare forward {int8_bares[-1]:.2f} img/s; "
                      f"int8 pipeline {piped:.2f} img/s (wall {wall:.1f} s incl. model load)", flush=True)
        print(f"best: bare {max(bares):.2f} img/s, pipeline {max(pipes):.2f} img/s; "
              f"ratio pipeline / bare: {max(pipes) / max(bares):.3f}  (target >= 0.9)")
        if args.int8:
            print(f"best int8: bare {max(int8_bares):.2f} img/s, pipeline {max(int8_pipes):.2f} img/s; "
                  f"int8 / fp32: bare {max(int8_bares) / max(bares):.2f}x, pipeline {max(int8_pipes) / max(pipes):.2f}x")
        if args.engine == "ray":
            import ray

            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            if args.tiny:  # actors get the tiny config from the driver; warm the cluster once
                pipeline(args.model, paths[: args.batch_size], args.batch_size, args.workers, root / "warm", "ray")
            piped, wall = pipeline(args.model, paths, args.batch_size, args.workers, root / "ray", "ray")
            print(f"ray engine ({args.workers} actors, one model each, decode in the actor): {piped:.2f} img/s "
                  f"(wall {wall:.1f} s incl. driver model load and actor start)")
            ray.shutdown()
    after = os.getloadavg()
    print(f"load average after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")


if __name__ == "__main__":
    main()
