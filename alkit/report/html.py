"""HTML for the report: headings and captions in words, numbers rounded, everything inline.

Pure string building (no I/O except reading the PNG files that become data URIs). Every
section has a stable `id` so scripts and tests can find it.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from alkit.metrics.report import png_data_uri
from alkit.report.collect import Agreement, RoundSummary

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
p.lead{color:#555}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td.name,th.name{text-align:left}td.rare{background:#fde2e2;font-weight:bold}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figure img{max-width:100%}figcaption{font-size:.85em;color:#555}
.gallery{display:flex;flex-wrap:wrap;gap:8px;margin:.5em 0 1.5em}
.tile{border:1px solid #ccc;border-radius:4px;padding:4px;width:118px;font-size:.75em;line-height:1.3}
.tile img{width:96px;height:96px;image-rendering:pixelated;display:block;margin:0 auto 3px;object-fit:contain;background:#000}
.tile.wrong{border-color:#d33;background:#fff4f4}.tile.right{border-color:#3a3}
.missing{width:96px;height:96px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888;margin:0 auto 3px}
.note{color:#666;font-size:.9em}
"""


@dataclass
class Section:
    id: str
    heading: str
    body: str
    intro: str = ""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def figure(path: str | Path, caption: str) -> str:
    return (f'<figure><img alt="{esc(caption)}" src="{png_data_uri(path)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], name_columns: int = 1) -> str:
    def cell(tag: str, index: int, value: object) -> str:
        css = ' class="name"' if index < name_columns else ""
        return f"<{tag}{css}>{esc(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def page(title: str, subtitle: str, sections: list[Section]) -> str:
    contents = "".join(f'<li><a href="#{esc(s.id)}">{esc(s.heading)}</a></li>' for s in sections)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1><p class=\"lead\">{esc(subtitle)}</p><ol>{contents}</ol>",
    ]
    for section in sections:
        intro = f'<p class="lead">{esc(section.intro)}</p>' if section.intro else ""
        parts.append(f'<section id="{esc(section.id)}"><h2>{esc(section.heading)}</h2>{intro}{section.body}</section>')
    parts.append("</body></html>")
    return "\n".join(parts)


def gallery(summary: RoundSummary, thumbnails: dict[int, str | None], score_name: str) -> str:
    """One round: what was selected, in rank order, with the model's guess and the label it got."""
    tiles = []
    for item in summary.items:
        uri = thumbnails.get(item.image_id)
        picture = (f'<img alt="{esc(Path(item.path).name)}" src="{uri}">' if uri
                   else '<div class="missing">file not readable</div>')
        guess = "no prediction" if item.predicted_class is None else f"{item.predicted_class} ({item.probability:.0%})"
        label = "not labelled yet" if item.label is None else item.label
        css = "" if item.label is None or item.predicted_class is None else (" right" if item.label == item.predicted_class else " wrong")
        tiles.append(
            f'<div class="tile{css}" title="{esc(item.path)}">{picture}'
            f"<b>#{item.rank}</b> {esc(score_name)} {number(item.score)}<br>"
            f"model: {esc(guess)}<br>label: <b>{esc(label)}</b></div>"
        )
    right = sum(1 for i in summary.items if i.label is not None and i.label == i.predicted_class)
    judged = sum(1 for i in summary.items if i.label is not None and i.predicted_class is not None)
    verdict = f"; the model was right on {right} of the {judged} labelled picks" if judged else ""
    return (f"<h3>Round {summary.number}: {len(summary.items)} images chosen by {esc(summary.method)} "
            f"({esc(summary.status)}){esc(verdict)}</h3><div class=\"gallery\">{''.join(tiles)}</div>")


def class_balance_table(row_names: list[str], counts, class_names: list[str]) -> str:
    """Counts per class after each round; classes with under half the mean count are highlighted."""
    rows = []
    for name, row in zip(row_names, counts):
        mean = row.mean() if len(row) else 0
        cells = "".join(
            f'<td class="rare">{int(c)}</td>' if mean > 0 and c < mean / 2 else f"<td>{int(c)}</td>" for c in row
        )
        rows.append(f'<tr><td class="name">{esc(name)}</td>{cells}<td>{int(row.sum())}</td></tr>')
    head = "".join(f"<th>{esc(c)}</th>" for c in class_names)
    return (f'<table><tr><th class="name">labels</th>{head}<th>total</th></tr>{"".join(rows)}</table>'
            '<p class="note">Highlighted: classes with fewer than half the mean number of labels.</p>')


def agreement_body(agreement: Agreement | None) -> str:
    if agreement is None:
        return '<p class="note">No labels came from Label Studio yet (`alkit pull` records them per annotator).</p>'
    parts = [
        f"<p>{agreement.images_with_several} images were labelled by more than one annotator; "
        f"{agreement.conflicts} of them got different classes.</p>",
        table(["annotator", "annotations"], agreement.annotators.items()),
    ]
    if agreement.disagreements_per_class:
        parts.append("<p>Classes involved in disagreements (images where some annotator chose the class):</p>")
        parts.append(table(["class", "images in dispute"], agreement.disagreements_per_class.items()))
    if agreement.examples:
        parts.append(table(["image", "answers"], [
            (Path(path).name, ", ".join(f"{who}: {what}" for who, what in by.items())) for path, by in agreement.examples
        ], name_columns=2))
    return "".join(parts)
