"""Exact quality metrics of generated toy images, per prompt and overall, with their noise floor.

Every number compares samples with the *true* distribution, known in closed form (no feature network,
no reference set):

* ``fd`` — Fréchet distance, in pixel space, between the samples' Gaussian fit and the true moments of
  the prompt's mixture (overall: of the mixture of the prompts in the proportions generated).
* ``mode_tv`` — total-variation distance between the share of samples at each of the prompt's
  components (each sample assigned to its most likely component) and the components' true weights:
  0 is perfect coverage in the right proportions, a sampler that collapses to one mode of weight w
  scores 1 − w.
* ``modes`` — share of the prompt's components that receive at least half their expected share.
* ``alignment`` — share of samples whose most likely component (among *all* prompts') is one of their
  own prompt's: the image shows what was asked for.
* ``precision`` — share of samples within ``κ`` component standard deviations (RMS per pixel) of the
  mean of their most likely component: the image is a clean instance of some mode, not a blur
  between modes. Exact samples sit at RMS ≈ s_k, so κ = 2 keeps all of them.

The same metrics on a fresh exact sample with the same prompts and count are the *noise floor*: how
far from 0 (or 1) a perfect sampler lands at this sample size. Read every result against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from distillkit.metrics.frechet import frechet_to_reference
from distillkit.toy.world import World

#: precision radius, in component standard deviations (RMS per pixel)
PRECISION_KAPPA = 2.0
#: a component counts as covered when it receives at least this fraction of its expected share
COVERED_FRACTION = 0.5
#: metric name -> True when higher is better (printing and plots use it)
HIGHER_IS_BETTER = {"fd": False, "mode_tv": False, "modes": True, "alignment": True, "precision": True}
METRICS = tuple(HIGHER_IS_BETTER)


@dataclass
class ToyReport:
    """Metrics of one sample set: ``overall`` and ``per_prompt[prompt]``, each ``{metric: value}``."""

    overall: dict[str, float]
    per_prompt: dict[str, dict[str, float]]
    count: int
    protocol: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"overall": self.overall, "per_prompt": self.per_prompt, "count": self.count,
                "protocol": self.protocol}


def protocol(world: World, per_prompt: int) -> dict:
    """What the numbers depend on: the world, the count and the metric definitions."""
    c, h, w = world.image_shape
    return {"reference": f"toy world, exact closed-form moments ({len(world.prompts)} prompts, "
                         f"{world.num_components} components)",
            "count": per_prompt * len(world.prompts), "per_prompt": per_prompt, "resolution": f"{h}x{w}",
            "resize": "none", "features": f"pixels ({c}x{h}x{w} = {world.dim} dims)",
            "precision": f"RMS to nearest mean <= {PRECISION_KAPPA} std",
            "modes": f"component share >= {COVERED_FRACTION} x its weight"}


def component_log_likelihood(world: World, samples: torch.Tensor) -> torch.Tensor:
    """(N, K) log N(x; μ_k, s_k² I) of each sample under each component (without the weights)."""
    x = samples.detach().double().reshape(samples.shape[0], -1)
    means = world.means.flatten(1).to(x.device)
    var = (world.stds**2).to(x.device)
    sq = (x * x).sum(1, keepdim=True) - 2 * x @ means.T + (means**2).sum(1)
    return -0.5 * sq.clamp_min(0) / var - 0.5 * world.dim * var.log()


def _rms_to_means(world: World, samples: torch.Tensor) -> torch.Tensor:
    """(N, K) RMS per pixel between each sample and each component mean, in units of the component std."""
    x = samples.detach().double().reshape(samples.shape[0], -1)
    means = world.means.flatten(1).to(x.device)
    sq = ((x * x).sum(1, keepdim=True) - 2 * x @ means.T + (means**2).sum(1)).clamp_min(0)
    return (sq / world.dim).sqrt() / world.stds.to(x.device)


def _prompt_metrics(world: World, samples: torch.Tensor, p: int, log_lik: torch.Tensor,
                    rms: torch.Tensor) -> dict[str, float]:
    own = world.components_of(p)
    nearest_own = own[log_lik[:, own].argmax(1)]
    counts = torch.bincount(nearest_own, minlength=world.num_components)[own].double()
    shares = counts / counts.sum()
    weights = world.weights[own]
    nearest_any = log_lik.argmax(1)
    mean, cov, root = world.reference(world.prompts[p])
    return {
        "fd": frechet_to_reference(samples, mean, cov, root),
        "mode_tv": float(0.5 * (shares - weights).abs().sum()),
        "modes": float((shares >= COVERED_FRACTION * weights).double().mean()),
        "alignment": float((world.component_prompt[nearest_any] == p).double().mean()),
        "precision": float((rms.gather(1, nearest_any[:, None]).flatten() <= PRECISION_KAPPA).double().mean()),
    }


def toy_metrics(world: World, samples: torch.Tensor, prompts: Sequence[str]) -> ToyReport:
    """All metrics of ``samples`` (N, C, H, W) in [-1, 1] generated for ``prompts`` (one per sample)."""
    if samples.shape[1:] != world.image_shape:
        raise ValueError(f"samples have shape {tuple(samples.shape[1:])}; this world's images are {world.image_shape}")
    if len(prompts) != samples.shape[0]:
        raise ValueError(f"{samples.shape[0]} samples but {len(prompts)} prompts")
    samples = samples.detach().double().cpu()
    index = torch.tensor([world.prompt_index(p) for p in prompts])
    log_lik = component_log_likelihood(world, samples)
    rms = _rms_to_means(world, samples)
    per_prompt = {}
    for p in index.unique().tolist():
        rows = index == p
        if int(rows.sum()) < 2:
            raise ValueError(f"prompt {world.prompts[p]!r} has fewer than 2 samples; metrics need at least 2 each")
        per_prompt[world.prompts[p]] = _prompt_metrics(world, samples[rows], p, log_lik[rows], rms[rows])
    shares = torch.bincount(index, minlength=len(world.prompts)).double() / len(prompts)
    mean, cov, root = world.reference(shares=shares)
    weights = {name: float(shares[world.prompt_index(name)]) for name in per_prompt}
    overall = {"fd": frechet_to_reference(samples, mean, cov, root)}
    for metric in METRICS[1:]:
        overall[metric] = sum(weights[name] * m[metric] for name, m in per_prompt.items())
    return ToyReport(overall, per_prompt, len(prompts))


def noise_floor(world: World, prompts: Sequence[str], seed: int = 0) -> ToyReport:
    """The metrics of a fresh exact sample with the same prompts: what a perfect sampler scores."""
    samples, _ = world.sample(list(prompts), torch.Generator().manual_seed(seed))
    return toy_metrics(world, samples, prompts)
