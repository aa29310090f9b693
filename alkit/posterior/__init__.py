"""Posteriors over the last linear layers of a vision-language model (core maths, no I/O).

Modules: `ggn` (closed-form contrastive GGN), `kfac` (Kronecker factors), `kronecker`
(damped eigen-factors), `evidence` (prior precision by type-II ML), `probcosine` (analytic
cosine moments + probit), `sampling` (shared matrix-normal draws), `bayesvlm`
(BayesVLMPosterior, refit), `laplace_head` (LaplaceHeadPosterior on imported embeddings),
`io` (safetensors + JSON save/load, the POSTERIORS registry). Nothing here imports torch at
import time.
"""
