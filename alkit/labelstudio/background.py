"""Background work of the Label Studio endpoints: pulls triggered by events (one at a time,
debounced) and the delayed authorisation of the backend's webhook.

Nothing here raises into the server: failures are collected in `errors` for the caller to report.
"""

from __future__ import annotations

import base64
import threading
import time
from typing import Any, Callable

AUTHORIZE_ATTEMPTS = 3


class PullTrigger:
    """Runs `pull` in a background thread, one at a time: events during a running pull cause
    one more pull; with `debounce_s`, a burst of events within that time is one pull."""

    def __init__(self, pull: Callable[[], Any], debounce_s: float = 0.0) -> None:
        self._pull = pull
        self._debounce_s = debounce_s
        self._lock = threading.Lock()
        self._running = False
        self._again = False
        self.errors: list[str] = []
        self.runs = 0

    def __call__(self) -> None:
        with self._lock:
            if self._running:
                self._again = True
                return
            self._running = True
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            if self._debounce_s:
                time.sleep(self._debounce_s)
            try:
                self._pull()
            except Exception as error:  # reported, never fatal: the mark stays for the next sync
                self.errors.append(str(error))
            self.runs += 1
            with self._lock:
                if not self._again:
                    self._running = False
                    return
                self._again = False


def authorize_webhooks_later(client, pid: int, auth: tuple[str, str], delay_s: float = 1.0, errors: list | None = None) -> None:
    """In the background (Label Studio waits for our /setup answer before it saves the
    backend and its webhook): give the backend's webhook our basic-auth credentials."""
    header = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()

    def run() -> None:
        for _ in range(AUTHORIZE_ATTEMPTS):
            time.sleep(delay_s)
            try:
                if client.authorize_backend_webhooks(pid, auth[0], header):
                    return
            except Exception as error:  # reported, never fatal: the README says how to add the header by hand
                if errors is not None:
                    errors.append(str(error))

    threading.Thread(target=run, daemon=True).start()
