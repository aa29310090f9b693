"""A shortened `alkit demo`: the real loop (tiny CLIP via pretrained=PATH, BayesVLM, select,
simulated annotator, refit, eval) on a small slice of the bundled digits."""

import json

import pytest


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from typer.testing import CliRunner

    from alkit_cli.main import app

    directory = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(
        app, ["demo", "--dir", str(directory), "--rounds", "2", "--budget", "10", "--pool-size", "200", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return directory, json.loads(result.stdout), result.stderr


def test_demo_prints_learning_curves_for_strategy_and_random(demo_run):
    _, payload, log = demo_run
    assert set(payload["curves"]) == {"bald", "random"}
    for points in payload["curves"].values():
        assert [p["labels"] for p in points] == [0, 10, 20]
        assert all(0 <= p["accuracy"] <= 1 and 0 <= p["ece"] <= 1 for p in points)
    # Both loops start from the same zero-shot posterior.
    assert payload["curves"]["bald"][0] == payload["curves"]["random"][0]
    assert "pretrained=PATH" in log and "zero-shot" not in payload["files"]


def test_demo_uses_bayesvlm_and_records_rounds(demo_run):
    directory, _, _ = demo_run
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{directory / 'project-bald' / 'alkit.db'}")
    with engine.connect() as connection:
        kinds = set(connection.execute(sa.text("SELECT kind FROM posteriors")).scalars())
        rounds = connection.execute(sa.text("SELECT id, status, posterior_version FROM rounds ORDER BY id")).all()
        labelled_test = connection.execute(
            sa.text("SELECT count(*) FROM round_items JOIN images ON images.id = round_items.image_id WHERE images.split = 'test'")
        ).scalar()
    engine.dispose()
    assert kinds == {"bayesvlm"}
    assert [r.status for r in rounds] == ["labeled", "labeled"]
    assert all(r.posterior_version is not None for r in rounds)
    assert labelled_test == 0  # test images are never selected


def test_demo_writes_report_with_embedded_plots(demo_run):
    _, payload, _ = demo_run
    from pathlib import Path

    for key in ("learning_curve_accuracy", "learning_curve_ece", "reliability"):
        data = Path(payload["files"][key]).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    html = Path(payload["files"]["report"]).read_text()
    assert html.count("data:image/png;base64,") == 3


def test_report_renders_in_headless_chromium(demo_run, tmp_path):
    """Debian's chromium (installed by .ci/run) loads the self-contained report: the DOM it
    builds holds the three embedded plots, and its screenshot is not blank."""
    import shutil
    import subprocess
    from pathlib import Path

    import numpy as np
    from PIL import Image

    _, payload, _ = demo_run
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium not found: apt-get install chromium (.ci/run does)"
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = Path(payload["files"]["report"]).as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert dom.count('src="data:image/png;base64,') == 3 and "alkit demo" in dom
    shot = tmp_path / "report.png"
    subprocess.run([*flags, "--window-size=900,1400", f"--screenshot={shot}", url], capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 10  # text, tables and plots, not an empty page


def test_demo_through_a_real_label_studio_server(ls, token_env, tmp_path):
    """`alkit demo --label-studio URL`: rounds are pushed as tasks, answered through the API
    and pulled back as Label Studio labels."""
    from typer.testing import CliRunner

    from alkit_cli.main import app

    directory = tmp_path / "demo-ls"
    result = CliRunner().invoke(
        app, ["demo", "--dir", str(directory), "--rounds", "1", "--budget", "5", "--pool-size", "60",
              "--label-studio", ls.url, "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [p["labels"] for p in payload["curves"]["bald"]] == [0, 5]
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{directory / 'project-bald' / 'alkit.db'}")
    with engine.connect() as connection:
        sources = connection.execute(sa.text("SELECT source, count(*) FROM labels WHERE annotator != 'test-key' GROUP BY source")).all()
        tasks = connection.execute(sa.text("SELECT count(*) FROM ls_tasks")).scalar()
    engine.dispose()
    assert [tuple(row) for row in sources] == [("labelstudio", 5)] and tasks == 5
    assert token_env not in result.output
