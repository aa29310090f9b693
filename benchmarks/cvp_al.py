"""Benchmark: BayesVLM with and without CVP's phi variance over labelling rounds (the AL suite's `clip` data).

The AL suite's `clip` template project (the demo's tiny open_clip model, shifted MNIST pool,
500 labelled test images; `benchmarks/al_suite_data.py`) is copied per seed and per arm. Each
arm runs the product's own loop for `--rounds` rounds, through its use cases:

    alkit select --budget B --strategy STRATEGY  ->  the oracle labels the batch  ->
    alkit embed [--cvp-blocks K [--recalibrate]]  ->  alkit fit --posterior bayesvlm  ->  alkit eval

- `plain`: BayesVLM on the plain spec;
- `cvp a=1`: the CVP spec, phi's variance at its calibrated scale (`--phi-variance-scale 1`);
- `cvp a=cv`: the CVP spec, the scale the labels choose by cross-validation (the default).
Every arm starts from the zero-shot BayesVLM posterior of the plain spec, so the first batch is
the same in all arms; from round 2 each arm selects with its own posterior (`--strategy random`
gives the same images in every arm: the pool and the seed are the same).

    python -m benchmarks.cvp_al --seeds 2 --rounds 4 --budget 20 --strategy margin   # prints the load average
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _label_selected(project, data, items, round_number: int, directory: Path) -> None:
    """The oracle: label the selected images from the data set's answer key."""
    from alkit.workflows.labels import import_labels

    path = directory / f"round-{round_number:02d}.csv"
    path.write_text("path,label\n" + "".join(f"{item.path},{data.answers[item.path]}\n" for item in items))
    import_labels(project, path, annotator="oracle", strict=True)


def _fit_and_eval(project, seed: int, scale: float | None = None) -> dict:
    from alkit.workflows.current_posterior import current_posterior
    from alkit.workflows.evaluate import evaluate
    from alkit.workflows.fit import FitSettings, fit_posterior

    fit_posterior(project, FitSettings(posterior="bayesvlm", seed=seed, phi_variance_scale=scale), force=True)
    metrics = dict(evaluate(project, "test", record=False).metrics)
    metrics["scale"] = current_posterior(project)[2].phi_variance_scale
    return metrics


ARMS = (("plain", None, None), ("full", 1, 1.0), ("cv", 1, None))  # (name, cvp blocks or None, phi variance scale)


def run(seed: int, rounds: int, budget: int, blocks: int, strategy: str, workdir: Path) -> list[dict]:
    from alkit.project import open_project
    from alkit.workflows.embed import embed_images
    from alkit.workflows.fit import FitSettings, fit_posterior
    from alkit.workflows.select import SelectSettings, select_round
    from benchmarks.al_suite_data import load_dataset

    data = load_dataset("clip", reuse_latest=True)
    rows = {}
    for arm, cvp, scale in ARMS:
        directory = workdir / f"cvp-al-s{seed}-{arm}"
        shutil.rmtree(directory, ignore_errors=True)
        shutil.copytree(data.template, directory)
        project = open_project(directory)
        try:
            fit_posterior(project, FitSettings(posterior="bayesvlm", seed=seed))  # zero-shot: the same first batch everywhere
            for round_number in range(1, rounds + 1):
                chosen = select_round(project, SelectSettings(budget=budget, strategy=strategy, seed=seed * 1000 + round_number))
                _label_selected(project, data, chosen.items, round_number, directory)
                started = time.perf_counter()
                if cvp is None:
                    embed_images(project, show_progress=False)
                else:
                    embed_images(project, show_progress=False, cvp_blocks=blocks, recalibrate=round_number > 1)
                metrics = _fit_and_eval(project, seed, scale)
                metrics["seconds"] = time.perf_counter() - started
                rows.setdefault(round_number, dict(seed=seed, labels=round_number * budget))[arm] = metrics
                print(f"seed {seed} {arm} labels {round_number * budget}: acc {metrics['accuracy']:.4f} "
                      f"nll {metrics['nll']:.4f} ece {metrics['ece']:.4f} scale {metrics.get('scale')}", flush=True)
        finally:
            project.engine.dispose()
            shutil.rmtree(directory, ignore_errors=True)
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=1)
    parser.add_argument("--strategy", default="margin", help="alkit select strategy (random: the same images in every arm)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    print(f"load average before: {os.getloadavg()}", flush=True)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="alkit-cvp-al-") as workdir:
        for seed in range(args.seeds):
            rows += run(seed, args.rounds, args.budget, args.blocks, args.strategy, Path(workdir))
    print(f"\nmean over {args.seeds} seeds (alkit select --strategy {args.strategy}, budget {args.budget}, CVP k={args.blocks})")
    print("| labels | arm | accuracy | NLL | ECE | scale a | s (embed + fit + eval) |")
    print("| ---: | --- | ---: | ---: | ---: | --- | ---: |")
    for labels in sorted({r["labels"] for r in rows}):
        sel = [r for r in rows if r["labels"] == labels]
        for arm, name in (("plain", "BayesVLM"), ("full", "BayesVLM + CVP, a = 1"), ("cv", "BayesVLM + CVP, a by CV")):
            scales = ", ".join(f"{r[arm].get('scale', 0):g}" for r in sel) if arm != "plain" else "-"
            print(f"| {labels} | {name} | {np.mean([r[arm]['accuracy'] for r in sel]):.4f} | "
                  f"{np.mean([r[arm]['nll'] for r in sel]):.4f} | {np.mean([r[arm]['ece'] for r in sel]):.4f} | {scales} | "
                  f"{np.mean([r[arm]['seconds'] for r in sel]):.1f} |")
    print(f"{time.perf_counter() - started:.1f} s; load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
