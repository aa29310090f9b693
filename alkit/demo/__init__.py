"""The offline demo's ingredients: a tiny CLIP-style open_clip model and shifted digit data.

No pretrained CLIP weights can be downloaded in the demo's setting, so the demo trains a
small open_clip model on one part of the packaged MNIST subset (`data.py`, `train_clip.py`)
and serves it through open_clip's normal `create_model_and_transforms(name, pretrained=PATH)`
path (`tiny_clip.py`). The active-learning pool and test images come from a shifted style
(rotation, inverted contrast, noise) where the zero-shot model is weak but its features are not.

Modules import torch/open_clip inside their functions: `import alkit.demo` stays cheap.
"""
