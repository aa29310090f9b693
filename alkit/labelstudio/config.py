"""Pure builders for what alkit sends to Label Studio: the labeling config and image URLs."""

from __future__ import annotations

import os
from pathlib import PurePosixPath
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from alkit.errors import ConfigError, InputError

DATA_IMAGE_KEY = "image"  # task.data key the <Image> tag reads
DATA_ID_KEY = "alkit_id"  # task.data key holding the stable alkit image id
DATA_PROJECT_KEY = "alkit_project"  # task.data key: the alkit project's UUID (tasks of other projects are ignored)
DATA_TASK_KEY = "alkit_key"  # task.data key: "<project uuid>:<image content hash>", what push/pull/recover match on
FROM_NAME = "label"  # <Choices name=...>; every annotation result alkit reads has this from_name
TO_NAME = "image"
LOCAL_FILES_PREFIX = "/data/local-files/?d="


def label_config(class_names: list[str]) -> str:
    """An image-classification config: one image, one required single choice per class."""
    if not class_names:
        raise ConfigError("no classes defined; run `alkit classes set NAME...` before connecting to Label Studio")
    choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in class_names)
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="${DATA_IMAGE_KEY}" zoom="true"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single-radio" showInLine="true" required="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>"
    )


def relative_to_root(path: str, root: str) -> str:
    """`path` relative to `root` (both absolute), POSIX separators; InputError when outside."""
    real_root = os.path.realpath(root)
    real_path = os.path.realpath(path)
    if os.path.commonpath([real_root, real_path]) != real_root:
        raise InputError(
            f"image {path} is outside the Label Studio local-files root {root}; move the images under it "
            "or reconnect with a DIR that contains them: `alkit ls connect --url URL --project-id ID --local-files-root DIR`"
        )
    return PurePosixPath(*os.path.relpath(real_path, real_root).split(os.sep)).as_posix()


def image_reference(path: str, local_files_root: str | None, url_prefix: str | None) -> str:
    """What goes into `task.data.image` for one image file.

    `url_prefix` (images already on HTTP) wins: prefix + the path relative to
    `local_files_root` when that is set (the directory the HTTP server serves), else the
    absolute path without its leading slash. Otherwise `/data/local-files/?d=<relative path>`.
    """
    if url_prefix:
        relative = relative_to_root(path, local_files_root) if local_files_root else path.lstrip("/")
        return url_prefix.rstrip("/") + "/" + quote(relative)
    if local_files_root:
        return LOCAL_FILES_PREFIX + quote(relative_to_root(path, local_files_root))
    raise ConfigError(
        "no way to show images in Label Studio; run `alkit ls connect --url URL --project-id ID --local-files-root DIR` "
        "(the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT) or `--image-url-prefix URL`"
    )


def storage_directories(paths: list[str], local_files_root: str) -> list[str]:
    """The first-level sub-directories of the root that hold `paths` (LS refuses the root itself)."""
    tops: set[str] = set()
    for path in paths:
        relative = relative_to_root(path, local_files_root)
        parts = relative.split("/")
        if len(parts) < 2:
            raise InputError(
                f"image {path} lies directly in the local-files root {local_files_root}; Label Studio only serves "
                "files in a sub-directory of it: move the images into e.g. "
                f"{os.path.join(local_files_root, 'images')}"
            )
        tops.add(os.path.join(os.path.realpath(local_files_root), parts[0]))
    return sorted(tops)


def config_differences(label_config_xml: str, class_names: list[str]) -> list[str]:
    """How a project's labeling config differs from what alkit reads and writes (empty: it matches).

    alkit needs a `<Choices name="label">` whose choices are exactly the class list: a renamed
    control makes every annotation look empty, an extra choice gives annotations alkit cannot
    store, a missing one means a class nobody can pick. Each difference is one short sentence.
    """
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.fromstring(label_config_xml or "")
    except ElementTree.ParseError as error:
        return [f"the labeling config is not valid XML ({error})"]
    controls = [element for element in root.iter() if element.tag == "Choices"]
    names = [str(element.get("name")) for element in controls]
    ours = [element for element in controls if element.get("name") == FROM_NAME]
    if not ours:
        if names:
            return [
                f"the Choices control is named {', '.join(repr(n) for n in names)} in Label Studio, alkit reads {FROM_NAME!r}"
            ]
        return [f"the labeling config has no <Choices name={FROM_NAME!r}> control"]
    values = [str(choice.get("value")) for choice in ours[0].iter() if choice.tag == "Choice"]
    differences = []
    extra = [value for value in values if value not in set(class_names)]
    missing = [name for name in class_names if name not in set(values)]
    if extra:
        differences.append(f"choices in Label Studio but not alkit classes: {', '.join(repr(v) for v in extra)}")
    if missing:
        differences.append(f"alkit classes missing from the Label Studio choices: {', '.join(repr(n) for n in missing)}")
    return differences


def path_of_reference(reference: str, local_files_root: str | None, url_prefix: str | None) -> str | None:
    """The image file a task's `data.image` points at (the inverse of `image_reference`), for
    tasks made in Label Studio itself (imported, storage sync); None when it cannot tell."""
    from urllib.parse import parse_qs, unquote, urlparse

    if not isinstance(reference, str) or not reference:
        return None
    relative = None
    if url_prefix and reference.startswith(url_prefix.rstrip("/") + "/"):
        relative = unquote(reference[len(url_prefix.rstrip("/")) + 1 :])
        if not local_files_root:
            return "/" + relative
    elif "/data/local-files/" in reference:
        values = parse_qs(urlparse(reference).query).get("d")
        relative = values[0] if values else None
    if relative is None or not local_files_root:
        return None
    path = os.path.realpath(os.path.join(local_files_root, *relative.split("/")))
    return path if os.path.commonpath([os.path.realpath(local_files_root), path]) == os.path.realpath(local_files_root) else None
