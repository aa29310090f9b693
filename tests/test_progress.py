"""Progress goes to stderr only: stages and bars never corrupt `--json` stdout, are silent
with --json unless `alkit --progress`, and follow the terminal test otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alkit.progress import decide


@pytest.mark.parametrize(
    "flag, json_mode, terminal, shown",
    [(None, False, True, True), (None, True, True, False), (None, False, False, False),
     (True, True, False, True), (False, False, True, False)],
)
def test_the_rule(flag, json_mode, terminal, shown):
    assert decide(flag, json_mode, terminal) is shown


@pytest.fixture
def pool(cli, make_images, tmp_path):
    rng = np.random.default_rng(0)
    paths = make_images(10)
    np.savez(tmp_path / "emb.npz", paths=np.array([str(p) for p in paths]), embeddings=rng.normal(size=(10, 8)),
             text_embeddings=rng.normal(size=(2, 8)))
    assert cli("init").exit_code == 0
    assert cli("classes", "set", "a", "b").exit_code == 0
    return paths, tmp_path / "emb.npz"


def test_progress_goes_to_stderr_and_json_stdout_still_parses(cli, pool, runner):
    from alkit_cli.main import app

    paths, npz = pool

    def run(*args):
        result = runner.invoke(app, ["--project", str(cli.project_dir), "--progress", *args])
        assert result.exit_code == 0, result.output
        return result

    added = run("add", str(paths[0].parent), "--json")
    assert json.loads(added.stdout)["added"] == 10 and "add" in added.stderr  # the tqdm bar
    run("embed", "--from", str(npz), "--json")
    fitted = run("fit", "--json")
    assert json.loads(fitted.stdout)["version"] == 1
    assert "fit: checking labels and fitting the posterior ..." in fitted.stderr and "fit: laplace_head posterior" in fitted.stderr
    selected = run("select", "--budget", "3", "--json")
    rows = [json.loads(line) for line in selected.stdout.splitlines()]
    assert len(rows) == 3 and "select: scoring 10 pool images with margin" in selected.stderr
    assert "select: chose 3 images" in selected.stderr


def test_json_without_progress_flag_keeps_stderr_quiet(cli, pool):
    paths, npz = pool
    assert cli("add", str(paths[0].parent)).exit_code == 0
    assert cli("embed", "--from", str(npz)).exit_code == 0
    fitted = cli("fit", "--json")
    assert fitted.exit_code == 0 and fitted.stderr == ""
    selected = cli("select", "--budget", "2", "--json")
    assert selected.exit_code == 0 and selected.stderr == ""


def test_the_cli_sees_json_mode_and_the_flag(cli, monkeypatch):
    import alkit.progress

    seen = []
    monkeypatch.setattr(alkit.progress, "decide", lambda flag, json_mode, terminal: seen.append((flag, json_mode)) or False)
    assert cli("init").exit_code == 0
    cli("status", "--json")
    cli("status")
    from alkit_cli.main import app
    from typer.testing import CliRunner

    CliRunner().invoke(app, ["--project", str(cli.project_dir), "--no-progress", "status", "--json"])
    assert seen[1:] == [(None, True), (None, False), (False, True)]
