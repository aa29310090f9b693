"""A self-contained HTML evaluation report: a metrics table plus PNGs inlined as data URIs.

One file that can be mailed or attached to a CI run, with no side files to lose.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Iterable


def png_data_uri(path: str | Path) -> str:
    """`data:image/png;base64,...` for a PNG file."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_html_report(
    path: str | Path, metrics: dict[str, Any], image_paths: Iterable[str | Path] = (), title: str = "alkit evaluation"
) -> Path:
    """Write `path`: a table of `metrics` (name -> value; nested dicts become sections) and the images.

    Every image is embedded as a base64 data URI, so the HTML file stands alone.
    """
    path = Path(path)
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}img{max-width:100%;margin:1em 0}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
    ]
    parts.extend(_metrics_tables(metrics))
    for image in image_paths:
        image = Path(image)
        parts.append(f"<figure><img alt=\"{html.escape(image.stem)}\" src=\"{png_data_uri(image)}\">"
                     f"<figcaption>{html.escape(image.stem)}</figcaption></figure>")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _metrics_tables(metrics: dict[str, Any], heading: str | None = None) -> list[str]:
    """One table for the scalar entries, then one section per nested dict."""
    parts = [] if heading is None else [f"<h2>{html.escape(heading)}</h2>"]
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    if scalars:
        rows = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_format_value(v))}</td></tr>" for k, v in scalars.items()
        )
        parts.append(f"<table>{rows}</table>")
    for key, value in metrics.items():
        if isinstance(value, dict):
            parts.extend(_metrics_tables(value, str(key)))
    return parts
