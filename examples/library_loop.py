"""Use alkit from Python: one active-learning round trip without the CLI.

    python examples/library_loop.py [WORKDIR]

init -> add images -> classes -> import embeddings -> zero-shot fit -> select -> "annotate"
(labels from a known answer key) -> refit -> predict. Every step is a use-case function in
`alkit.workflows`; the CLI calls the same functions.
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path


def main(workdir: Path) -> dict:
    from alkit.project import init_project, open_project
    from alkit.workflows.classes import set_classes
    from alkit.workflows.embed_import import import_embeddings
    from alkit.workflows.fit import fit_posterior
    from alkit.workflows.ingest import add_images
    from alkit.workflows.labels import import_labels
    from alkit.workflows.predict import predict_split
    from alkit.workflows.select import SelectSettings, select_round

    sys.path.insert(0, str(Path(__file__).parent))
    from custom_scorer import make_pool

    paths, truth = make_pool(workdir, count=30)
    names = ["a", "b", "c"]
    init_project(workdir / "project")
    project = open_project(workdir / "project")
    added = add_images(project, [str(workdir / "images")], show_progress=False)
    set_classes(project, names, template="a photo of a {}")
    import_embeddings(project, workdir / "embeddings.npz", name="example", show_progress=False)
    zero_shot = fit_posterior(project)
    selection = select_round(project, SelectSettings(budget=6, strategy="bald", seed=0))

    answer_key = {path: names[label] for path, label in zip(paths, truth)}
    labels_csv = workdir / "answers.csv"
    with open(labels_csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for item in selection.items:
            writer.writerow([item.path, answer_key[item.path]])
    imported = import_labels(project, labels_csv, annotator="example")
    refit = fit_posterior(project)
    predictions = list(predict_split(project))
    accuracy = sum(p.predicted_class == answer_key[p.path] for p in predictions) / len(predictions)
    summary = {
        "added": added.added,
        "zero_shot_version": zero_shot.version,
        "selected": [item.image_id for item in selection.items],
        "labels_imported": imported.imported,
        "refit_version": refit.version,
        "refit_labels": refit.labels_used,
        "accuracy_on_pool": accuracy,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
