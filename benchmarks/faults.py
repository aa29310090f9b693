"""Fault injection as a script: kill -9 at seeded random points, disk trouble, a hostile
Label Studio; prints one table row per scenario (cases tried, passed, data lost, duplicates).

    python -m benchmarks.faults --repeats 3

Data lost / duplicates count pool rows (images, embeddings, labels, Label Studio task
records) missing from / extra in the final state compared with a clean run of the same
work. Both must be 0. The full set of fault tests is `pytest tests/test_faults_*.py`.
"""

from __future__ import annotations

import argparse
import errno
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from faults_support import (  # noqa: E402
    check_invariants, compare, exported_task, fake_label_studio, init_pool, kill_after_ready, kill_when,
    snapshot, start_alkit, write_npz, write_tiny_pngs,
)


def _count(directory: Path, table: str) -> int:
    import sqlite3

    with sqlite3.connect(directory / "alkit.db", timeout=5) as connection:
        return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def kill_add(work: Path, images_dir: Path, clean: dict, seed: int) -> tuple[bool, int, int]:
    from alkit.project import init_project, open_project
    from alkit.workflows.ingest import add_images

    directory = work / f"add-{seed}"
    init_project(directory)
    threshold = random.Random(seed).randint(1, 240)
    process = start_alkit(directory, "add", str(images_dir), patches={
        "set": {"alkit.workflows.ingest:CHUNK_SIZE": 8}, "slow": {"alkit.workflows.ingest:_record_chunk": 0.02}})
    killed = kill_when(process, lambda: _count(directory, "images") >= threshold)
    add_images(open_project(directory), [str(images_dir)], show_progress=False)
    lost, dup = compare(clean, snapshot(directory))
    return killed and not check_invariants(directory), lost, dup


def kill_embed(work: Path, images: list, npz: Path, clean: dict, seed: int) -> tuple[bool, int, int]:
    from alkit.project import open_project
    from alkit.workflows.embed_import import import_embeddings

    directory = work / f"embed-{seed}"
    init_pool(directory, images)
    threshold = random.Random(seed).randint(1, 80)
    process = start_alkit(directory, "embed", "--from", str(npz), "--name", "imported", "--shard-rows", "4",
                          patches={"slow": {"alkit.storage.shards:write_shard": 0.03}})
    killed = kill_when(process, lambda: _count(directory, "embeddings") >= threshold)
    import_embeddings(open_project(directory), npz, "imported", show_progress=False)
    lost, dup = compare(clean, snapshot(directory))
    return killed and not check_invariants(directory), lost, dup


def kill_select(work: Path, images: list, npz: Path, csv: Path, clean: dict, seed: int) -> tuple[bool, int, int]:
    from alkit.workflows.fit import fit_posterior
    from alkit.workflows.select import SelectSettings, select_round

    directory = work / f"select-{seed}"
    project = init_pool(directory, images, npz, labels_csv=csv)
    fit_posterior(project)
    ready = work / f"ready-{seed}"
    process = start_alkit(directory, "select", "--budget", "6", "--seed", "0", ready_file=ready,
                          patches={"slow": {"alkit.workflows.select:_record_round": 0.2}})
    kill_after_ready(process, ready, random.Random(seed).uniform(0.0, 1.5))
    partial = snapshot(directory)["rounds"]
    whole = partial in ([], clean["rounds"])
    if not partial:
        select_round(project, SelectSettings(budget=6, seed=0))
    final = snapshot(directory)
    lost, dup = compare(clean, final, sections=("images", "embeddings", "labels", "rounds"))
    return whole and final["rounds"] == clean["rounds"] and not check_invariants(directory), lost, dup


def disk_full(work: Path, images: list, npz: Path, clean: dict) -> tuple[bool, int, int]:
    import alkit.storage.shards as shards
    from typer.testing import CliRunner

    from alkit_cli.main import app

    directory = work / "diskfull"
    init_pool(directory, images[:40])
    original, calls = shards.atomic_write, {"n": 0}

    def failing(path, write):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(path, write)

    shards.atomic_write = failing
    try:
        first = CliRunner().invoke(app, ["--project", str(directory), "embed", "--from", str(npz), "--name", "imported", "--shard-rows", "8"])
    finally:
        shards.atomic_write = original
    second = CliRunner().invoke(app, ["--project", str(directory), "embed", "--from", str(npz), "--name", "imported", "--shard-rows", "8"])
    lost, dup = compare(clean, snapshot(directory))
    ok = first.exit_code == 3 and "No space left" in first.stderr and second.exit_code == 0 and not check_invariants(directory)
    return ok, lost, dup


def db_locked(work: Path, images_dir: Path) -> tuple[bool, int, int]:
    import sqlite3

    import alkit.storage.db as db
    from alkit.project import init_project
    from typer.testing import CliRunner

    from alkit_cli.main import app

    directory = work / "locked"
    init_project(directory)
    saved, db.SQLITE_BUSY_TIMEOUT_MS = db.SQLITE_BUSY_TIMEOUT_MS, 300
    holder = sqlite3.connect(directory / "alkit.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        locked = CliRunner().invoke(app, ["--project", str(directory), "add", str(images_dir)])
        holder.execute("ROLLBACK")
        again = CliRunner().invoke(app, ["--project", str(directory), "add", str(images_dir)])
    finally:
        holder.close()
        db.SQLITE_BUSY_TIMEOUT_MS = saved
    ok = locked.exit_code == 8 and len(locked.stderr.strip().splitlines()) == 1 and again.exit_code == 0
    return ok, 0, 0


def hostile_label_studio(work: Path, mode: str) -> tuple[bool, int, int]:
    from alkit.errors import ExternalServiceError
    from alkit.labelstudio.client import LabelStudioClient, RetryPolicy
    from alkit.project import open_project
    from alkit.settings import write_config_file
    from alkit.workflows.pull import pull_annotations

    directory = work / f"ls-{mode}"
    init_pool(directory, write_tiny_pngs(work / f"ls-imgs-{mode}", 3), classes=("cat", "dog"))
    export = [exported_task(101, 1, "cat", 1), exported_task(102, 2, "dog", 2), exported_task(103, 3, "cat", 3)]
    token = "benchmark-token-SECRET-0123456789"
    with fake_label_studio(mode=mode, export=export, slow_s=1.0) as fake:
        write_config_file(directory, {"ls_url": fake.url, "ls_project_id": 7})
        project = open_project(directory)
        from alkit.storage.db import utcnow
        from alkit.storage.schema import ls_tasks

        with project.engine.begin() as connection:  # pushed: keyless tasks count only when alkit recorded them
            connection.execute(ls_tasks.insert(), [
                {"image_id": i, "ls_project_id": 7, "task_id": 100 + i, "round_id": None, "pushed_at": utcnow()} for i in (1, 2, 3)
            ])
        client = LabelStudioClient(fake.url, token, timeout_s=0.3, retry=RetryPolicy(attempts=2, base_delay_s=0), sleep=lambda s: None)
        try:
            pull_annotations(project, client)
            clear = False
        except ExternalServiceError as error:
            clear = "\n" not in str(error) and token not in str(error)
        during = snapshot(directory)["labels"]
        fake.mode = "ok"
        pull_annotations(project, client)
    final = snapshot(directory)["labels"]
    expected = [("img_0000.png", "cat"), ("img_0001.png", "dog"), ("img_0002.png", "cat")]
    got = [(Path(p).name, c) for p, c, *_ in final]
    lost = len(set(expected) - set(got))
    dup = len(got) - len(set(got)) + len(set(got) - set(expected))
    return clear and during == [], lost, dup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="seeded kill points per killed command")
    args = parser.parse_args()
    from alkit.project import init_project, open_project
    from alkit.workflows.fit import fit_posterior
    from alkit.workflows.ingest import add_images
    from alkit.workflows.select import SelectSettings, select_round

    rows: list[tuple[str, int, int, int, int]] = []
    work = Path(tempfile.mkdtemp(prefix="alkit-faults-"))
    started = time.perf_counter()
    try:
        images_dir = work / "images"
        images = write_tiny_pngs(images_dir, 300)
        for i in range(4):
            shutil.copy(images[i], images_dir / f"zz_dup_{i}.png")
        (images_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        init_project(work / "clean-add")
        add_images(open_project(work / "clean-add"), [str(images_dir)], show_progress=False)
        clean_add = snapshot(work / "clean-add")
        npz = write_npz(work / "e.npz", images[:120], dim=16)
        init_pool(work / "clean-embed", images[:120], npz)
        clean_embed = snapshot(work / "clean-embed")
        sel_npz = write_npz(work / "s.npz", images[:60], dim=16)
        csv = work / "labels.csv"
        csv.write_text("path,label\n" + "".join(f"{p},{('cat', 'dog', 'bird')[i % 3]}\n" for i, p in enumerate(images[:12])))
        clean_sel_project = init_pool(work / "clean-select", images[:60], sel_npz, labels_csv=csv)
        fit_posterior(clean_sel_project)
        select_round(clean_sel_project, SelectSettings(budget=6, seed=0))
        clean_select = snapshot(work / "clean-select")
        disk_npz = write_npz(work / "d.npz", images[:40], dim=16)
        init_pool(work / "clean-disk", images[:40], disk_npz)
        clean_disk = snapshot(work / "clean-disk")

        def record(name: str, outcomes: list[tuple[bool, int, int]]) -> None:
            rows.append((name, len(outcomes), sum(o[0] for o in outcomes), sum(o[1] for o in outcomes), sum(o[2] for o in outcomes)))

        seeds = range(11, 11 + args.repeats)
        record("kill -9 during add (then rerun)", [kill_add(work, images_dir, clean_add, s) for s in seeds])
        record("kill -9 during embed --from (then rerun)", [kill_embed(work, images[:120], npz, clean_embed, s) for s in seeds])
        record("kill -9 during select (then rerun)", [kill_select(work, images[:60], sel_npz, csv, clean_select, s) for s in seeds])
        record("disk full mid-embed (then rerun)", [disk_full(work, images, disk_npz, clean_disk)])
        record("database locked by another writer", [db_locked(work, images_dir)])
        record("Label Studio 401/404-HTML/500/slow/reset mid-pull", [hostile_label_studio(work, m) for m in ("401", "404html", "500", "slow", "reset")])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| scenario | cases tried | passed | data lost | duplicates |")
    print("| --- | --- | --- | --- | --- |")
    for name, tried, passed, lost, dup in rows:
        print(f"| {name} | {tried} | {passed} | {lost} | {dup} |")
    total = [sum(r[i] for r in rows) for i in range(1, 5)]
    print(f"| **total** | {total[0]} | {total[1]} | {total[2]} | {total[3]} |")
    print(f"\n{time.perf_counter() - started:.0f} s wall")
    sys.exit(0 if total[0] == total[1] and total[2] == total[3] == 0 else 1)


if __name__ == "__main__":
    main()
