"""`alkit report` on a small real project with two rounds, labels, evaluations and Label Studio
votes: the page's numbers against the database, and the page itself in headless Chromium."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest

NAMES = ["cat", "dog", "horse"]
SECTIONS = ["gallery", "class-balance", "scores", "learning-curve", "calibration", "confusion", "agreement"]


@pytest.fixture
def two_round_project(cli, imported_project, tmp_path):
    """30 pool + 12 test images with imported embeddings; zero-shot eval, then 2 x (select 4, label, fit, eval)."""
    data = imported_project(count=30, dim=12, names=NAMES, noise=0.9, seed=3, test_count=12, size=(40, 30),
                            label_test=True)
    truth = data.truth
    for args in (("fit",), ("eval",)):
        assert cli(*args).exit_code == 0, args
    for round_number in (1, 2):
        output = cli("select", "--budget", "4", "--seed", str(round_number), "--json").stdout
        selected = [json.loads(line) for line in output.splitlines()]  # one JSON line per selected image
        csv = tmp_path / f"round{round_number}.csv"
        csv.write_text("path,label\n" + "".join(f"{i['path']},{truth[i['path']]}\n" for i in selected))
        for args in (("labels", "import", csv), ("fit",), ("eval",)):
            assert cli(*args).exit_code == 0, args
    return truth


def _add_label_studio_votes(project_dir):
    """Two annotators on two unselected pool images: they agree on one and disagree (cat vs dog) on the other."""
    import sqlalchemy as sa

    from alkit.project import open_project
    from alkit.storage.db import utcnow
    from alkit.storage.schema import classes, images, labels, round_items

    project = open_project(project_dir)
    with project.engine.begin() as connection:
        ids = dict(connection.execute(sa.select(classes.c.name, classes.c.id)).all())
        first, second = connection.execute(
            sa.select(images.c.id).where(images.c.split == "pool", images.c.id.not_in(sa.select(round_items.c.image_id)))
            .order_by(images.c.id.desc()).limit(2)).scalars()
        now = utcnow() + timedelta(days=1)  # after every round, so the rounds' pools are unchanged
        connection.execute(labels.insert(), [
            dict(image_id=first, class_id=ids["cat"], source="labelstudio", annotator="ann", created_at=now),
            dict(image_id=first, class_id=ids["dog"], source="labelstudio", annotator="bob", created_at=now),
            dict(image_id=second, class_id=ids["horse"], source="labelstudio", annotator="ann", created_at=now),
            dict(image_id=second, class_id=ids["horse"], source="labelstudio", annotator="bob", created_at=now),
        ])


def test_report_shows_rounds_labels_scores_and_evaluations(cli, two_round_project, tmp_path):
    from alkit.project import open_project
    from alkit.report.collect import round_pool_scores, round_summaries

    truth = two_round_project
    _add_label_studio_votes(cli.project_dir)
    result = cli("report", "--out", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["sections"] == SECTIONS and payload["rounds"] == 2
    assert payload["thumbnails"] == 8 and payload["evaluations"] == 3
    page = (tmp_path / "out" / "report.html").read_text()
    assert all(f'<section id="{s}">' in page for s in SECTIONS)
    assert "http://" not in page and "https://" not in page  # nothing fetched at view time
    # Each selected image is shown with the label it got from the answer key.
    project = open_project(cli.project_dir)
    summaries = round_summaries(project)
    for summary in summaries:
        assert [i.rank for i in summary.items] == [1, 2, 3, 4]
        for item in summary.items:
            assert item.label == truth[item.path] and item.predicted_class in NAMES and 0 < item.probability <= 1
            assert f"label: <b>{item.label}</b>" in page
    # Class balance: cumulative counts; the 2 Label Studio images were in no round, then 4 labels per round.
    rows = re.findall(r'<td class="name">([a-z0-9 ]+)</td>((?:<td[^>]*>\d+</td>)+)</tr>', page)
    balance = {name: [int(c) for c in re.findall(r">(\d+)<", cells)] for name, cells in rows}
    # The 1-1 tie resolves to the newest vote (same time: the later row, "dog"); then horse; then the total.
    assert balance["labelled outside any round"] == [0, 1, 1, 2]
    assert balance["after round 1"][-1] == 6 and balance["after round 2"][-1] == 10
    assert sum(balance["after round 2"][:3]) == 10
    # The pool scores are recomputed with the round's posterior: the chosen images get back their stored score.
    for summary in summaries:
        ids, scores, note = round_pool_scores(project, summary)
        assert len(ids) == 30 - 4 * (summary.number - 1), note
        rescored = dict(zip(ids.tolist(), scores.tolist()))
        for item in summary.items:
            assert rescored[item.image_id] == pytest.approx(item.score, rel=1e-5, abs=1e-7)
    # Learning curve from the recorded evaluations, zero-shot first; agreement from Label Studio votes.
    assert page.count('<td class="name">zero-shot</td>') == 1
    assert "2 images were labelled by more than one annotator; 1 of them got different classes" in page
    assert "ann: cat, bob: dog" in page
    for name in ("class_balance", "scores_round_1", "scores_round_2", "learning_curve", "reliability", "confusion_matrix"):
        assert name in payload["figures"]


def test_report_without_rounds_or_evaluations_says_what_to_run(cli, make_images, tmp_path):
    make_images(3)
    for args in (("init",), ("add", tmp_path / "images"), ("classes", "set", *NAMES)):
        assert cli(*args).exit_code == 0
    result = cli("report", "--json")
    assert result.exit_code == 0, result.output
    page = (cli.project_dir / "report" / "report.html").read_text()
    assert "alkit select --budget B" in page and "run `alkit eval`" in page and "run alkit embed" in page


def test_report_renders_in_headless_chromium(cli, two_round_project, tmp_path):
    """Chromium loads the page: every <img> decoded (naturalWidth > 0), every section there,
    and the screenshot is not blank."""
    from browser import probe_static_page, screenshot_std

    assert cli("report", "--out", tmp_path / "out").exit_code == 0
    page = tmp_path / "out" / "report.html"
    seen = probe_static_page(page, tmp_path)
    assert seen["images"] == page.read_text().count("<img ") and seen["images"] >= 8 + 6  # thumbnails and figures
    assert seen["broken"] == 0 and seen["sections"] == SECTIONS
    assert screenshot_std(page.as_uri(), tmp_path) > 10
