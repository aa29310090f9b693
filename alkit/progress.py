"""Progress on stderr for anything longer than a few seconds (tqdm, imported lazily).

Two kinds: `stage(...)` says what a command is doing ("select: scoring 200,000 images with
bald") and, when the step took a while, how long it took; `progress_bar(...)` is a tqdm bar
where the total is known. Both write to stderr only, so `--json` stdout is never touched.

Whether anything is shown is decided once per command by `configure` (the CLI does it: on when
stderr is a terminal and --json is not given, or whenever `alkit --progress` is); library
callers that never configure get output only on a terminal.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

SLOW_STAGE_S = 2.0  # a stage that took longer says how long

_enabled: bool | None = None  # None: not configured (library use): on when stderr is a terminal


def configure(enabled: bool | None) -> None:
    """Set for this process whether stages and bars are shown (None: when stderr is a terminal)."""
    global _enabled
    _enabled = enabled


def decide(flag: bool | None, json_mode: bool, stderr_is_terminal: bool) -> bool:
    """The CLI's rule: an explicit --progress/--no-progress wins; otherwise on for a terminal,
    off with --json (scripts read stdout; a terminal user piping JSON still asks with --progress)."""
    if flag is not None:
        return flag
    return stderr_is_terminal and not json_mode


def is_enabled(enabled: bool | None = None) -> bool:
    if enabled is not None:
        return enabled
    if _enabled is not None:
        return _enabled
    return sys.stderr.isatty()


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def set_description_str(self, text: str) -> None:
        pass


@contextmanager
def progress_bar(total: int | None, description: str, enabled: bool | None = None, unit: str = "it") -> Iterator:
    """A tqdm bar on stderr; `enabled=None` follows `configure` (or the terminal test)."""
    if not is_enabled(enabled):
        yield _NoProgress()
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit=unit, file=sys.stderr, dynamic_ncols=True, smoothing=0.1) as bar:
        yield bar


def note(message: str, enabled: bool | None = None) -> None:
    """One progress line on stderr (shown under the same rule as the bars)."""
    if is_enabled(enabled):
        print(message, file=sys.stderr, flush=True)


@contextmanager
def stage(description: str, enabled: bool | None = None) -> Iterator[None]:
    """Announce a step on stderr; when it took longer than SLOW_STAGE_S, say how long."""
    shown = is_enabled(enabled)
    if shown:
        print(f"{description} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    yield
    elapsed = time.perf_counter() - started
    if shown and elapsed >= SLOW_STAGE_S:
        print(f"{description}: done in {elapsed:.1f} s", file=sys.stderr, flush=True)
