"""The trainable discriminator heads D_k of ADD / StyleGAN-T (``networks/discriminator.py``, ``DiscHead``).

Each head reads one frozen token map f_k (B, C, N) and returns one logit per token. It is deliberately
small — the frozen feature network does the heavy lifting (Projected GANs) — and spectrally
normalised so the heads stay Lipschitz-bounded on top of arbitrary pretrained features:

    h   = LReLU(BN(SNConv1d_k1(f)))             C → channels
    h   = (h + LReLU(BN(SNConv1d_k9(h)))) / √2  residual block, circular padding over tokens
    out = SNConv1d_k1(h)                        channels → cmap_dim (conditional) or 1

Conditional heads use the projection discriminator form: logit_n = <out_n, cmap(c)> / √cmap_dim with a
per-head linear map ``cmap`` of the conditioning vector c. StyleGAN-T's first convolution keeps the
feature width C; here it maps to ``channels`` (64 by default) so that a head's size does not grow with
the feature network (384 for ViT-S, 1024 for ViT-L).
"""

from __future__ import annotations

import math

import torch
from torch.nn.utils.parametrizations import spectral_norm


class BatchNormLocal(torch.nn.Module):
    """Batch norm over groups of ``virtual_bs`` samples and all tokens, with no running statistics.

    StyleGAN-T's ``BatchNormLocal``: statistics never leak across far-apart samples of a large batch and
    eval/train behave the same (there are no running averages to go stale while the generator moves).
    Groups are as equal as possible (``tensor_split``), so any batch size works.
    """

    def __init__(self, num_features: int, virtual_bs: int = 8, eps: float = 1e-5):
        super().__init__()
        self.virtual_bs = virtual_bs
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_features))
        self.bias = torch.nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = max(1, math.ceil(x.shape[0] / self.virtual_bs))
        out = []
        for g in torch.tensor_split(x, groups, dim=0):
            mean = g.mean(dim=(0, 2), keepdim=True)
            var = g.var(dim=(0, 2), keepdim=True, unbiased=False)
            out.append((g - mean) / torch.sqrt(var + self.eps))
        return torch.cat(out) * self.weight[None, :, None] + self.bias[None, :, None]


def sn_conv1d(cin: int, cout: int, kernel_size: int) -> torch.nn.Module:
    conv = torch.nn.Conv1d(cin, cout, kernel_size, padding=kernel_size // 2, padding_mode="circular")
    return spectral_norm(conv, n_power_iterations=1, eps=1e-12)


def block(cin: int, cout: int, kernel_size: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(sn_conv1d(cin, cout, kernel_size), BatchNormLocal(cout), torch.nn.LeakyReLU(0.2))


class Residual(torch.nn.Module):
    def __init__(self, fn: torch.nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.fn(x) + x) / math.sqrt(2)


class DiscHead(torch.nn.Module):
    """One head: token map (B, C, N) [+ conditioning (B, c_dim)] → token logits (B, N)."""

    def __init__(self, in_channels: int, channels: int = 64, c_dim: int = 0, cmap_dim: int = 64):
        super().__init__()
        self.c_dim = c_dim
        self.cmap_dim = cmap_dim
        self.main = torch.nn.Sequential(block(in_channels, channels, 1), Residual(block(channels, channels, 9)))
        if c_dim > 0:
            self.cmapper = torch.nn.Linear(c_dim, cmap_dim)
            self.cls = sn_conv1d(channels, cmap_dim, 1)
        else:
            self.cls = sn_conv1d(channels, 1, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        out = self.cls(self.main(x))
        if self.c_dim > 0:
            if c is None:
                raise ValueError("this head is conditional: pass the conditioning vector c")
            cmap = self.cmapper(c.to(out.dtype)).unsqueeze(-1)
            return (out * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)
        return out.squeeze(1)
