"""Defaults of `alkit eval`, free of heavy imports so the CLI builds `alkit eval --help` from them."""

from __future__ import annotations

DEFAULT_BINS = 15  # equal-width confidence bins of the ECE and the reliability diagram
DEFAULT_SPLIT = "test"  # storage.schema.Split.TEST, the held-out labelled images
