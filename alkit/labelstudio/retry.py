"""Calls to Label Studio with retries, and their failures as one-line errors.

Connection errors and 5xx answers are retried with exponential backoff (a call that is not
idempotent only when the request never reached the server); 401/403 (bad token), 404
(missing project, JSON or HTML body) and the rest become `ExternalServiceError`s that name
what was being done and how to fix it, with the token scrubbed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Callable

from alkit.errors import ExternalServiceError

DETAIL_CHARS = 300  # of a JSON error body's detail
TEXT_DETAIL_CHARS = 200  # of a plain-text error body


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed call is tried again."""

    attempts: int = 4  # total tries for one call
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))


def error_detail(body: Any) -> str:
    """A short reason from an error body that may be JSON, HTML, bytes or nothing."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, dict):
        detail = str(body.get("detail") or body.get("message") or "").strip()
        errors = body.get("validation_errors")
        if errors:
            detail = f"{detail}: {json.dumps(errors, ensure_ascii=False)}" if detail else json.dumps(errors)
        return detail[:DETAIL_CHARS]
    if isinstance(body, str):
        if "<html" in body.lower() or "<!doctype" in body.lower():
            return "HTML error page"
        return re.sub(r"\s+", " ", body).strip()[:TEXT_DETAIL_CHARS]
    return ""


def service_error(what: str, error: BaseException, url: str, attempts: int, scrub: Callable[[str], str]) -> ExternalServiceError:
    """The error for a call to `what` that failed with `error` after `attempts` tries."""
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(error, ApiError):
        status = error.status_code
        detail = error_detail(error.body)
        reason = f"{status}{': ' + detail if detail else ''}"
        if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            message = (
                f"Label Studio at {url} refused the token while trying to {what} ({reason}); "
                "set ALKIT_LS_TOKEN (or --token) to a valid Access Token from Account & Settings"
            )
        elif status == HTTPStatus.NOT_FOUND:
            message = (
                f"Label Studio at {url}: not found while trying to {what} ({reason}); check ls_project_id "
                f"in alkit.toml or run `alkit ls connect --url {url} --project-id ID` "
                f"(or `alkit ls connect --url {url} --create TITLE`)"
            )
        elif status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            message = (
                f"Label Studio at {url} failed to {what} ({reason}) after {attempts} attempts; "
                "check the server log, then rerun"
            )
        else:
            message = f"Label Studio at {url} rejected the request to {what} ({reason})"
    else:
        reason = str(error) or type(error).__name__
        message = (
            f"cannot reach Label Studio at {url} to {what} ({type(error).__name__}: {reason}) after "
            f"{attempts} attempts; start the server or fix the URL with `alkit ls connect --url URL --project-id ID`"
        )
    return ExternalServiceError(scrub(message))


def call_with_retries(
    what: str, fn: Callable[[], Any], url: str, retry: RetryPolicy, sleep: Callable[[float], None],
    scrub: Callable[[str], str], idempotent: bool = True,
) -> Any:
    """`fn()`, retried per `retry`; a failure becomes `service_error`."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except ApiError as error:
            again = idempotent and (error.status_code or 0) >= HTTPStatus.INTERNAL_SERVER_ERROR
            if not again or attempt >= retry.attempts:
                raise service_error(what, error, url, attempt, scrub) from None
        except httpx.TransportError as error:
            # A refused connection never reached the server: safe to retry any call.
            again = idempotent or isinstance(error, httpx.ConnectError)
            if not again or attempt >= retry.attempts:
                raise service_error(what, error, url, attempt, scrub) from None
        sleep(retry.delay(attempt))
