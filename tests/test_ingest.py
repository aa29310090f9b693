"""Ingestion: every kind of broken file is recorded with its reason, good files all register."""

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image

from alkit.imagefiles import probe_image
from alkit.storage.schema import images
from alkit.workflows.ingest import add_images
from conftest import write_png


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (no pixel data needed to trip the bomb check)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


@pytest.fixture
def messy_folder(tmp_path):
    folder = tmp_path / "messy"
    good = []
    good.append(write_png(folder / "a.png", 1))
    good.append(write_png(folder / "sub" / "b.png", 2))
    for seed, suffix in enumerate([".jpg", ".webp", ".bmp", ".tiff", ".gif"], start=10):
        source = write_png(tmp_path / "tmp" / f"x{seed}.png", seed)
        target = folder / f"c{seed}{suffix}"
        Image.open(source).convert("RGB").save(target)
        good.append(target)
    write_png(folder / "one_pixel.png", 77, size=(1, 1))
    good.append(folder / "one_pixel.png")
    shutil.copy(folder / "a.png", folder / "copy_of_a.png")  # duplicate content
    data = (folder / "a.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    jpeg = (folder / "c10.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) - 40])
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image")
    png_header_only(folder / "bomb.png", 100_000, 100_000)
    os.symlink(folder / "loop.png", folder / "loop.png")
    (folder / "notes.txt").write_text("ignored")
    bad_name = os.fsencode(folder) + b"/bad\xffname.png"
    with open(bad_name, "wb") as handle:
        handle.write((folder / "sub" / "b.png").read_bytes() + b"")
    return folder, good


EXPECTED_REASONS = {
    "truncated.png": "truncated",
    "truncated.jpg": "truncated",
    "zero.png": "zero bytes",
    "text.jpg": "not an image",
    "bomb.png": "decompression bomb",
    "loop.png": "symlink loop",
    "bad\\xffname.png": "not valid UTF-8",
}


def test_messy_folder_registers_good_and_records_each_rejection(project, messy_folder):
    folder, good = messy_folder
    result = add_images(project, [str(folder)])
    assert result.added == len(good)
    assert result.duplicates == 1
    assert result.ignored == 1
    reasons = {Path(item["path"]).name: item["reason"] for item in result.rejected}
    assert set(reasons) == set(EXPECTED_REASONS)
    for name, fragment in EXPECTED_REASONS.items():
        assert fragment in reasons[name], (name, reasons[name])
    with project.engine.connect() as connection:
        rows = {Path(r.path).name: r for r in connection.execute(sa.select(images))}
    for path in good:
        row = rows[path.name]
        assert row.status == "registered" and Path(row.path).is_absolute()
        with Image.open(path) as image:
            assert (row.width, row.height) == image.size
    stored_rejections = {name for name, row in rows.items() if row.status == "rejected"}
    assert stored_rejections == set(EXPECTED_REASONS)


def test_re_adding_is_idempotent(project, messy_folder):
    folder, good = messy_folder
    add_images(project, [str(folder)])
    again = add_images(project, [str(folder)])
    assert again.added == 0
    assert again.already_registered == len(good)
    assert again.duplicates == 1  # the copy's path is not stored, so it is probed (and reported) again
    with project.engine.connect() as connection:
        count = connection.execute(sa.select(sa.func.count()).select_from(images).where(images.c.status == "registered")).scalar()
    assert count == len(good)


def test_rejected_file_that_gets_fixed_is_registered_on_re_add(project, tmp_path):
    broken = tmp_path / "later.png"
    broken.write_bytes(b"")
    assert add_images(project, [str(broken)]).rejected
    write_png(broken, 5)
    result = add_images(project, [str(broken)])
    assert result.added == 1 and not result.rejected


def test_missing_named_path_is_an_input_error_and_adds_nothing(project, tmp_path, make_images):
    from alkit.errors import InputError

    [image] = make_images(1)
    with pytest.raises(InputError, match="1 given path.*do not exist.*nope"):
        add_images(project, [str(tmp_path / "nope"), str(image)])
    with project.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(images)).scalar() == 0


def test_missing_named_path_exits_4_via_cli(cli, tmp_path):
    assert cli("init").exit_code == 0
    result = cli("add", str(tmp_path / "nonexistent" / "dir"))
    assert result.exit_code == 4 and "do not exist" in result.stderr


def test_low_pixel_limit_rejects_as_bomb(tmp_path):
    path = write_png(tmp_path / "big.png", 1, size=(40, 40))
    assert "decompression bomb" in probe_image(str(path), max_pixels=100).reason
    assert probe_image(str(path), max_pixels=10_000).ok


def test_no_recursive_skips_subfolders(project, messy_folder):
    folder, _ = messy_folder
    result = add_images(project, [str(folder)], recursive=False)
    with project.engine.connect() as connection:
        paths = set(connection.execute(sa.select(images.c.path)).scalars())
    assert not any("/sub/" in p for p in paths)
    assert result.added > 0


def test_json_contract_via_cli(cli, messy_folder):
    folder, good = messy_folder
    assert cli("init").exit_code == 0
    result = cli("add", str(folder), "--json")
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["added"] == len(good) and payload["duplicates"] == 1
    assert all(set(item) == {"path", "reason"} for item in payload["rejected"])
    assert all(Path(item["path"]).is_absolute() for item in payload["rejected"])
