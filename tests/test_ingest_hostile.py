"""Ingestion that cannot hang: FIFOs, devices and links to them beside good images; extreme
aspect ratios; JPEGs with bytes after their end marker.

`add` runs in a child process with a deadline, so a regression that blocks on a FIFO fails
the test instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alkit.imagefiles import MAX_ASPECT_RATIO, probe_image
from conftest import write_png


def strip_png(path: Path, width: int, height: int) -> Path:
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(path)
    return path


def _add_in_child(project_dir: Path, folder: Path) -> dict:
    command = [sys.executable, "-m", "alkit_cli.main", "--project", str(project_dir)]
    subprocess.run([*command, "init"], check=True, capture_output=True, timeout=120)
    done = subprocess.run([*command, "add", str(folder), "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_fifo_and_device_links_are_rejected_and_the_good_images_register(tmp_path):
    folder = tmp_path / "images"
    good = [write_png(folder / f"good_{i}.png", i) for i in range(3)]
    os.mkfifo(folder / "pipe.jpg")
    os.symlink("/dev/zero", folder / "zero.png")
    os.symlink("/dev/null", folder / "null.jpg")
    payload = _add_in_child(tmp_path / "project", folder)
    assert payload["added"] == len(good)
    reasons = {Path(item["path"]).name: item["reason"] for item in payload["rejected"]}
    assert "FIFO" in reasons["pipe.jpg"]
    assert "character device" in reasons["zero.png"] and "character device" in reasons["null.jpg"]


def test_fifo_named_explicitly_is_rejected_without_blocking(project, tmp_path):
    from alkit.workflows.ingest import add_images

    os.mkfifo(tmp_path / "named.png")
    good = write_png(tmp_path / "ok.png", 3)
    # the FIFO has no writer: opening it for reading would block forever
    result = add_images(project, [str(tmp_path / "named.png"), str(good)], show_progress=False)
    assert result.added == 1
    assert [item["reason"] for item in result.rejected] == ["not a regular file: a FIFO (named pipe)"]


def test_probe_never_opens_a_device_even_when_asked_directly():
    result = probe_image("/dev/zero", max_pixels=10**8)
    assert not result.ok and "character device" in result.reason


def test_probe_bounds_its_read(tmp_path, monkeypatch):
    import alkit.imagefiles as imagefiles

    path = write_png(tmp_path / "a.png", 1, size=(64, 64))
    monkeypatch.setattr(imagefiles, "MAX_FILE_BYTES", 100)
    result = probe_image(str(path), max_pixels=10**8)
    assert not result.ok and "larger than 100 bytes" in result.reason


def test_an_exception_in_one_probe_costs_only_that_file(project, tmp_path, monkeypatch):
    import alkit.imagefiles as imagefiles
    from alkit.workflows.ingest import add_images

    paths = [write_png(tmp_path / "imgs" / f"{i}.png", i) for i in range(4)]
    original = imagefiles.read_bounded

    def exploding(path, *args):
        if path.endswith("2.png"):
            raise MemoryError()
        return original(path, *args)

    monkeypatch.setattr(imagefiles, "read_bounded", exploding)
    result = add_images(project, [str(tmp_path / "imgs")], show_progress=False)
    assert result.added == 3
    assert [Path(item["path"]).name for item in result.rejected] == ["2.png"]
    assert "out of memory" in result.rejected[0]["reason"]


def test_extreme_aspect_ratio_is_rejected_at_add(tmp_path):
    strip = strip_png(tmp_path / "strip.png", 60_000, 1)
    assert strip.stat().st_size < 1000  # tiny on disk, ruinous once resized for a model
    result = probe_image(str(strip), max_pixels=10**8)
    assert not result.ok and "extreme aspect ratio (60000x1" in result.reason
    wide_but_fine = strip_png(tmp_path / "panorama.png", int(MAX_ASPECT_RATIO * 10), 10)
    assert probe_image(str(wide_but_fine), max_pixels=10**8).ok


DECODE_UNDER_CAP = textwrap.dedent(
    """
    import resource, sys
    import torch
    from torchvision import transforms
    from alkit.embedding.decode import BatchDecoder
    used = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # address-space cap: what the process has mapped now plus 1.5 GB (the resize alone needs ~9 GB)
    with open("/proc/self/statm") as handle:
        mapped = int(handle.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + 1536 * 1024**2, resource.RLIM_INFINITY))
    decoder = BatchDecoder(transforms.Compose([transforms.Resize(224), transforms.CenterCrop(224), transforms.ToTensor()]), 224)
    out = decoder[[(1, sys.argv[1]), (2, sys.argv[2])]]
    print(out["ids"].tolist(), out["failed"])
    """
)


def test_decode_guards_the_aspect_ratio_before_allocating_under_a_memory_cap(tmp_path):
    """An image registered before the guard existed (or swapped after `add`) is refused at embed
    time from its header; the good image in the same batch is decoded."""
    strip = strip_png(tmp_path / "strip.png", 1, 60_000)
    good = write_png(tmp_path / "good.png", 1, size=(40, 30))
    done = subprocess.run([sys.executable, "-c", DECODE_UNDER_CAP, str(strip), str(good)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("[2]") and "extreme aspect ratio (1x60000" in done.stdout, done.stdout


def test_decode_refuses_a_fifo_without_blocking(tmp_path):
    from alkit.embedding.decode import open_rgb_image

    os.mkfifo(tmp_path / "late.png")
    with pytest.raises(ValueError, match="FIFO"):
        open_rgb_image(str(tmp_path / "late.png"), 224)


def test_jpeg_with_bytes_after_its_end_marker_is_accepted_and_truncated_one_is_not(tmp_path):
    source = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(source, quality=90)
    data = source.read_bytes()
    trailing = tmp_path / "trailing.jpg"
    trailing.write_bytes(data + b"\x00camera-vendor-trailer" * 10)
    assert probe_image(str(trailing), max_pixels=10**8).ok
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) - 30])
    assert "truncated" in probe_image(str(truncated), max_pixels=10**8).reason
    png = write_png(tmp_path / "trail.png", 4)
    png.write_bytes(png.read_bytes() + b"junk after IEND" * 20)
    assert probe_image(str(png), max_pixels=10**8).ok
