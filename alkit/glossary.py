"""Symbols used in shape comments and docstrings across alkit.

N  pool size (inputs being scored in one call)
K  number of classes
S  posterior samples (weight draws shared across all inputs of one selection)
D  embedding dimension (output of a projection layer; what FAISS indexes)
d  projection-input dimension (`phi`, the pooled feature entering `visual.proj`)
B  budget: items selected in one round
M  EPIG target inputs

Conventions
- `probs` is always `(S, N, K)`; a deterministic predictive is `(N, K)`.
- `scores` is `(N,)`, higher means more informative.
- `indices` are positions into the arrays of one call; they are turned into global image ids
  (`images.id` in the database) before anything is stored or printed.
"""
