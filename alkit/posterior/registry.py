"""The one registry of posterior kinds: name -> class.

Each class declares what it needs to be used (`kind`, `feature_kind`, `fast_sample_logits`;
see `base.Posterior`); the description here is what `alkit strategies` lists under
`fit --posterior`. Loading a saved posterior (`io.load_posterior`) finds its class here, and
`alkit fit` finds each kind's builder in `alkit.workflows.fit_builders` under the same name.
Importing this module imports the posterior modules (numpy only; torch stays inside functions).
"""

from __future__ import annotations

from alkit.posterior.base import FeatureKind
from alkit.posterior.bayesvlm import BayesVLMPosterior
from alkit.posterior.ensemble import EnsemblePosterior
from alkit.posterior.hetsngp import HetSNGPPosterior
from alkit.posterior.laplace_head import LaplaceHeadPosterior
from alkit.posterior.mimo import MimoPosterior
from alkit.posterior.probvlm import ProbVLMPosterior
from alkit.registry import Registry

POSTERIORS: Registry[type] = Registry("posterior")

BUILTIN = (
    (BayesVLMPosterior, "Laplace over CLIP's image projection (open_clip embeddings), n chosen by the labels' evidence, Monte Carlo predictive; "
     "on a spec embedded with `alkit embed --cvp-blocks K` it also uses each image's phi variance (CVP: README)"),
    (LaplaceHeadPosterior, "Laplace over a linear head on the embeddings (any imported embeddings)"),
    (
        ProbVLMPosterior,
        "ProbVLM adapters (needs class-prompt text embeddings); measured on the demo: its scores find zero-shot errors "
        "no better than zero-shot entropy (AUROC 0.62-0.76 vs 0.76), so it is never a default",
    ),
    (EnsemblePosterior, "Ensemble of 8 anchored linear heads on the embeddings (--hyper: members differ in weight decay)"),
    (MimoPosterior, "MIMO: 3 subnetworks in one small MLP on the embeddings, one forward pass (needs 2+ labels)"),
    (HetSNGPPosterior, "HetSNGP: spectral-norm MLP, random-feature GP output (Laplace) + heteroscedastic noise (needs 2+ labels)"),
)
for _cls, _description in BUILTIN:
    POSTERIORS.register(_cls.kind, _cls, _description)


def posterior_class(kind: str) -> type:
    """The posterior class registered under `kind` (UnknownNameError lists the valid names)."""
    return POSTERIORS.get(kind)


def feature_kind(kind: str) -> FeatureKind:
    """What a posterior of `kind` consumes per image (phi or the embedding)."""
    return posterior_class(kind).feature_kind
