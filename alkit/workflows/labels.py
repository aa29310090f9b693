"""`alkit labels import/export`: labels from CSV files, and the resolved labels out."""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from alkit.errors import InputError, StateError
from alkit.jsonable import JsonResult
from alkit.project import Project
from alkit.storage.db import utcnow
from alkit.storage.images import mark_labeled, usable_ids_by_path
from alkit.storage.classes import class_ids_by_name
from alkit.storage.labels import exported_labels, upsert_file_labels

LABEL_CSV_COLUMNS = {"path", "label"}


@dataclass
class LabelImportResult(JsonResult):
    rows: int = 0
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    unknown_paths: list[str] = field(default_factory=list)
    unknown_classes: dict[str, int] = field(default_factory=dict)
    duplicates: list[dict] = field(default_factory=list)  # {path, rows, labels, kept}: one image named by several rows


def _candidate_paths(raw: str, csv_dir: Path) -> list[str]:
    try:
        path = Path(raw).expanduser()
    except RuntimeError:  # "~someone" naming no user: a literal (relative) path
        path = Path(raw)
    if path.is_absolute():
        return [os.path.realpath(path)]
    return [os.path.realpath(csv_dir / path), os.path.realpath(path)]


def read_label_csv(path: Path) -> list[tuple[str, str]]:
    try:
        handle = path.open(newline="", encoding="utf-8-sig")  # Excel writes "CSV UTF-8" with a BOM
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror}; check the path") from None
    with handle:
        try:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not LABEL_CSV_COLUMNS <= {f.strip() for f in reader.fieldnames}:
                raise InputError(f"{path}: needs a header with columns path,label; found {reader.fieldnames}")
            rows = []
            for line_number, row in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
                if not row.get("path") or not row.get("label"):
                    raise InputError(f"{path}:{line_number}: empty path or label; fix or delete the row")
                rows.append((row["path"], row["label"]))
        except (csv.Error, UnicodeDecodeError) as error:
            raise InputError(f"{path}: not a readable UTF-8 CSV ({error})") from None
    return rows


def import_labels(
    project: Project, csv_path: Path, annotator: str = "import", strict: bool = False
) -> LabelImportResult:
    """Import `path,label` rows as labels from source `file`.

    Rows naming an unknown image or class are reported (not silently dropped); with
    `strict`, any such row aborts the import before anything is written.
    """
    rows = read_label_csv(csv_path)
    result = LabelImportResult(rows=len(rows))
    csv_dir = csv_path.resolve().parent
    now = utcnow()
    with project.engine.begin() as connection:
        class_ids = class_ids_by_name(connection)
        if not class_ids:
            raise StateError("no classes defined; run `alkit classes set NAME...` before importing labels")
        path_ids = usable_ids_by_path(connection)
        resolved: list[tuple[int, int]] = []
        unknown_classes: Counter[str] = Counter()
        for raw_path, label in rows:
            image_id = next((path_ids[p] for p in _candidate_paths(raw_path, csv_dir) if p in path_ids), None)
            if image_id is None:
                result.unknown_paths.append(raw_path)
                continue
            if label not in class_ids:
                unknown_classes[label] += 1
                continue
            resolved.append((image_id, class_ids[label]))
        result.unknown_classes = dict(unknown_classes)
        result.duplicates = _duplicate_rows(rows, resolved, class_ids, csv_dir, path_ids)
        conflicting = [item for item in result.duplicates if len(set(item["labels"])) > 1]
        if strict and conflicting:
            first = conflicting[0]
            raise InputError(
                f"{len(conflicting)} images have rows with different labels (first: {first['path']}: "
                f"{', '.join(first['labels'])}); nothing imported; keep one row per image, or drop --strict (the last row wins)"
            )
        if strict and (result.unknown_paths or unknown_classes):
            raise InputError(
                f"{len(result.unknown_paths)} unknown paths and {sum(unknown_classes.values())} rows with unknown classes "
                f"({', '.join(sorted(unknown_classes)) or '-'}); nothing imported; `alkit add` the images / "
                "`alkit classes set` the classes, or drop --strict"
            )
        changes = upsert_file_labels(connection, dict(resolved), annotator, now)
        result.imported, result.updated, result.unchanged = changes.added, changes.updated, changes.unchanged
        mark_labeled(connection, [image_id for image_id, _ in resolved])
    return result


def _duplicate_rows(rows, resolved, class_ids, csv_dir, path_ids) -> list[dict]:
    """Images named by more than one row, with every label given; the last row wins."""
    names = {class_id: name for name, class_id in class_ids.items()}
    per_image: dict[int, list[str]] = {}
    for image_id, class_id in resolved:
        per_image.setdefault(image_id, []).append(names[class_id])
    paths = {image_id: path for path, image_id in path_ids.items()}
    return [
        {"path": paths.get(image_id), "rows": len(given), "labels": given, "kept": given[-1]}
        for image_id, given in per_image.items() if len(given) > 1
    ]


def export_labels(project: Project) -> list[dict]:
    """Every stored label, one dict each (absolute paths), oldest first."""
    with project.engine.connect() as connection:
        return [
            {**row._mapping, "created_at": row.created_at.isoformat() if row.created_at else None}
            for row in exported_labels(connection)
        ]
