"""`alkit report`: one self-contained HTML page about a project's active-learning rounds.

`collect` reads what the database recorded (rounds, selected items, labels, evaluations,
Label Studio annotations) into plain dataclasses; `thumbnails` makes small embedded copies
of the selected images; `html` lays everything out for people (headings in words, numbers
rounded, PNG plots and thumbnails as data URIs so the page needs no network or side files).
The use case that ties them together is `alkit.workflows.report.build_report`.
"""
