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


def _login_cookies(url: str, email: str, password: str) -> dict[str, str]:
    """Session cookies of a Label Studio user, through its login form (CSRF token included)."""
    import requests

    session = requests.Session()
    form = session.get(f"{url}/user/login/", timeout=30)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    data = {"email": email, "password": password, "csrfmiddlewaretoken": token.group(1) if token else session.cookies.get("csrftoken", "")}
    response = session.post(f"{url}/user/login/", data=data, headers={"Referer": f"{url}/user/login/"}, timeout=30)
    assert "sessionid" in session.cookies, f"login to {url} failed ({response.status_code})"
    return dict(session.cookies)


class DevTools:
    """A minimal Chrome DevTools Protocol session on one headless Chromium page."""

    def __init__(self, workdir: Path):
        import json
        import socket
        import time
        import urllib.request

        import websocket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.process = subprocess.Popen(
            [*chromium_flags(workdir / "devtools-profile"), f"--remote-debugging-port={port}", "--window-size=1280,900",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                    pages = [t for t in json.load(response) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Chromium's DevTools endpoint did not come up"
            time.sleep(0.3)
        self.socket = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params):
        import json

        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message["error"]
                return message.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=20)


def label_studio_task_images(url: str, project_id: int, task_id: int, workdir: Path, timeout_s: float = 90.0,
                             email: str = "admin@example.com", password: str = "admin-pass-123") -> list[dict]:
    """Open a task's labelling page in headless Chromium as a logged-in user; the page's <img> elements.

    Waits until the labelling panel shows a decoded image of the task (drawn at least 100
    pixels wide, unlike the data manager's thumbnails) or `timeout_s` passes; returns
    [{"src", "complete", "width", "shown"}] (width = naturalWidth, shown = drawn width in
    CSS pixels) and saves `labelling.png`. `labelling_panel_image` picks the one that counts.
    """
    import base64
    import time

    tools = DevTools(workdir)
    try:
        tools.call("Network.enable")
        for name, value in _login_cookies(url, email, password).items():
            tools.call("Network.setCookie", name=name, value=value, url=url)
        tools.call("Page.enable")
        tools.call("Page.navigate", url=f"{url}/projects/{project_id}/data?task={task_id}")
        script = ("[...document.images].map(i => ({src: i.src, complete: i.complete, width: i.naturalWidth, "
                  "shown: Math.round(i.getBoundingClientRect().width)}))")
        deadline = time.monotonic() + timeout_s
        while True:
            found = tools.evaluate(script) or []
            # The labelling panel fetches the task's image and shows it from a blob: URL.
            task_images = [i for i in found if i["src"].startswith("blob:") or ("/data/" in i["src"] and "/static/" not in i["src"])]
            if any(i["complete"] and i["width"] > 0 and i["shown"] >= 100 for i in task_images):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(1.0)
        shot = tools.call("Page.captureScreenshot", format="png")
        (workdir / "labelling.png").write_bytes(base64.b64decode(shot["data"]))
        return found
    finally:
        tools.close()


def labelling_panel_image(found: list[dict]) -> dict | None:
    """The image the labelling panel shows (fetched by the editor, drawn from a blob: URL), if decoded."""
    shown = [i for i in found if i["src"].startswith("blob:") and i["complete"] and i["width"] > 0 and i["shown"] >= 100]
    return shown[0] if shown else None
