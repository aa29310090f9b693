"""CliRunner tests for the foundation commands: exit codes, messages, JSON that parses."""

import json
import subprocess
import sys

import pytest

from alkit_cli.main import app


def walk_commands(group, prefix=()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if hasattr(command, "commands"):
            yield from walk_commands(command, prefix + (name,))


def test_every_command_has_help(runner):
    import typer.main

    root = typer.main.get_command(app)
    commands = list(walk_commands(root))
    assert len(commands) >= 8
    for path, command in commands:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, path
        assert (command.help or "").strip(), f"{' '.join(path)} has no help text"


def test_help_imports_nothing_heavy():
    code = (
        "import sys; from alkit_cli.main import app; from typer.testing import CliRunner;"
        "CliRunner().invoke(app, ['--help']);"
        "heavy = [m for m in ('torch', 'open_clip', 'faiss', 'label_studio_sdk', 'matplotlib', 'sklearn', 'scipy') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_commands_before_init_say_how_to_fix(cli):
    result = cli("status")
    assert result.exit_code == 3
    assert "alkit init" in result.stderr


def test_init_status_json_contract(cli):
    first = cli("init", "--json")
    assert first.exit_code == 0 and json.loads(first.stdout)["created"] is True
    again = cli("init", "--json")
    assert json.loads(again.stdout)["created"] is False
    status = json.loads(cli("status", "--json").stdout)
    for key in ("images_total", "images_by_status", "images_by_split", "classes", "labels_total", "rounds"):
        assert key in status
    assert status["images_total"] == 0 and status["rounds"] == 0
    assert (cli.project_dir / "alkit.db").exists()


def test_full_foundation_flow(cli, make_images, tmp_path):
    paths = make_images(6)
    test_paths = make_images(2, folder="test_images", start_seed=100)
    cli("init")
    assert cli("add", str(paths[0].parent)).exit_code == 0
    assert json.loads(cli("add", str(test_paths[0].parent), "--split", "test", "--json").stdout)["added"] == 2
    result = cli("classes", "set", "cat", "dog", "--template", "a photo of a {}", "--json")
    assert json.loads(result.stdout)["classes"][1] == {"name": "dog", "prompt": "a photo of a dog"}
    assert "dog" in cli("classes", "list").stdout
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text(
        "path,label\n"
        f"{paths[0]},cat\n"
        f"images/{paths[1].name},dog\n"  # relative to the CSV's folder
        f"{paths[2]},horse\n"
        f"{tmp_path / 'missing.png'},cat\n"
    )
    imported = json.loads(cli("labels", "import", str(labels_csv), "--json").stdout)
    assert imported["imported"] == 2
    assert imported["unknown_classes"] == {"horse": 1}
    assert imported["unknown_paths"] == [str(tmp_path / "missing.png")]
    again = json.loads(cli("labels", "import", str(labels_csv), "--json").stdout)
    assert again["imported"] == 0 and again["unchanged"] == 2
    status = json.loads(cli("status", "--json").stdout)
    assert status["images_by_split"] == {"pool": 6, "test": 2}
    assert status["images_by_status"] == {"registered": 6, "labeled": 2}
    assert status["labels_per_class"] == {"cat": 1, "dog": 1}
    exported = [json.loads(line) for line in cli("labels", "export", "--format", "json").stdout.splitlines()]
    assert {(row["path"], row["label"]) for row in exported} == {(str(paths[0]), "cat"), (str(paths[1]), "dog")}
    csv_out = cli("labels", "export").stdout.splitlines()
    assert csv_out[0].startswith("path,label") and len(csv_out) == 3


def test_strict_import_writes_nothing(cli, make_images, tmp_path):
    paths = make_images(2)
    cli("init")
    cli("add", str(paths[0].parent))
    cli("classes", "set", "cat", "dog")
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text(f"path,label\n{paths[0]},cat\n{paths[1]},horse\n")
    result = cli("labels", "import", str(labels_csv), "--strict")
    assert result.exit_code == 4 and "nothing imported" in result.stderr
    assert json.loads(cli("status", "--json").stdout)["labels_total"] == 0


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (("add", "--split", "nonsense", "x"), 4, "unknown split"),
        (("classes", "set"), 4, "give class names"),
        (("classes", "set", "a", "a"), 4, "duplicate class names"),
        (("classes", "set", "a", "--template", "no placeholder"), 4, "placeholder"),
        (("labels", "import", "/nonexistent.csv"), 4, "cannot read"),
        (("labels", "export", "--format", "xml"), 4, "unknown format"),
    ],
)
def test_input_errors_map_to_exit_codes(cli, args, code, fragment):
    cli("init")
    result = cli(*args)
    assert result.exit_code == code, result.output
    assert fragment in result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_labels_need_classes_first(cli, tmp_path):
    cli("init")
    labels_csv = tmp_path / "l.csv"
    labels_csv.write_text("path,label\n/x.png,cat\n")
    result = cli("labels", "import", str(labels_csv))
    assert result.exit_code == 5 and "alkit classes set" in result.stderr


def test_csv_without_header_is_an_input_error(cli, tmp_path):
    cli("init")
    cli("classes", "set", "cat")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    result = cli("labels", "import", str(bad))
    assert result.exit_code == 4 and "path,label" in result.stderr


def test_dropping_a_labelled_class_is_refused(cli, make_images, tmp_path):
    [path] = make_images(1)
    cli("init")
    cli("add", str(path))
    cli("classes", "set", "cat", "dog")
    (tmp_path / "l.csv").write_text(f"path,label\n{path},cat\n")
    cli("labels", "import", str(tmp_path / "l.csv"))
    result = cli("classes", "set", "dog")
    assert result.exit_code == 5 and "cat (1 labels)" in result.stderr
    reordered = cli("classes", "set", "dog", "cat", "--json")
    assert [c["name"] for c in json.loads(reordered.stdout)["classes"]] == ["dog", "cat"]


def test_debug_shows_traceback(runner, tmp_path):
    result = runner.invoke(app, ["--project", str(tmp_path / "none"), "--debug", "status"])
    assert result.exit_code == 3 and "Traceback" in result.stderr


def test_project_env_var_and_db_flag(runner, tmp_path, monkeypatch):
    target = tmp_path / "envproj"
    monkeypatch.setenv("ALKIT_PROJECT", str(target))
    result = runner.invoke(app, ["init", "--db", "other.db", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["db"].endswith("envproj/other.db")
    assert (target / "other.db").exists()
    assert 'db = "other.db"' in (target / "alkit.toml").read_text()


def test_exit_codes_command_lists_codes(runner):
    result = runner.invoke(app, ["exit-codes"])
    assert result.exit_code == 0 and "external service" in result.stdout
