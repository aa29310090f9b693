"""One error hierarchy for alkit; the CLI maps each class to an exit code in one place.

Every message is one line that states the numbers involved and the fix.
"""

from __future__ import annotations


class AlkitError(Exception):
    """Base of every error alkit raises on purpose."""

    exit_code = 1


class ConfigError(AlkitError):
    """alkit.toml, an environment variable or a flag holds a value alkit cannot use."""

    exit_code = 3


class ProjectNotFoundError(ConfigError):
    """No alkit project (alkit.toml) in the given directory."""


class InputError(AlkitError):
    """A file, path, CSV or argument given by the user is wrong."""

    exit_code = 4


class UnknownNameError(InputError):
    """A registry lookup by name failed; the message lists the valid names."""


class StateError(AlkitError):
    """The pool is not in a state where the command can run (no embeddings, budget too big...)."""

    exit_code = 5


class ExternalServiceError(AlkitError):
    """Label Studio (or another service) is down, refused the token or answered an error."""

    exit_code = 6


class IntegrityError(AlkitError):
    """Stored artefacts do not match (embedding spec, class list, index, posterior file)."""

    exit_code = 7


class LockedError(AlkitError):
    """Another alkit process holds the project lock."""

    exit_code = 8


def from_environment(error: BaseException) -> "AlkitError | None":
    """An AlkitError for a full or read-only disk (a failure of the machine rather than of
    alkit); None for anything else. Database errors are translated by `storage.db.database_error`."""
    import errno

    disk_errnos = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EIO}
    if isinstance(error, OSError) and error.errno in disk_errnos:
        where = f" {error.filename}" if error.filename else ""
        return ConfigError(
            f"cannot write{where}: {error.strerror or error}; free disk space or fix permissions of the project "
            "directory, then rerun (work committed so far is kept)"
        )
    return None


EXIT_CODES: dict[str, int] = {  # the README's exit-code table says the same, word for word (a test compares them)
    "ok": 0,
    "internal error (a bug: rerun with --debug and report it)": 1,
    "usage error (bad flag or argument)": 2,
    "configuration / project error (no alkit.toml, bad value in it, disk full, read-only project)": ConfigError.exit_code,
    "bad input (file, path, CSV, unknown name)": InputError.exit_code,
    "the pool's state does not allow the command (no embeddings, budget too big, ...)": StateError.exit_code,
    "external service (Label Studio) error": ExternalServiceError.exit_code,
    "stored artefacts do not match (embedding spec, class list, index, posterior file)": IntegrityError.exit_code,
    "project or database locked by another process (alkit sync itself exits 0 when locked)": LockedError.exit_code,
}
