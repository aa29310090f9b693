"""`alkit classes`: the class list (order = the K axis everywhere) and its prompts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from alkit.errors import InputError, StateError
from alkit.project import Project
from alkit.storage.classes import class_names, class_rows, label_counts_of, replace_class_list


def read_class_file(path: Path) -> list[str]:
    """One class name per line; blank lines and `#` comments are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"cannot read class file {path}: {error.strerror}; check the path") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def set_classes(project: Project, names: list[str], template: str | None = None) -> list[dict]:
    """Replace the class list. Renaming or dropping a class that has labels is refused."""
    if any(not name.strip() for name in names):
        raise InputError(f"{sum(not name.strip() for name in names)} empty class name(s) given; every class needs a name")
    unprintable = [name for name in names if not name.strip().isprintable()]
    if unprintable:
        raise InputError(
            f"class name {unprintable[0]!r} holds a newline, tab or other control character; use one line of text per class"
        )
    names = [name.strip() for name in names]
    if not names:
        raise InputError("no class names given; pass names or --file FILE with one name per line")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InputError(f"duplicate class names: {', '.join(duplicates)}; each class must appear once")
    template = template or project.settings.template
    if "{}" not in template:
        raise InputError(f"prompt template {template!r} has no {{}} placeholder; e.g. 'a photo of a {{}}'")
    with project.engine.begin() as connection:
        dropped = set(class_names(connection)) - set(names)
        used = label_counts_of(connection, dropped) if dropped else {}
        if used:
            detail = ", ".join(f"{name} ({count} labels)" for name, count in sorted(used.items()))
            raise StateError(f"cannot drop classes with labels: {detail}; keep them in the list")
        replace_class_list(connection, names, [template.replace("{}", name) for name in names])
        return [dict(row._mapping) for row in class_rows(connection)]


def list_classes(project: Project) -> list[dict]:
    with project.engine.connect() as connection:
        return [dict(row._mapping) for row in class_rows(connection)]


def classes_key(names: list[str], prompts: list[str]) -> str:
    """Identity of a class list (names, order and prompts), stored with every posterior."""
    payload = json.dumps({"names": names, "prompts": prompts}, separators=(",", ":"))
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()
