"""Benchmark: BayesVLM with and without CVP's phi variance over labelling rounds (the AL suite's `clip` data).

The AL suite's `clip` template project (the demo's tiny open_clip model, shifted MNIST pool,
500 labelled test images; `benchmarks/al_suite_data.py`) is copied per seed; each round labels
`--budget` pool images chosen at random (the same images for both arms, so only the posterior
differs), then, through the product's use cases:
- plain: `alkit embed` (the plain spec) -> `alkit fit --posterior bayesvlm` -> `alkit eval` on test;
- CVP: `alkit embed --cvp-blocks K` (round 1: fit + calibrate; later rounds `--recalibrate`,
  which re-embeds the spec) -> `alkit fit --posterior bayesvlm` (reads phi_var) -> `alkit eval`,
  twice: with phi's variance at its calibrated scale (`--phi-variance-scale 1`) and with the
  scale the labels choose by cross-validation (the default).

    python -m benchmarks.cvp_al --seeds 2 --rounds 4 --budget 20     # prints the load average too
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _label_random(project, data, seed: int, round_number: int, budget: int, directory: Path) -> None:
    from alkit.storage.images import ids_by_path
    from alkit.storage.labels import resolved_labels
    from alkit.workflows.labels import import_labels

    with project.engine.connect() as connection:
        done = set(resolved_labels(connection))
        ids = ids_by_path(connection, data.pool_paths)
    candidates = [p for p in data.pool_paths if ids[p] not in done]
    chosen = np.random.default_rng(seed * 1000 + round_number).choice(len(candidates), budget, replace=False)
    path = directory / f"round-{round_number:02d}.csv"
    path.write_text("path,label\n" + "".join(f"{candidates[i]},{data.answers[candidates[i]]}\n" for i in chosen))
    import_labels(project, path, annotator="oracle", strict=True)


def _fit_and_eval(project, seed: int, scale: float | None = None) -> dict:
    from alkit.workflows.current_posterior import current_posterior
    from alkit.workflows.evaluate import evaluate
    from alkit.workflows.fit import FitSettings, fit_posterior

    fit_posterior(project, FitSettings(posterior="bayesvlm", seed=seed, phi_variance_scale=scale), force=True)
    metrics = dict(evaluate(project, "test", record=False).metrics)
    metrics["scale"] = current_posterior(project)[2].phi_variance_scale
    return metrics


def run(seed: int, rounds: int, budget: int, blocks: int, workdir: Path) -> list[dict]:
    from alkit.project import open_project
    from alkit.workflows.embed import embed_images
    from benchmarks.al_suite_data import load_dataset

    data = load_dataset("clip", reuse_latest=True)
    directory = workdir / f"cvp-al-s{seed}"
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(data.template, directory)
    project = open_project(directory)
    rows = []
    try:
        for round_number in range(1, rounds + 1):
            _label_random(project, data, seed, round_number, budget, directory)
            started = time.perf_counter()
            embed_images(project, show_progress=False)
            plain = _fit_and_eval(project, seed)
            plain_seconds = time.perf_counter() - started
            started = time.perf_counter()
            embed_images(project, show_progress=False, cvp_blocks=blocks, recalibrate=round_number > 1)
            full = _fit_and_eval(project, seed, 1.0)
            cvp_seconds = time.perf_counter() - started
            chosen = _fit_and_eval(project, seed)
            rows.append(dict(seed=seed, labels=round_number * budget, plain=plain, full=full, cv=chosen,
                             plain_seconds=plain_seconds, cvp_seconds=cvp_seconds))
            print(f"seed {seed} labels {round_number * budget}: " + " | ".join(
                f"{name} acc {m['accuracy']:.4f} nll {m['nll']:.4f} ece {m['ece']:.4f}"
                for name, m in (("plain", plain), ("CVP a=1", full), (f"CVP a={chosen['scale']:g}", chosen))), flush=True)
    finally:
        project.engine.dispose()
        shutil.rmtree(directory, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    print(f"load average before: {os.getloadavg()}", flush=True)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="alkit-cvp-al-") as workdir:
        for seed in range(args.seeds):
            rows += run(seed, args.rounds, args.budget, args.blocks, Path(workdir))
    print(f"\nmean over {args.seeds} seeds (random labelling, budget {args.budget}, CVP k={args.blocks})")
    print("| labels | arm | accuracy | NLL | ECE | scale a | s (embed + fit + eval) |")
    print("| ---: | --- | ---: | ---: | ---: | --- | ---: |")
    for labels in sorted({r["labels"] for r in rows}):
        sel = [r for r in rows if r["labels"] == labels]
        for arm, name, seconds in (("plain", "BayesVLM", "plain_seconds"), ("full", "BayesVLM + CVP, a = 1", "cvp_seconds"),
                                   ("cv", "BayesVLM + CVP, a by CV", None)):
            scales = ", ".join(f"{r[arm].get('scale', 0):g}" for r in sel) if arm != "plain" else "-"
            took = f"{np.mean([r[seconds] for r in sel]):.1f}" if seconds else "-"
            print(f"| {labels} | {name} | {np.mean([r[arm]['accuracy'] for r in sel]):.4f} | "
                  f"{np.mean([r[arm]['nll'] for r in sel]):.4f} | {np.mean([r[arm]['ece'] for r in sel]):.4f} | {scales} | {took} |")
    print(f"{time.perf_counter() - started:.1f} s; load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
