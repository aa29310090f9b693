"""Headless Chromium for tests: load a page, report which <img> decoded, take a screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

PROBE = (
    "<script>window.addEventListener('load', () => { const imgs = [...document.images];"
    "document.body.dataset.images = imgs.length;"
    "document.body.dataset.broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;"
    "document.body.dataset.sections = [...document.querySelectorAll('section')].map(s => s.id).join(','); });"
    "</script></body>"
)


def chromium_flags(profile: Path) -> list[str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium not found: apt-get install chromium (.ci/run does)"
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}"]


def probe_static_page(page: Path, workdir: Path) -> dict:
    """Open a copy of `page` with a load-time probe; {"images", "broken", "sections"} from the DOM Chromium built."""
    probed = workdir / "probed.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE), encoding="utf-8")
    dom = subprocess.run([*chromium_flags(workdir / "profile"), "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = {key: re.search(rf'data-{key}="([^"]*)"', dom) for key in ("images", "broken", "sections")}
    assert all(found.values()), f"the probe did not run; DOM starts {dom[:300]!r}"
    return {"images": int(found["images"].group(1)), "broken": int(found["broken"].group(1)),
            "sections": found["sections"].group(1).split(",")}


def screenshot_std(url: str, workdir: Path, size: str = "1100,1600") -> float:
    """Grey-level standard deviation of a screenshot of `url` (near 0 for a blank page)."""
    import numpy as np
    from PIL import Image

    shot = workdir / "shot.png"
    subprocess.run([*chromium_flags(workdir / "profile"), f"--window-size={size}", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120)
    return float(np.asarray(Image.open(shot).convert("L")).std())
