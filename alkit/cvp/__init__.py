"""Calibrated variance propagation (CVP) through the last blocks of an open_clip vision tower.

Core maths only (torch tensors in, torch tensors out): `rules` (one propagation rule per
layer type), `activations` (moment-matched GELU / QuickGELU), `blocks` (a whole open_clip
`ResidualAttentionBlock`, the vision tail, `ln_post` and `visual.proj`), `weights` (the
diagonal Gaussian weight posterior and draws from it), `montecarlo` (the reference: open_clip's
own modules run with weight draws), `laplace` (the posterior's curvature and prior precision),
`calibration` (variance scales fitted by NLL), `predictive` (logits and the probit predictive
through BayesVLM's ProbCosine), `bayesvlm_features` (BayesVLM's logits when phi carries
CVP's variance). Imports no adapter; the use case is `workflows.cvp_embed`.
"""
