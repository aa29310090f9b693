"""The same foundation code against a real PostgreSQL server started by the test."""

import json

from pgserver import fresh_database


def test_migrations_match_schema_on_postgres(pg_url):
    from test_migrations import schema_differences

    from alkit.storage.db import create_db_engine
    from alkit.storage.migrations import HEAD, upgrade

    engine = create_db_engine(fresh_database(pg_url, "migrations"))
    assert upgrade(engine, target=1) == [1]
    assert upgrade(engine)[-1] == HEAD
    assert schema_differences(engine) == []


def test_foundation_commands_on_postgres(pg_url, runner, tmp_path, make_images):
    from alkit_cli.main import app

    url = fresh_database(pg_url, "foundation")
    project = ["--project", str(tmp_path / "pgproject")]
    paths = make_images(4)
    assert runner.invoke(app, [*project, "init", "--db", url]).exit_code == 0
    added = json.loads(runner.invoke(app, [*project, "add", str(paths[0].parent), "--json"]).stdout)
    assert added["added"] == 4
    again = json.loads(runner.invoke(app, [*project, "add", str(paths[0].parent), "--json"]).stdout)
    assert again["added"] == 0 and again["already_registered"] == 4
    runner.invoke(app, [*project, "classes", "set", "a", "b"])
    (tmp_path / "l.csv").write_text(f"path,label\n{paths[0]},a\n{paths[1]},b\n")
    assert json.loads(runner.invoke(app, [*project, "labels", "import", str(tmp_path / "l.csv"), "--json"]).stdout)["imported"] == 2
    status = json.loads(runner.invoke(app, [*project, "status", "--json"]).stdout)
    assert status["labels_per_class"] == {"a": 1, "b": 1}
    assert status["images_by_status"] == {"registered": 2, "labeled": 2}
    assert "password" not in (tmp_path / "pgproject" / "alkit.toml").read_text()
