"""Registering many small images: files/s of `alkit add` (hash + header probe + DB insert).

    python -m benchmarks.ingest --n 100000

Generates N distinct 16x16 PNG files (not timed), then times one `add_images` run over the
folder and a second, idempotent run (everything already registered).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def generate(folder: Path, count: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for start in range(0, count, 1000):
        sub = folder / f"part{start // 1000:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        for index in range(start, min(start + 1000, count)):
            pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
            pixels[0, 0, :3] = [index % 256, (index // 256) % 256, index // 65536]  # unique content
            Image.fromarray(pixels).save(sub / f"img_{index:07d}.png", compress_level=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()

    from alkit.project import init_project, open_project
    from alkit.workflows.ingest import add_images

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        generate(root / "images", args.n)
        generate_s = time.perf_counter() - t0
        init_project(root / "project")
        project = open_project(root / "project")
        t0 = time.perf_counter()
        first = add_images(project, [str(root / "images")], show_progress=False)
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        second = add_images(project, [str(root / "images")], show_progress=False)
        second_s = time.perf_counter() - t0

    print(f"generated {args.n} PNGs in {generate_s:.1f} s (not part of the measurement)")
    print(f"{'run':<22}{'files':>9}{'added':>9}{'seconds':>10}{'files/s':>10}")
    print(f"{'first add':<22}{args.n:>9}{first.added:>9}{first_s:>10.1f}{args.n / first_s:>10.0f}")
    print(f"{'re-add (idempotent)':<22}{args.n:>9}{second.added:>9}{second_s:>10.1f}{args.n / second_s:>10.0f}")


if __name__ == "__main__":
    main()
