"""Small open_clip model configs that ship with alkit as data (no weights to download):

- `alkit-tiny-vit`: a tiny random ViT for tests and benchmarks;
- `alkit-tiny-clip`: the demo's small CLIP (trained on MNIST digits by `alkit.demo`).

`alkit.embedding.spec.BUNDLED_CONFIGS` registers them with open_clip on first use.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

TINY_VIT = "alkit-tiny-vit"
TINY_VIT_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 1, "mlp_ratio": 2.0},
}

TINY_CLIP_NAME = "alkit-tiny-clip"
# embed_dim D = 64; image phi d = 64 (ViT width); text psi d_text = 64.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 28,  # MNIST size: 4 x 4 patches of 7 pixels, no resampling needed
        "patch_size": 7,
        "width": 64,
        "layers": 3,
        "head_width": 32,
        "mlp_ratio": 2.0,
    },
    "text_cfg": {
        "context_length": 16,  # "a photo of the digit seven" is 8 tokens with sot/eot
        "vocab_size": 49408,  # open_clip's SimpleTokenizer (ships with the package, offline)
        "width": 64,
        "heads": 2,
        "layers": 2,
        "mlp_ratio": 2.0,
    },
}


def register_config(name: str = TINY_VIT, config: dict | None = None) -> str:
    """Make `open_clip.create_model_and_transforms(name, ...)` know `config` (default: the tiny
    ViT); returns name.

    open_clip reads configs from JSON files named `<name>.json`; the file is written to a
    temporary directory, registered with `open_clip.add_model_config` (which reads it into
    memory at once) and deleted. Idempotent; a different config under the same name replaces it.
    """
    import open_clip

    config = TINY_VIT_CONFIG if config is None else config
    if open_clip.get_model_config(name) == config:
        return name  # already registered (add_model_config would grow open_clip's path list)
    with tempfile.TemporaryDirectory(prefix="alkit-config-") as directory:
        path = Path(directory) / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)
    return name
