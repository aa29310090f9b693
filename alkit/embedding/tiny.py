"""Tiny random open_clip configs for tests and benchmarks (no weights to download)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

TINY_VIT = "alkit-tiny-vit"
TINY_VIT_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 1, "mlp_ratio": 2.0},
}


def register_config(name: str = TINY_VIT, config: dict | None = None) -> str:
    """Make open_clip know `name` (written to a temporary JSON file, read at once); returns name."""
    import open_clip

    with tempfile.TemporaryDirectory(prefix="alkit-config-") as directory:
        path = Path(directory) / f"{name}.json"
        path.write_text(json.dumps(TINY_VIT_CONFIG if config is None else config))
        open_clip.add_model_config(path)
    return name
