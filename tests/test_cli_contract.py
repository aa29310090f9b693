"""The CLI contract, walked over every command: help that shows defaults and is never cut,
the README's exit-code table, one-line errors with their documented codes, absolute paths in
--json output, a broken pipe that is not an error, and moved or copied projects."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer

from alkit_cli.main import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands(command, path=()):
    subcommands = getattr(command, "commands", None)
    if subcommands:
        for name, sub in subcommands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path, command


ALL_COMMANDS = sorted(path for path, _ in _commands(typer.main.get_command(app)))


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=" ".join)
def test_every_command_help_shows_every_default_and_cuts_nothing(runner, path):
    result = runner.invoke(app, [*path, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    command = dict(_commands(typer.main.get_command(app)))[path]
    for param in command.params:
        if getattr(param, "param_type_name", "") != "option" or param.hidden or (param.is_flag and not param.secondary_opts):
            continue
        record = param.get_help_record(command.context_class(command))
        text = " ".join(record[1].split())
        assert any(mark in text.lower() for mark in ("default:", "[required]", "[env var:")), (path, param.opts, text)
        assert "[default: ]" not in text and not re.search(r"\s\.(\s|$)", text), (path, param.opts, text)  # nothing eaten by markup
    assert "…" not in result.output and not _cut_lines(result.output), result.output


def _cut_lines(text: str) -> list[str]:
    """Lines that end in "..." (click's truncation of a long summary); the usage line's "[ARGS]..." is not one."""
    return [line for line in text.splitlines() if line.rstrip().endswith("...") and not line.startswith("Usage:")]


def test_top_level_command_list_is_not_cut(runner):
    text = runner.invoke(app, ["--help"], terminal_width=80).output
    assert not _cut_lines(text) and "…" not in text
    assert "Pull -> refit -> select -> push, once; safe for cron" in " ".join(text.split())


def test_readme_exit_code_table_matches_alkit_exit_codes(runner):
    section = README.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    readme = {int(code): meaning.replace("`", "").strip()
              for code, meaning in re.findall(r"^\| (\d) \| (.+?) \|$", section, re.MULTILINE)}
    listed = runner.invoke(app, ["exit-codes"]).output.splitlines()[2:]
    cli_table = {int(line[:6]): line[6:].strip() for line in listed if line.strip()}
    assert readme == cli_table


def test_broken_pipe_on_stdout_exits_0_quietly(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "alkit_cli.main", "exit-codes"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=tmp_path)
    process.stdout.close()  # the reader went away before alkit wrote anything (like `| head -0`)
    code = process.wait(timeout=120)
    assert code == 0 and process.stderr.read() == b""


@pytest.fixture
def fitted(cli, make_images, tmp_path):
    """Imported embeddings, two classes, four pool labels and three test labels, posterior v1."""
    rng = np.random.default_rng(0)
    pool = make_images(12)
    held_out = make_images(3, folder="held_out", start_seed=100)
    everything = [*pool, *held_out]
    np.savez(tmp_path / "emb.npz", paths=np.array([str(p) for p in everything]),
             embeddings=rng.normal(size=(len(everything), 8)), text_embeddings=rng.normal(size=(2, 8)))
    assert cli("init").exit_code == 0
    assert cli("add", str(pool[0].parent)).exit_code == 0
    assert cli("add", str(held_out[0].parent), "--split", "test").exit_code == 0
    assert cli("classes", "set", "a", "b").exit_code == 0
    assert cli("embed", "--from", str(tmp_path / "emb.npz")).exit_code == 0
    rows = [f"{pool[i]},{'ab'[i % 2]}\n" for i in range(4)] + [f"{p},a\n" for p in held_out]
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(rows))
    assert cli("labels", "import", str(tmp_path / "labels.csv")).exit_code == 0
    assert cli("fit").exit_code == 0
    return pool


def _paths_in(value, key=""):
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _paths_in(item, name)
    elif isinstance(value, list):
        for item in value:
            yield from _paths_in(item, key)
    elif isinstance(value, str) and (key in ("path", "project", "config", "report", "directory", "text_features")
                                     or key.endswith(("_png", "path", "_dir")) or value.endswith((".png", ".html", ".npz", ".safetensors"))):
        yield key, value


def test_json_paths_are_absolute(cli, fitted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outputs = [
        cli("eval", "--plot", "relative_plots", "--json"),
        cli("status", "--json"),
        cli("fit", "--json", "--force"),
        cli("predict", "--json"),
        cli("select", "--budget", "2", "--strategy", "random", "--json"),
        cli("init", "--json"),
        cli("add", str(fitted[0].parent), "--json"),
        cli("embed", "--from", str(tmp_path / "emb.npz"), "--json"),
        cli("labels", "import", str(tmp_path / "labels.csv"), "--json"),
        cli("labels", "export", "--format", "json"),
        cli("classes", "set", "a", "b", "--json"),
        cli("index", "build", "--json"),
        cli("similar", "--id", "1", "-k", "3", "--json"),
        cli("dedup", "--threshold", "0.5", "--json"),
    ]
    found = []
    for result in outputs:
        assert result.exit_code == 0, result.output
        for line in result.stdout.splitlines():
            found.extend(_paths_in(json.loads(line)))
    assert any(value.endswith(".png") for _, value in found)
    relative = [(key, value) for key, value in found if not os.path.isabs(value)]
    assert not relative, relative
    assert (tmp_path / "relative_plots" / "reliability.png").is_file()


def _one_line_error(result, code, fragment):
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    if code == 2:  # click's usage error: "Usage:", "Try ...", and one "Error:" line
        assert fragment in " ".join(result.stderr.split()), result.stderr
        return
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.stderr


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (("select", "--budget", "2", "--seed", "-5"), 2, "--seed must be >= 0"),
        (("select", "--budget", "2", "--seed", str(2**70)), 2, "<= 4294967295"),
        (("fit", "--seed", str(2**70)), 2, "--seed must be"),
        (("select", "--budget", "2", "--beta", "-1"), 2, "--beta must be >= 0"),
        (("select", "--budget", "2", "--beta", "nan"), 2, "--beta must be a finite number"),
        (("select", "--budget", "2", "--candidates", "5"), 2, "--candidates only applies with --query, --like or --target"),
        (("select", "--budget", "2", "--target", "nowhere"), 2, "--target must be one of pool, target, test"),
        (("select", "--budget", "2", "--like", "/nope.png"), 4, "--like /nope.png: no such file"),
        (("fit", "--pseudo-data", "-1"), 2, "--pseudo-data must be > 0"),
        (("fit", "--factors", "/nope"), 4, "--factors /nope: no such directory"),
        (("fit", "--pairs", "/nope.csv"), 4, "--pairs /nope.csv: no such file"),
        (("fit", "--factors", "/a", "--pairs", "/b.csv"), 2, "--factors only applies with no --pairs"),
        (("fit", "--posterior", "laplace_head", "--pairs", "/b.csv"), 2, "--factors/--pairs only applies with --posterior bayesvlm"),
        (("similar", "--text", "a cat", "--id", "3"), 2, "give exactly one of IMAGE, --text or --id"),
        (("predict", "--split", "bogus"), 2, "--split must be one of pool, target, test"),
        (("eval", "--split", "bogus"), 2, "--split must be one of"),
        (("eval", "--bins", "0"), 2, "--bins must be >= 1"),
        (("dedup", "--threshold", "1.5"), 2, "--threshold must be > 0 and <= 1"),
        (("classes", "set", "", "b"), 4, "empty class name"),
        (("classes", "set", "a\nb", "c"), 4, "newline, tab or other control character"),
        (("embed", "--name", "x"), 2, "--name only applies with --from"),
        (("add", "/nonexistent/dir"), 4, "do not exist"),
        (("embed", "--from", "/nonexistent.npz"), 4, "does not exist"),
    ],
)
def test_bad_values_are_one_line_errors(cli, fitted, args, code, fragment):
    _one_line_error(cli(*args), code, fragment)


@pytest.mark.parametrize(
    "config, code, fragment",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00binary", 3, "not valid TOML"),
        (b'db = "notadriver://x"\n', 3, "names no known database"),
        (f"seed = {2**70}\n".encode(), 3, "seed must be >= 0 and <= 4.29497e+09"),
        (b"seed = -1\n", 3, "seed must be >= 0"),
        (b"batch_size = 0\n", 3, "batch_size must be >= 1"),
    ],
)
def test_bad_alkit_toml_is_a_one_line_config_error(cli, config, code, fragment):
    assert cli("init").exit_code == 0
    (cli.project_dir / "alkit.toml").write_bytes(config)
    _one_line_error(cli("status"), code, fragment)


def test_environment_seed_out_of_range_is_a_config_error(cli, monkeypatch):
    assert cli("init").exit_code == 0
    monkeypatch.setenv("ALKIT_SEED", "-5")
    _one_line_error(cli("status"), 3, "environment variable ALKIT_SEED: seed must be >= 0")


def test_hub_download_failure_is_one_clean_line(cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the download fails at once, as with no network
    assert cli("init").exit_code == 0
    result = cli("embed", "--model", "RN50", "--pretrained", "openai", "--no-progress")
    _one_line_error(result, 6, "cannot load RN50 weights 'openai'")
    assert "ERROR:root" not in result.output and "check the network or download the checkpoint" in result.stderr
    assert result.stderr.rstrip().endswith("pass --pretrained PATH")


def test_duplicate_label_rows_are_reported(cli, fitted, tmp_path):
    (tmp_path / "dup.csv").write_text(f"path,label\n{fitted[6]},a\n{fitted[6]},b\n{fitted[7]},a\n{fitted[7]},a\n")
    payload = json.loads(cli("labels", "import", str(tmp_path / "dup.csv"), "--json").stdout)
    assert sorted((item["path"], item["labels"], item["kept"]) for item in payload["duplicates"]) == [
        (str(fitted[6]), ["a", "b"], "b"), (str(fitted[7]), ["a", "a"], "a")]
    text = cli("labels", "import", str(tmp_path / "dup.csv"))
    assert "2 images are named by several rows (1 with different labels; the last row wins" in text.stderr
    strict = cli("labels", "import", str(tmp_path / "dup.csv"), "--strict")
    _one_line_error(strict, 4, "1 images have rows with different labels")


def test_lock_message_never_shows_question_marks(tmp_path):
    from alkit.locking import _holder

    empty = tmp_path / "x.lock"
    empty.write_text("")
    with open(empty, "a+", encoding="utf-8") as handle:
        assert _holder(handle, attempts=2, pause_s=0) == "another alkit process (starting up)"
    empty.write_text('{"pid": 42, "since": "2026-01-01T00:00:00+00:00"}')
    with open(empty, "a+", encoding="utf-8") as handle:
        assert _holder(handle) == "pid 42 since 2026-01-01T00:00:00+00:00"


def _select_runs(project_dir):
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["--project", str(project_dir), "select", "--budget", "2", "--json"])
    assert result.exit_code == 0, result.output
    return result


def test_moved_and_copied_projects_use_their_own_posterior(cli, fitted, tmp_path):
    import sqlalchemy as sa

    original = cli.project_dir
    engine = sa.create_engine(f"sqlite:///{original / 'alkit.db'}")
    with engine.connect() as connection:
        stored = connection.execute(sa.text("SELECT path FROM posteriors")).scalar_one()
    engine.dispose()
    assert not os.path.isabs(stored) and stored.startswith(".alkit/")
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    moved = tmp_path / "moved"
    original.rename(moved)  # the copy's posterior rows must not point into the original
    _select_runs(copy)
    _select_runs(moved)


def test_old_absolute_posterior_rows_are_read_from_the_project_itself(cli, fitted, tmp_path):
    import sqlalchemy as sa

    original = cli.project_dir
    engine = sa.create_engine(f"sqlite:///{original / 'alkit.db'}")
    with engine.begin() as connection:  # as written by alkit before paths were relative
        connection.execute(sa.text("UPDATE posteriors SET path = :prefix || path"), {"prefix": f"{original}/"})
    engine.dispose()
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    shutil.rmtree(original / ".alkit" / "posteriors")  # the copy must not need the original's files
    _select_runs(copy)
