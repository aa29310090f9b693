"""Benchmark: `alkit select --budget 100` end to end on a real project directory.

Builds (not timed) a project of N pool images with D-dim unit embeddings in K clusters, K
classes with text embeddings (an imported spec, as `alkit embed --from` stores it), and L
labels, then fits the posterior once (`alkit fit`, timed separately) and times each

    alkit select --budget 100 --strategy {entropy, margin, bald, bald_analytic, epig}

as its own process (CLI start-up, pool query, vector loading, scoring, batch, recording),
with that process's peak RSS (`wait4` rusage). EPIG scores the 10k candidates nearest the
first pool image (`--candidates 10000 --like <its path>`). Each time is also given as a ratio to the
bare `(N x D)(D x K)` float32 matmul measured in this process in the same run. Image rows are
inserted directly (no image files: select never opens them), vectors are written as the embed
workflow writes them (float16 shards + rows).

    python -m benchmarks.select_bench --n 1000000          # the full-size table (idle machine)
    python -m benchmarks.select_bench --n 100000 --force   # smaller, under load
    python -m benchmarks.select_bench --n 200000 --strategies entropy,bald --ray-workers 1,2 --force

`--ray-workers 1,2` also times every strategy with `--engine ray --workers W` for each W, on
one local Ray cluster started by this script before those runs (`--address` passed, so the
cluster start is not in the figures; each run still starts its W actors, which import alkit
and torch). Each run claims its 100 images, so later runs see a pool smaller by 100s.

The load average is printed before and after; above `--max-load` (default 1.0) the script
refuses to run unless `--force`, and a run whose load rose above it is flagged.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def build_project(directory: Path, num_items: int, dim: int, num_classes: int, num_labels: int, seed: int) -> None:
    """A pool of `num_items` images with clustered embeddings, classes with text features, labels."""
    import sqlalchemy as sa

    from alkit.project import init_project, open_project
    from alkit.storage import shards, specs
    from alkit.storage.spec_files import save_tensors
    from alkit.storage.db import utcnow
    from alkit.storage.schema import images
    from alkit.workflows.classes import set_classes
    from alkit.workflows.text_features import current_class_list, text_features_file
    from alkit.workflows.labels import import_labels

    init_project(directory)
    project = open_project(directory)
    names = [f"class{k:03d}" for k in range(num_classes)]
    set_classes(project, names)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    now = utcnow()
    example = like_path(directory)  # one real file: the example image of EPIG's `--like`
    from PIL import Image

    Image.new("RGB", (8, 8)).save(example)
    with project.engine.begin() as connection:
        for start in range(0, num_items, 50_000):
            stop = min(num_items, start + 50_000)
            connection.execute(images.insert(), [
                dict(path=str(example) if i == 0 else f"/bench/img{i:08d}.jpg", content_hash=f"{i:064x}", split="pool", status="embedded",
                     added_at=now, updated_at=now) for i in range(start, stop)
            ])
        ids = np.asarray(sorted(connection.execute(sa.select(images.c.id)).scalars()), dtype=np.int64)
        spec = specs.ensure_spec(connection, "bench" + "0" * 27, "imported", "bench", {"dim": dim}, dim=dim, phi_dim=None)
        specs.set_current(connection, spec.id)
    directory_v = specs.spec_directory(project, spec.key)
    truth = rng.integers(0, num_classes, num_items)
    for shard, start in enumerate(range(0, num_items, 100_000), start=1):
        stop = min(num_items, start + 100_000)
        x = centres[truth[start:stop]] + 0.06 * rng.standard_normal((stop - start, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        shards.write_shard(directory_v, shard, {"embedding": x})
        with project.engine.begin() as connection:
            shards.record_shard(connection, spec.id, shard, ids[start:stop])
    classes_key = current_class_list(project).key
    save_tensors(text_features_file(project, spec.key, classes_key), {"text_emb": centres}, metadata={"classes_key": classes_key})
    labelled = rng.choice(num_items, num_labels, replace=False)
    csv = directory / "labels.csv"
    labelled = labelled[labelled > 0]
    csv.write_text("path,label\n" + "".join(f"/bench/img{i:08d}.jpg,{names[truth[i]]}\n" for i in labelled))
    import_labels(project, csv)


def bare_matmul(num_items: int, dim: int, num_classes: int) -> tuple[float, float]:
    """(seconds, peak RSS GB) of the float32 (N x D)(D x K) matmul in 64k-row blocks."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((num_items, dim), dtype=np.float32)
    w = rng.standard_normal((dim, num_classes), dtype=np.float32)
    out = np.empty((num_items, num_classes), dtype=np.float32)
    started = time.perf_counter()
    for start in range(0, num_items, 65_536):
        np.matmul(x[start : start + 65_536], w, out=out[start : start + 65_536])
    return time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def like_path(directory: Path) -> Path:
    return (directory / "example.png").resolve()


def run_cli(directory: Path, *args: str, stderr: list | None = None) -> tuple[float, float, str]:
    """(wall s, peak RSS GB, stdout) of one `alkit` process (its stderr appended to `stderr`)."""
    command = [str(Path(sys.executable).with_name("alkit")), "--project", str(directory), *args]
    # Output goes to files, not pipes: wait4 does not read, and a child filling a 64 KB pipe
    # would block forever (it did: `alkit fit` at 1M).
    with tempfile.TemporaryFile("w+") as stdout_file, tempfile.TemporaryFile("w+") as stderr_file:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=stdout_file, stderr=stderr_file, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        stdout_file.seek(0)
        stderr_file.seek(0)
        out, err = stdout_file.read(), stderr_file.read()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({process.returncode}): {err[-2000:]}")
    if stderr is not None:
        stderr.append(err)
    return wall, usage.ru_maxrss / 1024**2, out


def ray_rows(project_dir: Path, workers: list[int], strategies: list[str], samples: int) -> list[tuple[str, float, float]]:
    """`alkit select --engine ray --workers W` per W and strategy (not EPIG's --like run), on one
    local Ray cluster started here; peak RSS is the driver's (the actors' is not counted)."""
    import ray

    ray.init(num_cpus=max(workers), include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    rows = []
    try:
        for count in workers:
            for strategy in (s for s in strategies if s != "epig"):
                err: list[str] = []
                wall, rss, _ = run_cli(project_dir, "select", "--budget", "100", "--strategy", strategy, "--samples", str(samples),
                                       "--engine", "ray", "--workers", str(count), "--address", address, "--json", stderr=err)
                shard = next((line.split("slowest shard ")[1].split(" s")[0] for line in err[0].splitlines()
                              if "slowest shard" in line), "?")
                rows.append((f"alkit select --budget 100 --strategy {strategy} --engine ray --workers {count} "
                             f"(slowest shard {shard} s of it)", wall, rss))
                print(f"  {rows[-1][0]}: {wall:.2f} s, driver peak RSS {rss:.2f} GB", flush=True)
    finally:
        ray.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--labels", type=int, default=200)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=10_000)
    parser.add_argument("--strategies", default="entropy,margin,bald,bald_analytic,epig")
    parser.add_argument("--ray-workers", default="", help="comma-separated actor counts: also time --engine ray with each")
    parser.add_argument("--keep", type=Path, default=None, help="build the project here and keep it (default: a temp dir)")
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument("--force", action="store_true", help="run even above --max-load")
    args = parser.parse_args()

    before = os.getloadavg()
    print(f"load average before: {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}", flush=True)
    if before[0] > args.max_load and not args.force:
        raise SystemExit(f"load {before[0]:.2f} > --max-load {args.max_load}: figures would not be comparable; rerun when idle or pass --force")
    sys.path.insert(0, str(ROOT))
    work = Path(tempfile.mkdtemp(prefix="alkit-select-bench-")) if args.keep is None else args.keep
    try:
        project_dir = work / "project" if args.keep is None else work
        if not (project_dir / "alkit.toml").is_file():
            started = time.perf_counter()
            build_project(project_dir, args.n, args.d, args.k, args.labels, seed=0)
            print(f"built the project in {time.perf_counter() - started:.1f} s (not part of the figures)", flush=True)
        rows = []
        wall, rss, _ = run_cli(project_dir, "fit")
        rows.append(("alkit fit", wall, rss))
        for strategy in args.strategies.split(","):
            extra = ["--samples", str(args.samples)]
            if strategy == "epig":
                extra += ["--candidates", str(args.candidates), "--like", str(like_path(project_dir))]
            wall, rss, _ = run_cli(project_dir, "select", "--budget", "100", "--strategy", strategy, *extra, "--json")
            rows.append((f"alkit select --budget 100 --strategy {strategy}" + (f" (S={args.samples})" if strategy in ("bald", "epig") else "")
                         + (f", {args.candidates} candidates" if strategy == "epig" else ""), wall, rss))
            print(f"  {rows[-1][0]}: {wall:.2f} s, peak RSS {rss:.2f} GB", flush=True)
        if args.ray_workers:
            rows += ray_rows(project_dir, [int(w) for w in args.ray_workers.split(",")], args.strategies.split(","), args.samples)
        # Last, so that this process's 2 GB never shows in the children's peak RSS (Linux carries
        # a parent's high-water mark through fork + exec into the child's ru_maxrss).
        matmul, matmul_rss = bare_matmul(args.n, args.d, args.k)
        rows.insert(0, ("bare matmul (N x D)(D x K), in this process", matmul, matmul_rss))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    after = os.getloadavg()
    print(f"\nN={args.n} D={args.d} K={args.k} labels={args.labels} cpus={os.cpu_count()}")
    print("| step | wall s | / bare matmul | peak RSS GB |\n| --- | ---: | ---: | ---: |")
    for name, seconds, rss in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / matmul:.1f} | {rss:.2f} |")
    print(f"load average before: {before[0]:.2f}, after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
    # The run itself keeps both cores busy, so the 1-minute load after it is ~cpu_count; more than
    # that means someone else ran too.
    if before[0] > args.max_load or after[0] > (os.cpu_count() or 1) + args.max_load:
        print(f"WARNING: other work ran beside this one (load before {before[0]:.2f}, after {after[0]:.2f} "
              f"on {os.cpu_count()} cpus): not comparable with idle figures")


if __name__ == "__main__":
    main()
