"""A shortened `alkit demo`: the real loop (tiny CLIP via pretrained=PATH, the default posterior, select,
simulated annotator, refit, eval) on a small slice of the bundled digits."""

import json

import pytest


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from typer.testing import CliRunner

    from alkit_cli.main import app

    directory = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(
        app, ["demo", "--dir", str(directory), "--rounds", "2", "--budget", "10", "--pool-size", "200", "--seeds", "2",
              "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return directory, json.loads(result.stdout), result.stderr


def test_demo_prints_learning_curves_for_strategy_and_random(demo_run):
    _, payload, log = demo_run
    assert set(payload["curves"]) == {"margin", "random"} and payload["seeds"] == 2
    for name, points in payload["curves"].items():
        assert [p["labels"] for p in points] == [0, 10, 20]
        assert all(0 <= p["accuracy_min"] <= p["accuracy"] <= p["accuracy_max"] <= 1 and 0 <= p["ece"] <= 1 for p in points)
        per_seed = payload["seed_curves"][name]
        assert len(per_seed) == 2
        for index, point in enumerate(points):  # the mean curve is the mean of the seeds' curves
            assert point["accuracy"] == pytest.approx(sum(curve[index]["accuracy"] for curve in per_seed) / 2)
    # For each seed, both loops start from the same zero-shot posterior.
    for chosen, random in zip(payload["seed_curves"]["margin"], payload["seed_curves"]["random"]):
        assert chosen[0] == random[0]
    assert "pretrained=PATH" in log and "zero-shot" not in payload["files"]


def test_demo_measures_its_encoder(demo_run):
    """Zero-shot and linear-probe accuracy, printed and in the JSON, recomputed here independently."""
    _, payload, log = demo_run
    encoder = payload["encoder"]
    assert 0 < encoder["zero_shot_accuracy"] < 1 and 0 < encoder["linear_probe_accuracy"] <= 1
    assert encoder["pool_size"] == 2000 and encoder["test_size"] == 500
    assert f"{encoder['linear_probe_accuracy']:.3f} (the ceiling)" in log

    import numpy as np

    from alkit.demo.data import class_prompts, images_to_tensor, make_demo_split
    from alkit.demo.tiny_clip import create_tiny_clip
    from alkit.demo.zero_shot import zero_shot_probs

    split = make_demo_split(seed=0)
    model, preprocess, tokenizer = create_tiny_clip(payload["model_checkpoint"])
    probs = zero_shot_probs(model, tokenizer, images_to_tensor(split.test_images, preprocess), class_prompts())
    assert encoder["zero_shot_accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == split.test_labels)))


def test_demo_uses_the_default_posterior_and_records_rounds(demo_run):
    directory, _, _ = demo_run
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{directory / 'project-margin' / 'alkit.db'}")
    with engine.connect() as connection:
        kinds = set(connection.execute(sa.text("SELECT kind FROM posteriors")).scalars())
        rounds = connection.execute(sa.text("SELECT id, status, posterior_version FROM rounds ORDER BY id")).all()
        labelled_test = connection.execute(
            sa.text("SELECT count(*) FROM round_items JOIN images ON images.id = round_items.image_id WHERE images.split = 'test'")
        ).scalar()
    engine.dispose()
    assert kinds == {"laplace_head"}  # `alkit fit`'s default, zero-shot from the class prompts
    assert [r.status for r in rounds] == ["labeled", "labeled"]
    assert all(r.posterior_version is not None for r in rounds)
    assert labelled_test == 0  # test images are never selected


def test_demo_writes_report_with_embedded_plots(demo_run):
    _, payload, _ = demo_run
    from pathlib import Path

    for key in ("learning_curve_accuracy", "learning_curve_ece", "reliability", "confusion_matrix"):
        data = Path(payload["files"][key]).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    html = Path(payload["files"]["report"]).read_text()
    for section in ("demo-comparison", "gallery", "class-balance", "scores", "learning-curve", "calibration", "confusion"):
        assert f'<section id="{section}">' in html
    # The selected images of both rounds (10 each) are in the gallery, plus the plots.
    assert html.count('<div class="tile') == 20 and html.count("data:image/png;base64,") >= 20 + 6
    assert "linear probe trained on all 2000 pool labels (the ceiling)" in html


def test_report_renders_in_headless_chromium(demo_run, tmp_path):
    """Debian's chromium (installed by .ci/run) loads the self-contained demo report: every
    image decodes, every section is there, and its screenshot is not blank."""
    from pathlib import Path

    from browser import probe_static_page, screenshot_std

    _, payload, _ = demo_run
    page = Path(payload["files"]["report"])
    seen = probe_static_page(page, tmp_path)
    assert seen["broken"] == 0 and seen["images"] == page.read_text().count("<img ") >= 26
    assert seen["sections"][:2] == ["demo-comparison", "gallery"]
    assert screenshot_std(page.as_uri(), tmp_path) > 10


@pytest.mark.labelstudio
def test_demo_through_a_real_label_studio_server(ls, token_env, tmp_path):
    """`alkit demo --label-studio URL --ls-local-files-root DIR`: rounds are pushed as tasks whose
    images the server serves (the labelling page in headless Chromium shows a decoded image),
    answered through the API and pulled back as Label Studio labels."""
    from typer.testing import CliRunner

    from alkit_cli.main import app
    from browser import label_studio_task_images, labelling_panel_image

    directory = tmp_path / "demo-ls"
    result = CliRunner().invoke(
        app, ["demo", "--dir", str(directory), "--rounds", "1", "--budget", "5", "--pool-size", "60", "--seeds", "1",
              "--label-studio", ls.url, "--ls-local-files-root", str(ls.files_root), "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [p["labels"] for p in payload["curves"]["margin"]] == [0, 5]
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{directory / 'project-margin' / 'alkit.db'}")
    with engine.connect() as connection:
        sources = connection.execute(sa.text("SELECT source, count(*) FROM labels WHERE annotator != 'test-key' GROUP BY source")).all()
        task = connection.execute(sa.text("SELECT ls_project_id, task_id FROM ls_tasks ORDER BY task_id LIMIT 1")).one()
        tasks = connection.execute(sa.text("SELECT count(*) FROM ls_tasks")).scalar()
    engine.dispose()
    assert [tuple(row) for row in sources] == [("labelstudio", 5)] and tasks == 5
    assert token_env not in result.output
    found = label_studio_task_images(ls.url, task.ls_project_id, task.task_id, tmp_path)
    image = labelling_panel_image(found)
    assert image is not None and image["width"] == 28, f"the labelling panel shows no decoded task image: {found}"
    assert any("local-files" in i["src"] and i["width"] > 0 for i in found)  # the data manager's thumbnail too


def test_demo_label_studio_without_a_files_root_says_which_setting(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from alkit_cli.main import app

    monkeypatch.setenv("ALKIT_LS_TOKEN", "x")
    result = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path / "d"), "--label-studio", "http://127.0.0.1:9"])
    assert result.exit_code == 4
    assert "--ls-local-files-root" in result.output and "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT" in result.output


@pytest.mark.labelstudio
def test_pushed_task_of_an_ordinary_project_shows_its_image(ls, token_env, cli, tmp_path):
    """`alkit ls connect --local-files-root` + `alkit push` on a plain project: the labelling
    page of a pushed task decodes the image that Label Studio serves from local files."""
    import numpy as np
    import sqlalchemy as sa

    from browser import label_studio_task_images, labelling_panel_image
    from conftest import write_png

    folder = ls.files_root / f"ordinary-{tmp_path.name}"
    paths = [write_png(folder / f"img_{i}.png", seed=900 + i, size=(32, 24)) for i in range(6)]
    rng = np.random.default_rng(0)
    npz = tmp_path / "e.npz"
    np.savez(npz, paths=np.array([str(p) for p in paths]), embeddings=rng.normal(size=(6, 8)).astype(np.float32),
             text_embeddings=rng.normal(size=(2, 8)).astype(np.float32))
    for args in (("init",), ("add", folder), ("classes", "set", "cat", "dog"), ("embed", "--from", npz, "--name", "x"),
                 ("select", "--budget", "2"),
                 ("ls", "connect", "--url", ls.url, "--create", f"ordinary {tmp_path.name}", "--local-files-root", ls.files_root),
                 ("push",)):
        result = cli(*args)
        assert result.exit_code == 0, (args, result.output)
    engine = sa.create_engine(f"sqlite:///{cli.project_dir / 'alkit.db'}")
    with engine.connect() as connection:
        task = connection.execute(sa.text("SELECT ls_project_id, task_id FROM ls_tasks ORDER BY task_id LIMIT 1")).one()
    engine.dispose()
    found = label_studio_task_images(ls.url, task.ls_project_id, task.task_id, tmp_path)
    image = labelling_panel_image(found)
    assert image is not None and image["width"] == 32, f"the labelling panel shows no decoded task image: {found}"
