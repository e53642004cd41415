"""The toy world: a text-conditioned mixture of Gaussians over small images, known in closed form.

Each prompt ("a red circle") owns a few components. A component is an isotropic Gaussian
N(μ_k, s_k² I) over images (C, H, W) in [-1, 1] whose mean μ_k is a rendered shape (its position and
size differ between the components of a prompt) and whose spread s_k is small. So everything a
distillation study wants to know exactly is exact here:

* samples: pick a component by its weight, add s_k ε to its mean;
* the moments of each prompt's distribution, and of the prompt-free mixture, by the law of total
  variance: m = Σ w_k μ_k and C = Σ w_k (s_k² I + μ_k μ_kᵀ) − m mᵀ;
* the denoiser of the diffused mixture (see :mod:`distillkit.toy.exact`).

A world is data (component table plus prompt embeddings): it is saved with the model folder and
loaded from it, so the rendering code below only decides what the *default* world looks like.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

#: colours in [-1, 1] per channel; the background is a dark grey so shapes stand out in every channel
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.7, -0.5, -0.5), "green": (-0.5, 0.7, -0.5), "blue": (-0.5, -0.4, 0.7), "yellow": (0.7, 0.7, -0.5),
}
BACKGROUND = (-0.6, -0.6, -0.6)
#: supersampling factor of the renderer: shape edges are anti-aliased, so means are smooth images
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Component:
    """One Gaussian of the mixture: a rendered shape (its mean) plus isotropic noise of std ``std``."""

    prompt: str
    shape: str  # "circle" | "square" | "triangle"
    color: tuple[float, float, float]
    center: tuple[float, float]  # (x, y) in pixels, origin at the top-left corner
    size: float  # radius (circle), half side (square), circumradius (triangle), in pixels
    weight: float  # probability of this component within its prompt
    std: float


def _coverage(shape: str, center: tuple[float, float], size: float, resolution: int) -> torch.Tensor:
    """(H, W) share of each pixel the shape covers, by supersampling pixel centres."""
    n = resolution * SUPERSAMPLE
    coords = (torch.arange(n, dtype=torch.float64) + 0.5) / SUPERSAMPLE
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    cx, cy = center
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= size**2
    elif shape == "square":
        inside = ((x - cx).abs() <= size) & ((y - cy).abs() <= size)
    elif shape == "triangle":  # pointing up, vertices on the circle of radius ``size``
        top, base = cy - size, cy + size / 2
        half = (y - top) / (base - top) * size * 3**0.5 / 2  # half width grows linearly to the base
        inside = (y >= top) & (y <= base) & ((x - cx).abs() <= half)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected circle, square or triangle")
    return inside.double().reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE).mean(dim=(1, 3))


def render(component: Component, resolution: int, background: Sequence[float] = BACKGROUND) -> torch.Tensor:
    """The component's mean image (3, H, W), float64: background blended with its colour by coverage."""
    cover = _coverage(component.shape, component.center, component.size, resolution)
    bg = torch.tensor(background, dtype=torch.float64).view(3, 1, 1)
    fg = torch.tensor(component.color, dtype=torch.float64).view(3, 1, 1)
    return bg + (fg - bg) * cover


@dataclass
class World:
    """A prompt-conditioned Gaussian mixture with its tensors (all float64, on the CPU).

    ``means`` (K, C, H, W), ``stds`` (K,), ``weights`` (K,) within each prompt, ``component_prompt`` (K,)
    the index of each component's prompt, ``prompt_weights`` (P,) the share of each prompt in the
    prompt-free mixture, ``embeddings`` (P, L, D) the conditioning each prompt is encoded to (the empty
    prompt is all zeros).
    """

    prompts: list[str]
    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor
    component_prompt: torch.Tensor
    prompt_weights: torch.Tensor
    embeddings: torch.Tensor
    components: list[Component] = field(default_factory=list)  # how the means were made (documentation)
    #: closed-form moments and their matrix square roots, computed once per prompt (metrics reuse them)
    _reference: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        k = self.means.shape[0]
        if not (self.stds.shape == self.weights.shape == self.component_prompt.shape == (k,)):
            raise ValueError("means, stds, weights and component_prompt must describe the same K components")
        if self.prompt_weights.shape != (len(self.prompts),) or self.embeddings.shape[0] != len(self.prompts):
            raise ValueError("prompt_weights and embeddings need one entry per prompt")
        for p in range(len(self.prompts)):
            total = float(self.weights[self.component_prompt == p].sum())
            if abs(total - 1) > 1e-6:
                raise ValueError(f"component weights of prompt {self.prompts[p]!r} sum to {total}, not 1")
        if abs(float(self.prompt_weights.sum()) - 1) > 1e-6:
            raise ValueError("prompt_weights must sum to 1")

    # -- shape ----------------------------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.means.shape[1:])

    @property
    def dim(self) -> int:
        return self.means[0].numel()

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def prompt_index(self, prompt: str) -> int:
        try:
            return self.prompts.index(prompt)
        except ValueError:
            raise KeyError(f"the toy world has no prompt {prompt!r}; its prompts are {self.prompts}") from None

    def components_of(self, p: int) -> torch.Tensor:
        return torch.nonzero(self.component_prompt == p).flatten()

    def joint_log_weights(self) -> torch.Tensor:
        """(P + 1, K) log prior of each component given each prompt; the last row is the empty prompt
        (every component, weighted by its prompt's share). −inf where a component is not the prompt's."""
        P, K = len(self.prompts), self.num_components
        table = torch.full((P + 1, K), float("-inf"), dtype=torch.float64)
        for p in range(P):
            idx = self.components_of(p)
            table[p, idx] = self.weights[idx].log()
        table[P] = (self.weights * self.prompt_weights[self.component_prompt]).log()
        return table

    # -- exact samples -----------------------------------------------------------------------------------
    def sample(self, prompts: Sequence[str | None], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact samples (N, C, H, W) float64 and the component each came from; ``None``/"" = no prompt."""
        prior = self.joint_log_weights().exp()
        rows = [len(self.prompts) if not p else self.prompt_index(p) for p in prompts]
        comp = torch.multinomial(prior[rows], 1, generator=generator).flatten()
        noise = torch.randn((len(rows), *self.image_shape), generator=generator, dtype=torch.float64)
        return self.means[comp] + self.stds[comp].view(-1, 1, 1, 1) * noise, comp

    def balanced_prompts(self, per_prompt: int) -> list[str]:
        """``per_prompt`` copies of each prompt, prompt-major (the evaluation's layout)."""
        return [p for p in self.prompts for _ in range(per_prompt)]

    # -- closed-form moments -----------------------------------------------------------------------------
    def moments(self, prompt: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean (D,), covariance (D, D)) of one prompt's distribution, or of the prompt-free mixture."""
        row = len(self.prompts) if not prompt else self.prompt_index(prompt)
        w = self.joint_log_weights()[row].exp()
        keep = w > 0
        return mixture_moments(self.means[keep].flatten(1), self.stds[keep], w[keep])

    def reference(self, prompt: str | None = None, shares: torch.Tensor | None = None) -> tuple:
        """(mean, covariance, covariance^½) of a prompt (or of the mix with prompt ``shares``), cached:
        the square root is the one D×D decomposition a Fréchet distance to the truth needs."""
        from distillkit.metrics.frechet import psd_sqrt

        key = ("mix", tuple(torch.as_tensor(shares).tolist())) if shares is not None else prompt
        if key not in self._reference:
            mean, cov = self.moments_of_mix(shares) if shares is not None else self.moments(prompt)
            self._reference[key] = (mean, cov, psd_sqrt(cov))
        return self._reference[key]

    def moments_of_mix(self, prompt_shares: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Moments of the mixture that draws prompt p with probability ``prompt_shares[p]`` (an
        evaluation that generates equal counts per prompt compares against shares 1/P)."""
        w = self.weights * torch.as_tensor(prompt_shares, dtype=torch.float64)[self.component_prompt]
        keep = w > 0
        return mixture_moments(self.means[keep].flatten(1), self.stds[keep], w[keep] / w[keep].sum())

    # -- (de)serialisation -------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {"means": self.means, "stds": self.stds, "weights": self.weights,
                "component_prompt": self.component_prompt, "prompt_weights": self.prompt_weights,
                "embeddings": self.embeddings}

    def describe(self) -> dict:
        return {"prompts": list(self.prompts), "image_shape": list(self.image_shape),
                "components": [asdict(c) for c in self.components]}

    @classmethod
    def from_tensors(cls, prompts: Sequence[str], tensors: dict[str, torch.Tensor],
                     components: Sequence[dict] = ()) -> "World":
        t = {k: v.to("cpu") for k, v in tensors.items()}
        return cls(list(prompts), t["means"].double(), t["stds"].double(), t["weights"].double(),
                   t["component_prompt"].long(), t["prompt_weights"].double(), t["embeddings"].float(),
                   [Component(**{**c, "color": tuple(c["color"]), "center": tuple(c["center"])}) for c in components])


def mixture_moments(means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of Σ w_k N(μ_k, s_k² I): the law of total variance, in float64."""
    means, stds, weights = means.double(), stds.double(), weights.double()
    m = weights @ means
    centred = means - m
    cov = (centred.T * weights) @ centred
    cov.diagonal().add_(float(weights @ stds**2))
    return m, cov


# -- the default world ----------------------------------------------------------------------------------
#: (prompt, shape, colour) of the default world's prompts
DEFAULT_PROMPTS = (("a red circle", "circle", "red"), ("a blue square", "square", "blue"),
                   ("a green triangle", "triangle", "green"), ("a yellow circle", "circle", "yellow"))
#: (x, y, size) of each prompt's components, as fractions of the image side, with their weights
DEFAULT_LAYOUTS = (
    ((0.31, 0.31, 0.19), (0.66, 0.62, 0.25), (0.50, 0.50, 0.31), (0.69, 0.25, 0.16)),
    ((0.28, 0.66, 0.16), (0.62, 0.34, 0.22), (0.50, 0.50, 0.28), (0.72, 0.72, 0.13)),
    ((0.50, 0.56, 0.34), (0.31, 0.38, 0.22), (0.69, 0.62, 0.25), (0.50, 0.31, 0.19)),
    ((0.66, 0.34, 0.19), (0.34, 0.62, 0.25), (0.50, 0.50, 0.19), (0.25, 0.25, 0.13)),
)
DEFAULT_WEIGHTS = (0.4, 0.3, 0.2, 0.1)
DEFAULT_STD = 0.06
EMBED_DIM = 32


def prompt_embeddings(num_prompts: int, dim: int = EMBED_DIM, seed: int = 0) -> torch.Tensor:
    """(P, 1, D) fixed prompt embeddings: orthogonal rows of norm √D (the empty prompt is zeros), so
    every prompt is as far from every other and from "no prompt" as from any other."""
    if num_prompts > dim:
        raise ValueError(f"{num_prompts} prompts need an embedding dimension of at least {num_prompts}, got {dim}")
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, num_prompts, generator=g, dtype=torch.float64))
    return (q.T * dim**0.5).float().unsqueeze(1)


def default_world(resolution: int = 16, std: float = DEFAULT_STD, embed_dim: int = EMBED_DIM) -> World:
    """Four prompts × four components of 3×``resolution``² shapes (the world the shipped teacher learnt)."""
    components = []
    for (prompt, shape, colour), layout in zip(DEFAULT_PROMPTS, DEFAULT_LAYOUTS):
        for (fx, fy, fs), w in zip(layout, DEFAULT_WEIGHTS):
            components.append(Component(prompt, shape, COLORS[colour], (fx * resolution, fy * resolution),
                                        fs * resolution, w, std))
    return build_world(components, resolution, embed_dim=embed_dim)


def build_world(components: Sequence[Component], resolution: int, embed_dim: int = EMBED_DIM,
                background: Sequence[float] = BACKGROUND) -> World:
    """Render a component table into a :class:`World` (prompts in order of first appearance, equal shares)."""
    prompts = list(dict.fromkeys(c.prompt for c in components))
    means = torch.stack([render(c, resolution, background) for c in components])
    return World(prompts=prompts, means=means,
                 stds=torch.tensor([c.std for c in components], dtype=torch.float64),
                 weights=torch.tensor([c.weight for c in components], dtype=torch.float64),
                 component_prompt=torch.tensor([prompts.index(c.prompt) for c in components]),
                 prompt_weights=torch.full((len(prompts),), 1 / len(prompts), dtype=torch.float64),
                 embeddings=prompt_embeddings(len(prompts), embed_dim), components=list(components))
