"""Helpers of the fault-injection tests (`tests/test_faults_*.py`) and `benchmarks/faults.py`.

- `run_alkit` / `start_alkit`: the real CLI in a subprocess (optionally through the harness
  below, which slows chosen functions down so a kill lands mid-work);
- `kill_when` / `kill_after_ready`: SIGKILL at a seeded point;
- `snapshot` / `compare`: the pool's contents as plain, comparable data, and the rows lost
  or duplicated relative to a clean run;
- `check_invariants`: what must hold after any crash (no dangling vector rows, no temp files...);
- hostile image writers and a fake Label Studio server (`FakeLabelStudio`, 127.0.0.1 only).

Run as a script, this module is the harness:
`python tests/faults_support.py harness PATCHES_JSON -- ALKIT_ARGS...` where PATCHES_JSON is
`{"slow": {"module:attr.path": seconds}, "set": {"module:attr": value}, "crash": POINT}`. It
writes the file named by `ALKIT_TEST_READY_FILE` once alkit is imported, then runs the CLI in
process. `crash` names one of `CRASH_POINTS`: the process dies there as under `kill -9`
(`os._exit(137)`), which is how the kill tests stop alkit at an exact step without any hook
in alkit itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

HERE = Path(__file__).resolve()
READY_ENV = "ALKIT_TEST_READY_FILE"
CRASH_EXIT = 137  # what a shell reports for a process killed by SIGKILL (128 + 9)

# Where a kill test crashes alkit: the function patched, and whether the process dies just
# before it runs or right after it returns.
CRASH_POINTS = {
    # the bulk import reached Label Studio, its task ids are not recorded yet
    "push_after_import": ("alkit.labelstudio.client:LabelStudioClient.import_tasks", "after"),
    # sync pulled (committed page by page), nothing after it ran
    "sync_after_pull": ("alkit.workflows.sync:pull_annotations", "after"),
    # sync refitted the posterior but did not record the label count it refitted on
    "sync_after_refit": ("alkit.workflows.sync:default_refit", "after"),
    # sync selected a round (open), nothing of it pushed
    "sync_after_select": ("alkit.workflows.sync:push_round", "before"),
}


# -- subprocesses -------------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALKIT_") or k == "ALKIT_LS_TOKEN"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
    return {**env, **extra}


def alkit_command(project_dir: Path, *args: str, patches: dict | None = None) -> list[str]:
    """The CLI as a subprocess command line; with `patches`, through the harness (see the module docstring)."""
    if patches is None:
        return [sys.executable, "-m", "alkit_cli.main", "--project", str(project_dir), *map(str, args)]
    return [sys.executable, str(HERE), "harness", json.dumps(patches), "--", "--project", str(project_dir), *map(str, args)]


def run_alkit(
    project_dir: Path, *args: str, env: dict | None = None, timeout: float = 180, crash: str | None = None
) -> subprocess.CompletedProcess:
    """Run the CLI to the end; with `crash` (a key of CRASH_POINTS) it dies there with exit 137."""
    patches = None if crash is None else {"crash": crash}
    return subprocess.run(
        alkit_command(project_dir, *args, patches=patches), env=env or child_env(), capture_output=True, text=True, timeout=timeout
    )


def start_alkit(project_dir: Path, *args: str, patches: dict | None = None, env: dict | None = None, ready_file: Path | None = None) -> subprocess.Popen:
    env = dict(env or child_env())
    if ready_file is not None:
        env[READY_ENV] = str(ready_file)
    return subprocess.Popen(
        alkit_command(project_dir, *args, patches=patches or {}), env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(process: subprocess.Popen) -> bool:
    """SIGKILL (if still running) and reap; True when the kill interrupted the run."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    return process.returncode == -signal.SIGKILL


def kill_when(process: subprocess.Popen, predicate: Callable[[], bool], timeout: float = 120) -> bool:
    """Kill -9 as soon as `predicate()` holds (polled every 10 ms); True if it was killed mid-run."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if predicate():
                break
        except Exception:  # the database may not be readable for an instant; poll again
            pass
        time.sleep(0.01)
    killed = _finish(process)
    assert killed or process.returncode == 0, f"the run failed on its own (exit {process.returncode})"
    return killed


def kill_after_ready(process: subprocess.Popen, ready_file: Path, delay: float, timeout: float = 120) -> bool:
    """Kill -9 `delay` seconds after the harness reported alkit imported."""
    deadline = time.monotonic() + timeout
    while not ready_file.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ready_file.exists(), f"the harness never started: {process.communicate(timeout=60)[1][-2000:]}"
    end = time.monotonic() + delay
    while process.poll() is None and time.monotonic() < end:
        time.sleep(0.005)
    killed = _finish(process)
    assert killed or process.returncode == 0, f"the run failed on its own (exit {process.returncode})"
    return killed


# -- pool snapshots -------------------------------------------------------------------------------


def _engine(project_dir: Path):
    import sqlalchemy as sa

    return sa.create_engine(f"sqlite:///{Path(project_dir) / 'alkit.db'}")


def snapshot(project_dir: Path) -> dict[str, list]:
    """Everything a run leaves in the pool, keyed by path (never by id or time)."""
    import sqlalchemy as sa

    from alkit.storage.schema import classes, embedding_specs, embeddings, images, labels, ls_tasks, posteriors, round_items, rounds

    engine = _engine(project_dir)
    try:
        with engine.connect() as c:
            path_of = dict(c.execute(sa.select(images.c.id, images.c.path)).all())
            spec_name = dict(c.execute(sa.select(embedding_specs.c.id, embedding_specs.c.name)).all())
            class_name = dict(c.execute(sa.select(classes.c.id, classes.c.name)).all())
            snap = {
                "images": sorted(
                    (r.path, r.content_hash, r.status, r.split, r.error_reason)
                    for r in c.execute(sa.select(images.c.path, images.c.content_hash, images.c.status, images.c.split, images.c.error_reason))
                ),
                "embeddings": sorted(
                    (spec_name[r.spec_id], path_of[r.image_id]) for r in c.execute(sa.select(embeddings.c.spec_id, embeddings.c.image_id))
                ),
                "labels": sorted(
                    (path_of[r.image_id], class_name[r.class_id], r.source, r.annotator)
                    for r in c.execute(sa.select(labels.c.image_id, labels.c.class_id, labels.c.source, labels.c.annotator))
                ),
                "rounds": [
                    (r.status, sorted(path_of[i] for i in c.execute(sa.select(round_items.c.image_id).where(round_items.c.round_id == r.id)).scalars()))
                    for r in c.execute(sa.select(rounds.c.id, rounds.c.status).order_by(rounds.c.id))
                ],
                "ls_tasks": sorted(path_of[i] for i in c.execute(sa.select(ls_tasks.c.image_id)).scalars()),
                "posteriors": [r.labels_used for r in c.execute(sa.select(posteriors.c.labels_used).order_by(posteriors.c.version))],
            }
    finally:
        engine.dispose()
    return snap


def compare(clean: dict[str, list], got: dict[str, list], sections=("images", "embeddings", "labels", "ls_tasks")) -> tuple[int, int]:
    """(rows lost, rows duplicated or extra) of `got` against a clean run, over `sections`."""
    lost = dup = 0
    for name in sections:
        want, have = Counter(map(repr, clean[name])), Counter(map(repr, got[name]))
        lost += sum((want - have).values())
        dup += sum((have - want).values())
    return lost, dup


def vectors_by_path(project_dir: Path) -> dict[str, np.ndarray]:
    """Every stored embedding of the current spec, by image path."""
    from alkit.project import open_project
    from alkit.storage.schema import images
    from alkit.storage.specs import current_spec
    from alkit.storage.vectors import load_vectors
    import sqlalchemy as sa

    project = open_project(Path(project_dir))
    with project.engine.connect() as c:
        spec = current_spec(c)
        path_of = dict(c.execute(sa.select(images.c.id, images.c.path)).all())
    ids, vectors = load_vectors(project, spec.id)
    project.engine.dispose()
    return {path_of[int(i)]: v for i, v in zip(ids, vectors)}


def check_invariants(project_dir: Path) -> list[str]:
    """What must hold after any crash and rerun; returns the violations (empty when fine)."""
    import sqlalchemy as sa

    from alkit.storage.schema import ImageStatus, embedding_specs, embeddings, images, ls_tasks, round_items, rounds

    problems: list[str] = []
    engine = _engine(project_dir)
    try:
        with engine.connect() as c:
            if c.execute(sa.text("PRAGMA integrity_check")).scalar() != "ok":
                problems.append("sqlite integrity_check failed")
            for spec in c.execute(sa.select(embedding_specs.c.id, embedding_specs.c.key)):
                directory = Path(project_dir) / ".alkit" / "vectors" / spec.key
                rows = c.execute(sa.select(embeddings.c.shard, embeddings.c.row).where(embeddings.c.spec_id == spec.id)).all()
                if len(set(rows)) != len(rows):
                    problems.append(f"spec {spec.key}: two images share a vector row")
                for shard, size in Counter(r.shard for r in rows).items():
                    path = directory / f"{shard:08d}.embedding.npy"
                    if not path.is_file():
                        problems.append(f"rows point at missing shard {path}")
                    elif len(np.load(path, mmap_mode="r")) < max(r.row for r in rows if r.shard == shard) + 1:
                        problems.append(f"rows past the end of {path}")
            open_items = c.execute(
                sa.select(images.c.status).join(round_items, round_items.c.image_id == images.c.id)
                .join(rounds, rounds.c.id == round_items.c.round_id).where(rounds.c.status == "open")
            ).scalars().all()
            if any(s not in (ImageStatus.SELECTED.value, ImageStatus.LABELED.value, ImageStatus.PUSHED.value) for s in open_items):
                problems.append(f"open round items with status {sorted(set(open_items))}")
            per_task = Counter(c.execute(sa.select(ls_tasks.c.task_id)).scalars())
            if any(n > 1 for n in per_task.values()):
                problems.append("one Label Studio task recorded for two images")
    finally:
        engine.dispose()
    temporary = [p for p in (Path(project_dir) / ".alkit").rglob(".tmp-*")] if (Path(project_dir) / ".alkit").exists() else []
    if temporary:
        problems.append(f"temporary files left: {temporary[:3]}")
    return problems


# -- data ----------------------------------------------------------------------------------------


def write_tiny_pngs(folder: Path, count: int, start_seed: int = 0, size=(8, 6)) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        rng = np.random.default_rng(start_seed + i)
        path = folder / f"img_{start_seed + i:04d}.png"
        Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def write_npz(path: Path, image_paths: list, dim: int = 16, classes: int = 3, seed: int = 0) -> Path:
    """Imported embeddings: clustered by class so fits and selections are well defined."""
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(classes, dim))
    vectors = text[np.arange(len(image_paths)) % classes] + 0.7 * rng.normal(size=(len(image_paths), dim))
    np.savez(path, paths=np.array([str(p) for p in image_paths]), embeddings=vectors.astype(np.float32),
             text_embeddings=text.astype(np.float32))
    return path


def init_pool(project_dir: Path, image_paths: list, npz: Path | None = None, classes=("cat", "dog", "bird"), labels_csv: Path | None = None):
    """A project with images, classes, optionally imported embeddings and CSV labels (in-process)."""
    from alkit.project import init_project, open_project
    from alkit.workflows.classes import set_classes
    from alkit.workflows.embed_import import import_embeddings
    from alkit.workflows.ingest import add_images
    from alkit.workflows.labels import import_labels

    init_project(project_dir)
    project = open_project(project_dir)
    add_images(project, [str(p) for p in image_paths], show_progress=False)
    set_classes(project, list(classes))
    if npz is not None:
        import_embeddings(project, npz, "imported", show_progress=False)
    if labels_csv is not None:
        import_labels(project, labels_csv)
    return project


# -- hostile images ------------------------------------------------------------------------------


def hostile_images(folder: Path) -> dict[str, Path]:
    """CMYK JPEG, 16-bit PNG, palette PNG with transparency, RGBA PNG, EXIF-rotated JPEG
    (plus its physically rotated twin, for comparison), and a very long path."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    out: dict[str, Path] = {}
    out["cmyk_jpeg"] = folder / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(out["cmyk_jpeg"], quality=95)
    gray16 = (np.linspace(0, 65535, 48 * 64).reshape(48, 64)).astype(np.uint16)
    out["png16"] = folder / "gray16.png"
    Image.fromarray(gray16).save(out["png16"])
    out["png16_as_8bit"] = folder / "gray16_as_8bit.png"
    Image.fromarray(np.rint(gray16 / 257.0).astype(np.uint8), "L").save(out["png16_as_8bit"])
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out["palette_png"] = folder / "palette.png"
    palette.save(out["palette_png"], transparency=0)
    rgba = np.dstack([rgb, rng.integers(0, 256, size=(40, 56), dtype=np.uint8)])
    out["alpha_png"] = folder / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(out["alpha_png"])
    # A photo stored sideways with EXIF orientation 6 ("rotate 90 CW to view"), and the same
    # photo already upright: a model must see them alike, as the annotator does.
    stored = Image.fromarray(np.ascontiguousarray(rgb[:, :, ::-1]))
    exif = Image.Exif()
    exif[0x0112] = 6
    out["exif_rotated_jpeg"] = folder / "exif_rotated.jpg"
    stored.save(out["exif_rotated_jpeg"], quality=95, exif=exif.tobytes())
    out["upright_twin"] = folder / "upright_twin.png"
    Image.open(out["exif_rotated_jpeg"]).transpose(Image.Transpose.ROTATE_270).save(out["upright_twin"])
    deep = folder
    for level in range(5):
        deep = deep / (f"{level}" + "d" * 200)
    deep.mkdir(parents=True, exist_ok=True)
    out["long_path"] = deep / ("x" * 200 + ".png")
    Image.fromarray(rgb[::-1]).save(out["long_path"])
    return out


# -- a hostile Label Studio ----------------------------------------------------------------------


@dataclass
class FakeLabelStudio:
    """An HTTP server on 127.0.0.1 that answers like a broken Label Studio.

    `mode` picks the answer to every /api/ request: "ok" (a small valid export), "401",
    "404html", "500", "slow" (sleeps `slow_s` first), "reset" (sends half the export, then a
    TCP reset). /health/ always answers 200 with a Date header.
    """

    mode: str = "ok"
    export: list = field(default_factory=list)
    slow_s: float = 1.5
    requests: list = field(default_factory=list)
    auth_headers: list = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                fake.requests.append(self.path)
                fake.auth_headers.append(self.headers.get("Authorization", ""))
                if self.path.startswith("/health"):
                    return self._send(200, b'{"status": "UP"}')
                mode = fake.mode
                if mode == "401":
                    return self._send(401, b'{"detail": "Invalid token."}')
                if mode == "404html":
                    return self._send(404, b"<!DOCTYPE html><html><body><h1>Not Found</h1>" + b"x" * 2000 + b"</body></html>", "text/html")
                if mode == "500":
                    return self._send(500, b'{"detail": "Internal Server Error"}')
                if mode == "slow":
                    time.sleep(fake.slow_s)
                body = fake.body_for(self.path)
                if mode == "reset":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.close()
                    self.close_connection = True
                    return
                self._send(200, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a client that timed out: expected here
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def body_for(self, path: str) -> bytes:
        if "whoami" in path:
            return json.dumps({"id": 1, "email": "admin@example.com", "username": "admin"}).encode()
        if "/export" in path:
            return json.dumps(self.export).encode()
        if path.split("?")[0].rstrip("/").startswith("/api/projects/") and path.split("?")[0].rstrip("/").split("/")[-1].isdigit():
            from alkit.labelstudio.config import label_config

            return json.dumps({"id": 7, "title": "fake", "label_config": label_config(["cat", "dog"])}).encode()
        return b"{}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@contextmanager
def fake_label_studio(**kwargs) -> Iterator[FakeLabelStudio]:
    server = FakeLabelStudio(**kwargs)
    try:
        yield server
    finally:
        server.close()


def exported_task(task_id: int, image_id: int, choice: str, annotation_id: int, annotator: int = 1) -> dict:
    """One task of a Label Studio JSON export with one annotation."""
    return {
        "id": task_id,
        "data": {"image": f"/data/local-files/?d=x/{image_id}.png", "alkit_id": str(image_id)},
        "annotations": [{
            "id": annotation_id, "completed_by": annotator, "was_cancelled": False,
            "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}],
            "created_at": "2024-01-01T00:00:00.000000Z", "updated_at": "2024-01-01T00:00:00.000000Z",
        }],
        "updated_at": "2024-01-01T00:00:00.000000Z",
    }


# -- tmpfs (real disk-full / read-only) -----------------------------------------------------------


@contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[bool]:
    """Mount a tmpfs of `size` on `directory` when this process may (root in a container that
    allows it); yields whether it did. Always unmounted on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def remount(directory: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(directory)], check=True, capture_output=True)


@contextmanager
def read_only_view(source: Path, view: Path) -> Iterator[bool]:
    """`view` becomes a read-only bind mount of `source` when this process may mount; yields
    whether it did. Always unmounted on exit."""
    view.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "--bind", str(source), str(view)], capture_output=True).returncode == 0
    if mounted and subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(view)], capture_output=True)
        mounted = False
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(view)], capture_output=True)


# -- the harness ----------------------------------------------------------------------------------


def _resolve(target: str):
    import importlib

    module_name, _, attr_path = target.partition(":")
    owner = importlib.import_module(module_name)
    *parents, name = attr_path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    return owner, name


def install_crash(point: str) -> None:
    """Make this process die (`os._exit(137)`, like `kill -9`: no cleanup, no flush) at `point`."""
    target, when = CRASH_POINTS[point]
    owner, name = _resolve(target)
    original = getattr(owner, name)

    def crashing(*a, **k):
        if when == "before":
            os._exit(CRASH_EXIT)
        original(*a, **k)
        os._exit(CRASH_EXIT)

    setattr(owner, name, crashing)


def _harness(patches: dict, args: list[str]) -> None:
    if os.environ.get("ALKIT_TEST_TINY") == "1":
        from alkit.embedding.tiny import register_config

        register_config()
    for target, value in (patches.get("set") or {}).items():
        owner, name = _resolve(target)
        setattr(owner, name, value)
    for target, seconds in (patches.get("slow") or {}).items():
        owner, name = _resolve(target)
        original = getattr(owner, name)

        def slowed(*a, __original=original, __s=float(seconds), **k):
            time.sleep(__s)
            out = __original(*a, **k)
            time.sleep(__s)
            return out

        setattr(owner, name, slowed)
    if patches.get("crash"):
        install_crash(patches["crash"])
    from alkit_cli.main import app

    ready = os.environ.get(READY_ENV)
    if ready:
        Path(ready).write_text(str(os.getpid()))
    app(args, prog_name="alkit")


if __name__ == "__main__":
    if sys.argv[1:2] == ["harness"]:
        separator = sys.argv.index("--")
        _harness(json.loads(sys.argv[2]), sys.argv[separator + 1 :])
    else:
        print("usage: faults_support.py harness PATCHES_JSON -- ALKIT_ARGS...", file=sys.stderr)
        sys.exit(2)
