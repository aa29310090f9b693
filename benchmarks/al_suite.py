"""Benchmark: the active-learning suite (issue 15) - alkit's strategies against random and peers.

A simulated labelling loop that runs the product's own use cases in process, on a real
project directory and database per (data set, method, seed): the data set's embedded
template project is copied, then each round

    select_round (what `alkit select` runs) -> the oracle writes the round's true labels to a
    CSV and imports it (`alkit labels import`) -> fit_posterior (`alkit fit`) ->
    evaluate on the labelled test split (`alkit eval`)

Peers (scikit-activeml, modAL; `bench` extra) run on the same vectors, test split, budgets
and seeds (`benchmarks/al_suite_peers.py`). Data sets: `benchmarks/al_suite_data.py`.

    python -m benchmarks.al_suite                      # the full protocol, tables, results files, PNGs
    python -m benchmarks.al_suite --smoke              # 1 seed, 2 rounds, tiny data (the test suite runs this)
    python -m benchmarks.al_suite --datasets digits --seeds 2 --rounds 4 --methods random,bald-power --peers lr-random

Raw per-run results are appended to `<cache>/runs.jsonl` and reused on a rerun with the same
settings (delete the file, or pass --fresh, to recompute). Nothing is tuned per data set: every
alkit method runs with `alkit select`/`alkit fit` defaults except the flags its name states.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# name -> the `alkit select` / `alkit fit` flags it stands for (everything else is default)
ALKIT_METHODS: dict[str, dict] = {
    "random": dict(strategy="random"),
    "entropy-top": dict(strategy="entropy", batch_mode="top"),
    "entropy-power": dict(strategy="entropy", batch_mode="power"),
    "margin-top": dict(strategy="margin", batch_mode="top"),
    "margin-power": dict(strategy="margin", batch_mode="power"),
    "bald-top": dict(strategy="bald", batch_mode="top"),
    "bald-power": dict(strategy="bald", batch_mode="power"),
    "epig-top": dict(strategy="epig", batch_mode="top", target=True),
    "epig-power": dict(strategy="epig", batch_mode="power", target=True),
    # other posterior kinds (on data sets with class prompts: the Laplace head can use them as its prior mean)
    "bald-power/laplace_head": dict(strategy="bald", batch_mode="power", posterior="laplace_head", zero_shot_only=True),
    "entropy-top/probvlm": dict(strategy="entropy", batch_mode="top", posterior="probvlm", zero_shot_only=True),
    # trained-head posteriors (issue 20); not in a default tier: pass them with --methods / --extra-methods
    **{f"{acq}/{kind}": dict(strategy=acq.split("-")[0], batch_mode=acq.split("-")[1], posterior=kind.split("-")[0],
                             hyper=kind.endswith("-hyper"))
       for acq in ("bald-power", "entropy-top") for kind in ("ensemble", "ensemble-hyper", "mimo", "hetsngp")},
}
# kinds that cannot fit on class prompts alone: on zero-shot data sets their first round is the cold start too
NEEDS_LABELS = ("mimo", "hetsngp")
# First tier: run for every seed before the second tier starts (a time limit cuts the second tier first).
DEFAULT_METHODS = ("random", "bald-power", "margin-top", "epig-power", "entropy-top", "bald-power/laplace_head")
EXTRA_METHODS = ("bald-top", "margin-power", "epig-top", "entropy-power", "entropy-top/probvlm")
DEFAULT_LARGE_METHODS = ("random", "margin-top", "margin-power", "bald-power", "epig-power")
COLD_START_SELECTORS = ("typiclust", "kcenter")
PRODUCT_DEFAULT = "bald-power"  # SelectSettings() defaults: strategy bald, batch mode power, beta 1
DATASETS = ("clip", "mnist_lt", "digits")
RARE_CLASSES = 3


@dataclass
class Settings:
    datasets: tuple[str, ...] = DATASETS
    seeds: int = 5
    rounds: int = 10
    budget: int = 20
    large_budget: int = 100  # 0: no large-budget variant
    large_rounds: int = 10
    methods: tuple[str, ...] = DEFAULT_METHODS
    extra_methods: tuple[str, ...] = EXTRA_METHODS
    large_methods: tuple[str, ...] = DEFAULT_LARGE_METHODS
    peers: tuple[str, ...] = ()
    large_peers: tuple[str, ...] = ()
    cold_start: bool = True
    smoke: bool = False
    out: Path = Path(__file__).resolve().parent
    cache: Path | None = None
    workdir: Path | None = None
    fresh: bool = False
    threads: int = 1
    stop_at: float | None = None  # epoch seconds: start no new run after this (results use what finished)
    code_key: str | None = None  # reuse runs stored under this code fingerprint (default: the current code's)
    report_only: bool = False
    cold_start_only: bool = False

    def key(self, dataset: str, budget: int, rounds: int) -> str:
        return f"{dataset}|B{budget}|R{rounds}|{'smoke' if self.smoke else 'full'}|{self.code_key_for(dataset)}"

    def code_key_for(self, dataset: str) -> str:
        """`--code-key KEY` for every data set, or `name=KEY,name=KEY` per data set."""
        if not self.code_key:
            return code_fingerprint()
        if "=" not in self.code_key:
            return self.code_key
        keys = dict(part.split("=", 1) for part in self.code_key.split(",") if part)
        return keys.get(dataset, code_fingerprint())


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the code a curve depends on (posteriors, acquisition, the workflows, the suite), so
    stored runs are reused only while that code is unchanged."""
    import hashlib

    import alkit

    root = Path(alkit.__file__).resolve().parent
    files = sorted([*root.glob("posterior/*.py"), *root.glob("acquisition/*.py"), *root.glob("workflows/*.py"),
                    *root.glob("demo/*.py"), *Path(__file__).resolve().parent.glob("al_suite*.py")])
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()[:10]


# ---------------------------------------------------------------------- the alkit loop


def _oracle(project, data, selection, directory: Path, round_number: int) -> list[int]:
    """Write the round's true labels as `path,label` and import them like `alkit labels import`."""
    import csv

    from alkit.workflows.labels import import_labels

    path = directory / f"oracle-round-{round_number:02d}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for item in selection.items:
            writer.writerow([item.path, data.answers[item.path]])
    result = import_labels(project, path, annotator="oracle", strict=True)
    if result.imported != len(selection.items):
        raise RuntimeError(f"oracle: imported {result.imported} of {len(selection.items)} labels ({result.as_json()})")
    position = {name: k for k, name in enumerate(data.class_names)}
    return [position[data.answers[item.path]] for item in selection.items]


def run_alkit(data, method: str, seed: int, rounds: int, budget: int, workdir: Path, cold_start: str = "typiclust",
              keep: Path | None = None):
    """One (method, seed) curve through the product's use cases on a copy of the template project
    (deleted afterwards, or moved to `keep`)."""
    from alkit.project import open_project
    from alkit.workflows.evaluate import evaluate
    from alkit.workflows.fit import FitSettings, fit_posterior
    from alkit.workflows.select import SelectSettings, select_round

    spec = ALKIT_METHODS[method]
    directory = workdir / f"{data.name}-{method.replace('/', '_')}-{cold_start}-B{budget}-s{seed}"
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(data.template, directory)
    project = open_project(directory)
    fit = FitSettings(posterior=spec.get("posterior"), seed=seed, hyper=spec.get("hyper", False))
    points = []
    try:
        if data.zero_shot and spec.get("posterior") not in NEEDS_LABELS:
            started = time.perf_counter()
            fit_posterior(project, fit)
            metrics = evaluate(project, "test", record=False).metrics
            points.append(dict(round=0, labels=0, accuracy=metrics["accuracy"], nll=metrics["nll"], ece=metrics["ece"],
                               chosen_classes=[], seconds=time.perf_counter() - started, method_used="zero-shot"))
        for round_number in range(1, rounds + 1):
            started = time.perf_counter()
            selection = select_round(project, SelectSettings(
                budget=budget, strategy=spec["strategy"], batch_mode=spec.get("batch_mode", "power"),
                seed=seed * 1000 + round_number, target_split="target" if spec.get("target") and data.has_target else None,
                cold_start=cold_start,
            ))
            select_seconds = time.perf_counter() - started
            chosen = _oracle(project, data, selection, directory, round_number)
            fitted = fit_posterior(project, fit)
            metrics = evaluate(project, "test", record=False).metrics
            points.append(dict(
                round=round_number, labels=round_number * budget, accuracy=metrics["accuracy"], nll=metrics["nll"],
                ece=metrics["ece"], chosen_classes=chosen, seconds=time.perf_counter() - started,
                select_seconds=select_seconds, fit_seconds=fitted.seconds, method_used=selection.method,
                prior_precision=fitted.prior_precision,
            ))
    finally:
        project.engine.dispose()
        if keep is not None:
            shutil.move(str(directory), str(keep))
        shutil.rmtree(directory, ignore_errors=True)
    return points


# ---------------------------------------------------------------------- statistics


@dataclass
class Curves:
    """Per method: labels (R,) and metric arrays (seeds, R) over rounds 1..R (round 0 kept apart)."""

    labels: np.ndarray
    metrics: dict[str, np.ndarray]  # accuracy, nll, ece, seconds -> (seeds, R)
    chosen: list[list[list[int]]]  # seeds x rounds x classes chosen
    zero_shot: np.ndarray | None = None  # (seeds,) round-0 accuracy
    first_method: str = ""
    seeds: list[int] = field(default_factory=list)

    def on_seeds(self, seeds: list[int]) -> dict[str, np.ndarray]:
        """The metric arrays restricted to `seeds` (for paired comparisons)."""
        rows = [self.seeds.index(s) for s in seeds]
        return {m: v[rows] for m, v in self.metrics.items()}

    @classmethod
    def from_runs(cls, runs: list[list[dict]], seeds: list[int] | None = None) -> Curves:
        zero = [r[0]["accuracy"] for r in runs if r and r[0]["round"] == 0]
        rounds = [[p for p in r if p["round"] > 0] for r in runs]
        labels = np.array([p["labels"] for p in rounds[0]])
        metrics = {m: np.array([[p[m] for p in r] for r in rounds], dtype=float) for m in ("accuracy", "nll", "ece", "seconds")}
        return cls(labels, metrics, [[p["chosen_classes"] for p in r] for r in rounds],
                   np.array(zero) if len(zero) == len(runs) else None, rounds[0][0].get("method_used", ""),
                   list(seeds) if seeds is not None else list(range(len(runs))))


def area_under_curve(labels: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Trapezoid area under accuracy vs labels over rounds 1..R, divided by the label range
    (a mean accuracy); per seed: (seeds,)."""
    if len(labels) < 2:
        return accuracy[:, 0]
    return np.trapezoid(accuracy, labels, axis=1) / (labels[-1] - labels[0])


def labels_to_reach(labels: np.ndarray, mean_accuracy: np.ndarray, target: float) -> int | None:
    from alkit.metrics.calibration import labels_to_reach as first_reach

    reached = first_reach(labels, mean_accuracy, target - 1e-12)
    return None if reached is None else int(reached)


def rare_class_labels(chosen: list[list[list[int]]], pool_counts: np.ndarray) -> tuple[float, float]:
    """(mean labels of the RARE_CLASSES rarest pool classes at the end, mean classes seen after round 1)."""
    rare = np.argsort(pool_counts, kind="stable")[:RARE_CLASSES]
    final = [np.isin(np.concatenate([np.asarray(c) for c in seed_rounds]), rare).sum() for seed_rounds in chosen]
    first = [len(np.unique(seed_rounds[0])) for seed_rounds in chosen]
    return float(np.mean(final)), float(np.mean(first))


def summarise(curves: dict[str, Curves], pool_counts: np.ndarray) -> list[dict]:
    reference = curves.get("random")
    target = float(reference.metrics["accuracy"][:, -1].mean()) if reference else None
    peer_reference = curves.get("lr-random")
    peer_target = float(peer_reference.metrics["accuracy"][:, -1].mean()) if peer_reference else None
    rows = []
    for name, c in curves.items():
        acc = c.metrics["accuracy"]
        auc = area_under_curve(c.labels, acc)
        mean = acc.mean(axis=0)
        row = dict(
            method=name, auc=auc.mean(), auc_std=auc.std(), final=acc[:, -1].mean(), final_std=acc[:, -1].std(),
            nll=c.metrics["nll"][:, -1].mean(), ece=c.metrics["ece"][:, -1].mean(),
            to_random=labels_to_reach(c.labels, mean, target) if target is not None else None,
            to_lr_random=labels_to_reach(c.labels, mean, peer_target) if peer_target is not None else None,
            seconds=c.metrics["seconds"].mean(), seeds=len(acc),
        )
        row["rare"], row["classes_round1"] = rare_class_labels(c.chosen, pool_counts)
        common = sorted(set(c.seeds) & set(reference.seeds)) if reference is not None else []
        row["seed_list"] = c.seeds
        if reference is not None and name != "random" and common:
            mine, theirs = c.on_seeds(common)["accuracy"], reference.on_seeds(common)["accuracy"]
            diff = mine - theirs  # paired by seed
            auc_paired = area_under_curve(c.labels, mine) - area_under_curve(reference.labels, theirs)
            mean_d, std_d = diff.mean(axis=0), diff.std(axis=0, ddof=1) if len(diff) > 1 else np.zeros(diff.shape[1])
            worst = int(np.argmin(mean_d + std_d))
            row.update(worst_round=worst + 1, worst_diff=mean_d[worst], worst_std=std_d[worst],
                       below_random=bool(np.any(mean_d < -std_d)), auc_diff=auc_paired.mean(),
                       auc_diff_std=auc_paired.std(ddof=1) if len(common) > 1 else 0.0, paired_seeds=len(common))
        rows.append(row)
    return rows


def _fmt(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def targets(rows: list[dict], budget: int, rounds: int) -> str:
    """Issue 15's three targets for the product default and for the best alkit method by AUC."""
    by_name = {r["method"]: r for r in rows}
    peers = [r for r in rows if r["method"] not in ALKIT_METHODS and r["method"] != "lr-random"]
    best_peer = max(peers, key=lambda r: r["auc"]) if peers else None
    alkit = [r for r in rows if r["method"] in ALKIT_METHODS and r["method"] != "random"]
    best = max(alkit, key=lambda r: r["auc"]) if alkit else None
    lines = []
    for label, r in (("product default", by_name.get(PRODUCT_DEFAULT)), ("best alkit method by AUC", best)):
        if r is None or "random" not in by_name:
            continue
        total = budget * rounds
        reach = r["to_random"]
        first = (f"reaches random's final accuracy ({by_name['random']['final']:.3f}) with "
                 f"{'more than ' + str(total) if reach is None else reach} labels "
                 f"({'not reached' if reach is None else f'{100 * reach / total:.0f}%'} of random's {total}; target <= 60%: "
                 f"{'met' if reach is not None and reach <= 0.6 * total else 'missed'})")
        second = ("no peer ran" if best_peer is None else
                  f"AUC {r['auc']:.3f} vs best peer {best_peer['method']} {best_peer['auc']:.3f} "
                  f"(target >=: {'met' if r['auc'] >= best_peer['auc'] else 'missed'})")
        third = ("-" if "worst_diff" not in r else
                 f"worst round {r['worst_round']}: {r['worst_diff']:+.3f} +- {r['worst_std']:.3f} vs random "
                 f"(target: never below by more than 1 sd: {'missed' if r['below_random'] else 'met'})")
        lines.append(f"- {label} `{r['method']}`: {first}; {second}; {third}.")
    return "\n".join(lines)


def summary_table(rows: list[dict], budget: int, rounds: int) -> str:
    total = budget * rounds
    lines = [
        "| method | seeds | AUC (mean acc, rounds 1-R) | AUC - random's (paired) | final acc | final NLL | final ECE | labels to random's final | % of random's labels | labels to LR-random's final | worst round vs random (paired mean +- sd) | labels of 3 rarest classes | classes in round 1 | s/round |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        to_random = r["to_random"]
        worst = "-" if "worst_diff" not in r else f"r{r['worst_round']}: {r['worst_diff']:+.3f} +- {r['worst_std']:.3f}{' (below)' if r['below_random'] else ''}"
        lines.append(
            f"| {r['method']} | {r['seeds']} | {r['auc']:.3f} +- {r['auc_std']:.3f} | "
            f"{'-' if 'auc_diff' not in r else format(r['auc_diff'], '+.3f') + ' +- ' + format(r['auc_diff_std'], '.3f')} | "
            f"{r['final']:.3f} +- {r['final_std']:.3f} | {r['nll']:.3f} | "
            f"{r['ece']:.3f} | {to_random if to_random is not None else f'> {total}'} | "
            f"{'-' if to_random is None else f'{100 * to_random / total:.0f}%'} | "
            f"{r['to_lr_random'] if r['to_lr_random'] is not None else f'> {total}'} | {worst} | {r['rare']:.1f} | "
            f"{r['classes_round1']:.1f} | {r['seconds']:.2f} |"
        )
    return "\n".join(lines)


def per_round_table(curves: dict[str, Curves], metric: str) -> str:
    any_curve = next(iter(curves.values()))
    zero = any(c.zero_shot is not None for c in curves.values()) and metric == "accuracy"
    header = (["0"] if zero else []) + [str(n) for n in any_curve.labels]
    lines = [f"| {metric} \\ labels | " + " | ".join(header) + " |", "| --- " * (len(header) + 1) + "|"]
    for name, c in curves.items():
        values = c.metrics[metric]
        cells = [f"{m:.3f} +- {s:.3f}" for m, s in zip(values.mean(axis=0), values.std(axis=0))]
        if zero:
            cells.insert(0, "-" if c.zero_shot is None else f"{c.zero_shot.mean():.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cold_start_table(runs: dict[str, list[float]]) -> str:
    """Round-1 accuracy per first-round selector, paired with random over seeds."""
    lines = ["| first round | round-1 accuracy | paired diff vs random | seeds better than random |", "| --- | --- | --- | --- |"]
    base = np.array(runs.get("random", []))
    for name, values in runs.items():
        values = np.array(values)
        if name == "random" or len(values) != len(base):
            lines.append(f"| {name} | {values.mean():.3f} +- {values.std():.3f} | - | - |")
            continue
        diff = values - base
        lines.append(f"| {name} | {values.mean():.3f} +- {values.std():.3f} | {diff.mean():+.3f} +- "
                     f"{diff.std(ddof=1) if len(diff) > 1 else 0.0:.3f} | {(diff > 0).sum()} of {len(diff)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- running


class RunStore:
    """Raw results as JSON lines, keyed by (setting, method, seed), so reruns resume.

    Reads every `<prefix>*.jsonl` in the directory (several processes, e.g. one per data set,
    each append to their own file) and appends to `path`."""

    def __init__(self, path: Path, fresh: bool, prefix: str = "runs"):
        self.path = path
        self.runs: dict[str, list[dict]] = {}
        files = sorted(path.parent.glob(f"{prefix}*.jsonl"))
        if fresh:
            for file in files:
                file.unlink()
            files = []
        for file in files:
            for line in file.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                self.runs[entry["key"]] = entry["points"]

    def get(self, key: str):
        return self.runs.get(key)

    def put(self, key: str, points: list[dict]) -> None:
        self.runs[key] = points
        with self.path.open("a") as handle:
            handle.write(json.dumps({"key": key, "points": points}) + "\n")


@dataclass
class Job:
    """One (data set, budget, rounds) setting and the methods/peers it compares."""

    data: object
    budget: int
    rounds: int
    names: list[str]
    runs: dict[str, dict[int, list[dict]]] = field(default_factory=dict)  # name -> seed -> points

    def curves(self) -> tuple[dict[str, Curves], list[int]]:
        """Per method, curves over the seeds it finished (paired comparisons use the intersection);
        and the seeds every method finished."""
        ran = [name for name in self.names if self.runs.get(name)]
        if not ran:
            return {}, []
        common = sorted(set.intersection(*(set(self.runs[n]) for n in ran)))
        return {n: Curves.from_runs([self.runs[n][s] for s in sorted(self.runs[n])], sorted(self.runs[n])) for n in ran}, common


def past(stop_at: float | None) -> bool:
    return stop_at is not None and time.time() >= stop_at


def run_job_seed(job: Job, seed: int, settings: Settings, store: RunStore, log, names=None) -> None:
    from benchmarks.al_suite_peers import run_peer

    data = job.data
    base = settings.key(data.name, job.budget, job.rounds)
    for name in names if names is not None else job.names:
        key = f"{base}|{name}|{seed}"
        points = store.get(key)
        if points is None:
            if past(settings.stop_at):
                continue  # later names may be stored (another process ran them)
            started = time.perf_counter()
            try:
                if name in ALKIT_METHODS:
                    points = run_alkit(data, name, seed, job.rounds, job.budget, settings.workdir)
                else:
                    points = run_peer(name, data, job.rounds, job.budget, seed)
            except Exception as error:  # one failing method must not lose the others' results
                log(f"  {data.name} B{job.budget} seed {seed} {name}: FAILED {type(error).__name__}: {error}")
                continue
            store.put(key, points)
            acc = " ".join(f"{p['accuracy']:.3f}" for p in points)
            log(f"  {data.name} B{job.budget} seed {seed} {name:<24} acc {acc} ({time.perf_counter() - started:.0f} s, "
                f"load {os.getloadavg()[0]:.1f})")
        job.runs.setdefault(name, {})[seed] = points


def run_cold_start(data, settings: Settings, store: RunStore, log) -> dict[str, list[float]]:
    """Round 1 with no labels and no prompts: each cold-start selector vs a random first round."""
    budget = settings.budget
    out: dict[str, list[float]] = {}
    for seed in range(settings.seeds):
        row = {}
        for selector in ("random", *COLD_START_SELECTORS):
            key = f"{settings.key(data.name, budget, 1)}|cold:{selector}|{seed}"
            points = store.get(key)
            if points is None:
                if past(settings.stop_at):
                    break
                method = "random" if selector == "random" else "bald-power"
                points = run_alkit(data, method, seed, 1, budget, settings.workdir,
                                   cold_start=selector if selector != "random" else "typiclust")
                store.put(key, points)
            row[selector] = points[-1]["accuracy"]
        if len(row) == 1 + len(COLD_START_SELECTORS):  # paired: all selectors for this seed
            for selector, value in row.items():
                out.setdefault(selector, []).append(value)
    if out:
        log(f"  {data.name} cold start round-1 accuracy: " + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in out.items()))
    return out


def plot(curves: dict[str, Curves], path: Path, title: str) -> Path:
    """Mean test accuracy vs labels per method with a +-1 sd band over seeds; alkit solid, peers dashed;
    the zero-shot accuracy (when there is one) as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9.5, 5.2))
    palette = plt.get_cmap("tab20").colors
    colours = palette[0::2] + palette[1::2]  # ten distinct hues first, then their light versions
    try:
        for index, (name, c) in enumerate(curves.items()):
            values = c.metrics["accuracy"]
            mean, sd = values.mean(axis=0), values.std(axis=0)
            style = "-" if name in ALKIT_METHODS else "--"
            colour = colours[index % len(colours)]
            axis.plot(c.labels, mean, style, marker="o", markersize=2.5, color=colour, label=f"{name} ({len(values)} seeds)",
                      linewidth=2.2 if name in ("random", PRODUCT_DEFAULT) else 1.3)
            if len(values) > 1:
                axis.fill_between(c.labels, mean - sd, mean + sd, color=colour, alpha=0.12, linewidth=0)
        zero = [c.zero_shot.mean() for c in curves.values() if c.zero_shot is not None]
        if zero:
            axis.axhline(zero[0], linestyle=":", color="grey", label=f"zero-shot {zero[0]:.3f}")
        axis.set_xlabel("labelled pool images")
        axis.set_ylabel("test accuracy")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=100)
    finally:
        plt.close(figure)
    return path


def write_results(data, settings: Settings, sections: list[tuple[int, int, dict[str, Curves], list[int]]],
                  cold: dict[str, list[float]] | None, load: tuple[float, float], seconds: float, log) -> tuple[Path, list[dict]]:
    counts = data.pool_counts()
    lines = [
        f"# Active-learning suite: `{data.name}`",
        "",
        f"Written by `python -m benchmarks.al_suite{' --smoke' if settings.smoke else ''}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). {data.description}.",
        "",
        f"Pool {len(data.pool_y)} images (per class: {', '.join(str(int(c)) for c in counts)}), test {len(data.test_y)} "
        f"labelled images, {'a target split for EPIG' if data.has_target else 'no target split'}; "
        "seeds paired (listed per section): every method sees the same pool, test split and "
        "seed list; alkit methods differ from `alkit select`/`alkit fit` defaults only in the flags their names state "
        f"(`{PRODUCT_DEFAULT}` is the product's default). Peers use multinomial LogisticRegression with C tuned by "
        "3-fold CV each round (`benchmarks/al_suite_peers.py`). Accuracy/NLL/ECE (15 bins) on the test split after "
        "each round; +- is the standard deviation over seeds. AUC: area under accuracy vs labels over rounds 1..R "
        "divided by the label range. Worst round vs random: the round where (paired mean difference + its sd) is "
        "lowest; '(below)' marks a round where the method is below random by more than one sd.",
        "",
        (f"Tabulated from stored runs (`--report-only`); the runs' own wall times are the s/round columns, measured "
         "at load averages 9-14 on 2 cores shared by several engineers: indicative only." if settings.report_only else
         f"Wall time {seconds:.0f} s; load average {load[0]:.1f} at start, {load[1]:.1f} at end (2 cores shared by "
         "several engineers: timings are indicative only)."),
    ]
    summary_rows = []
    for budget, rounds, curves, seeds in sections:
        if not curves:
            lines += ["", f"## {rounds} rounds of {budget}", "", "Not run (time limit or pool too small).", ""]
            continue
        rows = summarise(curves, counts)
        summary_rows.append((budget, rounds, rows))
        first = {name: c.first_method for name, c in curves.items() if name in ALKIT_METHODS}
        short = sorted({len(c.seeds) for c in curves.values()})
        shortfall = ("" if short == [settings.seeds] else
                     f" Planned {settings.seeds} seeds; methods have {', '.join(map(str, short))} (time limit: the "
                     "second tier of methods and later seeds were cut first; each method's figures use its own seeds, "
                     "paired differences use the seeds shared with random).")
        lines += ["", f"## {rounds} rounds of {budget}", "", f"Seeds finished by every method: {seeds}.{shortfall}", "",
                  summary_table(rows, budget, rounds), "", "Issue 15's targets:", "", targets(rows, budget, rounds), ""]
        if first:
            lines += ["First-round selection by the product: " + ", ".join(f"{k}: {v}" for k, v in sorted(set(first.items()))[:3]) + " ...", ""]
        for metric in ("accuracy", "nll", "ece", "seconds"):
            lines += [f"### {metric} per round", "", per_round_table(curves, metric), ""]
        png = settings.out / f"al_suite_{data.name}_B{budget}.png"
        plot(curves, png, f"{data.name}: {rounds} rounds of {budget} (mean, band +-1 sd over seeds)")
        lines += [f"![learning curves]({png.name})", ""]
    if cold:
        lines += ["## Cold start (round 1, no labels, no prompts)", "",
                  f"Round-1 accuracy of the product's cold-start selectors (`alkit select` with no posterior possible: "
                  f"no labels, no text embeddings) against a random first round, {len(cold['random'])} seeds, "
                  f"{settings.budget} labels.", "", cold_start_table(cold), ""]
    path = settings.out / f"results_al_suite_{data.name}.md"
    path.write_text("\n".join(lines) + "\n")
    log(f"wrote {path}")
    return path, summary_rows


README_BEGIN = "<!-- al_suite:begin (written by python -m benchmarks.al_suite) -->"
README_END = "<!-- al_suite:end -->"


def compact_summary(all_rows: dict[str, list], budget: int) -> str:
    """One row per method, per data set `AUC / final acc / labels to random's final` at `budget`;
    then the alkit methods' mean AUC rank across the data sets (1 = best)."""
    tables = {name: {r["method"]: (rounds, r) for b, rounds, rows in sections if b == budget for r in rows}
              for name, sections in all_rows.items()}
    tables = {k: v for k, v in tables.items() if v}
    if not tables:
        return ""
    methods = list(dict.fromkeys(m for t in tables.values() for m in t))
    lines = ["| method | " + " | ".join(f"{n}: AUC / final / labels to random's final" for n in tables) + " |",
             "| --- " * (len(tables) + 1) + "|"]
    for method in methods:
        cells = []
        for table in tables.values():
            if method not in table:
                cells.append("-")
                continue
            rounds, r = table[method]
            reach = r["to_random"] if r["to_random"] is not None else f"> {budget * rounds}"
            cells.append(f"{r['auc']:.3f} / {r['final']:.3f} / {reach}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    ranks: dict[str, list[int]] = {}
    for table in tables.values():
        alkit = sorted((m for m in table if m in ALKIT_METHODS and not ALKIT_METHODS[m].get("zero_shot_only")),
                       key=lambda m: -table[m][1]["auc"])
        for rank, method in enumerate(alkit, start=1):
            ranks.setdefault(method, []).append(rank)
    complete = {m: r for m, r in ranks.items() if len(r) == len(tables)}
    if complete:
        order = sorted(complete, key=lambda m: np.mean(complete[m]))
        lines += ["", f"Mean AUC rank of alkit's methods across {', '.join(tables)} (B={budget}, 1 = best): "
                  + ", ".join(f"{m} {np.mean(complete[m]):.1f}" for m in order) + "."]
    return "\n".join(lines)


def update_readme(readme: Path, body: str) -> bool:
    """Replace the text between the suite's markers in `readme` (only that section)."""
    if not readme.is_file():
        return False
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(head + README_BEGIN + "\n" + body.strip() + "\n" + README_END + tail)
    return True


def parse(argv) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--large-budget", type=int, default=100, help="0 disables the large-budget variant")
    parser.add_argument("--large-rounds", type=int, default=10)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="first tier (all seeds first)")
    parser.add_argument("--extra-methods", default=",".join(EXTRA_METHODS), help="second tier, after the first")
    parser.add_argument("--large-methods", default=",".join(DEFAULT_LARGE_METHODS))
    parser.add_argument("--peers", default=None, help="default: all peers whose packages are installed")
    parser.add_argument("--no-cold-start", action="store_true")
    parser.add_argument("--cold-start-only", action="store_true", help="only the round-1 cold-start comparison")
    parser.add_argument("--smoke", action="store_true", help="1 seed, 2 rounds of 5, tiny data, digits + mnist_lt")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stop-at", default=None, help="HH:MM UTC: start no new run after this; tables use finished seeds")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing; tables from the stored runs (newest cached data sets)")
    parser.add_argument("--code-key", default=None,
                        help="stored runs' code fingerprint (printed at start): KEY, or name=KEY,name=KEY per data set")
    args = parser.parse_args(argv)
    from benchmarks.al_suite_peers import PEERS

    split = lambda text: tuple(t for t in text.split(",") if t)  # noqa: E731
    peers = split(args.peers) if args.peers is not None else tuple(p for p in PEERS if _peer_available(p))
    settings = Settings(
        datasets=split(args.datasets), seeds=args.seeds, rounds=args.rounds, budget=args.budget,
        large_budget=args.large_budget, large_rounds=args.large_rounds, methods=split(args.methods),
        extra_methods=split(args.extra_methods),
        large_methods=split(args.large_methods), peers=peers, large_peers=tuple(p for p in peers if p != "modal-qbc"),
        cold_start=not args.no_cold_start, out=args.out, cache=args.cache, fresh=args.fresh, threads=args.threads,
        stop_at=time.time() if args.report_only else _utc_today_at(args.stop_at) if args.stop_at else None,
        code_key=args.code_key, report_only=args.report_only, cold_start_only=args.cold_start_only,
    )
    if args.smoke:
        settings.smoke = True
        settings.seeds, settings.rounds, settings.budget, settings.large_budget = 1, 2, 5, 0
        if args.datasets == ",".join(DATASETS):
            settings.datasets = ("digits", "mnist_lt")
        if args.methods == ",".join(DEFAULT_METHODS):
            settings.methods = ("random", "margin-top", "bald-power", "epig-top")
        if args.extra_methods == ",".join(EXTRA_METHODS):
            settings.extra_methods = ()
    unknown = [m for m in (*settings.methods, *settings.extra_methods, *settings.large_methods) if m not in ALKIT_METHODS]
    unknown += [p for p in settings.peers if p not in PEERS] + [d for d in settings.datasets if d not in DATASETS]
    if unknown:
        parser.error(f"unknown names {unknown}; methods {list(ALKIT_METHODS)}, peers {list(PEERS)}, data sets {list(DATASETS)}")
    return settings


def _utc_today_at(hhmm: str) -> float:
    """Epoch seconds of HH:MM UTC today (tomorrow if that has passed by more than 12 hours)."""
    import calendar

    hours, minutes = (int(part) for part in hhmm.split(":"))
    now = time.gmtime()
    moment = calendar.timegm((now.tm_year, now.tm_mon, now.tm_mday, hours, minutes, 0, 0, 0, 0))
    return moment + 86400 if moment < time.time() - 12 * 3600 else moment


def _peer_available(peer: str) -> bool:
    import importlib.util

    module = {"skactiveml": "skactiveml", "modal": "modAL"}.get(peer.split("-")[0])
    return module is None or importlib.util.find_spec(module) is not None


def main(argv=None) -> int:
    import torch

    from benchmarks.al_suite_data import cache_root, load_dataset

    settings = parse(argv)
    log = lambda text: print(text, flush=True)  # noqa: E731
    log(f"code fingerprint {code_fingerprint()} (pass --code-key to report these runs later)")
    torch.set_num_threads(settings.threads)
    cache = settings.cache or (Path(tempfile.mkdtemp(prefix="al_suite-")) if settings.smoke else cache_root())
    cache.mkdir(parents=True, exist_ok=True)
    settings.workdir = Path(tempfile.mkdtemp(prefix="al_suite-work-"))
    settings.out.mkdir(parents=True, exist_ok=True)
    prefix = "smoke-runs" if settings.smoke else "runs"
    store = RunStore(cache / f"{prefix}-{'-'.join(settings.datasets)}.jsonl", settings.fresh, prefix)
    missing = [p for p in ("skactiveml-margin", "modal-qbc") if not _peer_available(p)]
    if missing:
        log(f"peers not run (install the bench extra: pip install -e '.[bench]'): {', '.join(missing)}")
    all_rows = {}
    try:
        datasets, jobs, large_jobs, load = {}, [], [], os.getloadavg()[0]
        started = time.perf_counter()
        for name in settings.datasets:
            data = datasets[name] = load_dataset(name, root=cache, small=settings.smoke, log=log,
                                                 reuse_latest=settings.report_only)
            log(f"{name}: pool {len(data.pool_y)}, test {len(data.test_y)}, per-class pool counts {data.pool_counts().tolist()}")
            usable = lambda names: [m for m in names if data.zero_shot or not ALKIT_METHODS[m].get("zero_shot_only")]  # noqa: E731
            jobs.append(Job(data, settings.budget, settings.rounds,
                            usable(settings.methods) + list(settings.peers) + usable(settings.extra_methods)))
            if settings.large_budget and settings.large_budget * settings.large_rounds <= len(data.pool_y) * 0.8:
                methods = [m for m in settings.large_methods if data.zero_shot or not ALKIT_METHODS[m].get("zero_shot_only")]
                large_jobs.append(Job(data, settings.large_budget, settings.large_rounds, methods + list(settings.large_peers)))
            elif settings.large_budget:
                log(f"{name}: pool {len(data.pool_y)} too small for {settings.large_rounds} rounds of {settings.large_budget}")
        # seeds outer, so a time limit leaves every data set with the same (paired) seeds
        first_tier = set(settings.methods) | set(settings.peers)
        if settings.cold_start_only:
            jobs, large_jobs = [], []
        for seed in range(settings.seeds):
            for job in jobs:
                run_job_seed(job, seed, settings, store, log, [n for n in job.names if n in first_tier])
        cold = {name: run_cold_start(data, settings, store, log) for name, data in datasets.items()
                if settings.cold_start and not data.zero_shot}
        for seed in range(settings.seeds):
            for job in jobs:
                run_job_seed(job, seed, settings, store, log, [n for n in job.names if n not in first_tier])
        for seed in range(settings.seeds):
            for job in large_jobs:
                run_job_seed(job, seed, settings, store, log)
        for name, data in datasets.items():
            sections = [(job.budget, job.rounds, *job.curves()) for job in jobs + large_jobs if job.data is data]
            path, rows = write_results(data, settings, sections, cold.get(name), (load, os.getloadavg()[0]),
                                       time.perf_counter() - started, log)
            all_rows[name] = rows
            for budget, rounds, table_rows in rows:
                log(f"\n{name}: {rounds} rounds of {budget}\n" + summary_table(table_rows, budget, rounds))
            if cold.get(name):
                log("\n" + cold_start_table(cold[name]))
    finally:
        shutil.rmtree(settings.workdir, ignore_errors=True)
    budgets = [settings.budget] + ([settings.large_budget] if settings.large_budget else [])
    summary = "\n\n".join(f"**{settings.budget if b == settings.budget else settings.large_budget} labels per round**\n\n"
                           + compact_summary(all_rows, b) for b in budgets if compact_summary(all_rows, b))
    if summary:
        log("\nsummary across data sets\n" + summary)
        stamp = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, data sets {', '.join(all_rows)}; "
                 "details, per-round mean +- sd, NLL/ECE, class coverage and wall times in "
                 + ", ".join(f"[`results_al_suite_{n}.md`](results_al_suite_{n}.md)" for n in all_rows) + ".")
        if not settings.smoke and update_readme(settings.out / "README.md", stamp + "\n\n" + summary):
            log(f"updated {settings.out / 'README.md'} (the al_suite section)")
    (cache / ("summary-smoke.json" if settings.smoke else "summary.json")).write_text(
        json.dumps({k: [(b, r, rows) for b, r, rows in v] for k, v in all_rows.items()}, default=float, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
