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
