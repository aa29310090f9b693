"""alkit: active learning for image annotation.

Importing this package is cheap: torch, open_clip, faiss and the Label Studio SDK are
imported inside the functions that need them, so `alkit --help` stays fast.
"""

__version__ = "0.1.0"
