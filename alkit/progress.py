"""Progress bars on stderr for anything longer than a few seconds (tqdm, imported lazily)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass


@contextmanager
def progress_bar(total: int | None, description: str, enabled: bool | None = None, unit: str = "it") -> Iterator:
    """A tqdm bar on stderr; `enabled=None` shows it only when stderr is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield _NoProgress()
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit=unit, file=sys.stderr, dynamic_ncols=True, smoothing=0.1) as bar:
        yield bar
