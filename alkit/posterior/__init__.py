"""Posteriors over the last layers of a vision-language model (core maths, no I/O).

The contract: `base` (the `Posterior` Protocol, `FeatureKind`, provenance). The kinds, one
registry: `registry.POSTERIORS` (kind -> class). Persistence, one entry point: `io`
(safetensors + JSON header, atomic writes).

Kinds: `bayesvlm` (Kronecker Laplace over CLIP's image projection; `bayesvlm_refit` learns
from labels), `laplace_head` (Laplace linear head on embeddings; `laplace_head_fit` MAP and
evidence, `laplace_head_calibration` the predictive's temperature), `probvlm` (generalised-
Gaussian adapters; `probvlm_adapter`, `probvlm_train`), `ensemble`, `mimo`, `hetsngp`
(trained heads; shared pieces in `trained_heads`). Shared maths: `head_inputs` (standardised
embedding inputs of every head), `ggn` (closed-form contrastive GGN), `kfac` (Kronecker
factors), `kronecker` (damped eigen-factors), `evidence` (prior precision by type-II ML),
`probcosine` (analytic cosine moments + probit), `sampling` (cosine logits under projection
draws), `gennorm` (generalised Gaussian), `threads` (one BLAS thread for small fits).
Nothing here imports torch at import time.
"""
