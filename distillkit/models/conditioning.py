"""Prompt conditioning as one batched object, so methods never touch family-specific fields.

SD1.5 needs only the text encoder's last hidden states; SDXL also needs the pooled projection of the
second encoder and the six ``add_time_ids`` (original size, crop, target size). Methods index, repeat
and concatenate conditioning (CFG batches cond and uncond as 2B) without knowing which family it is.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import torch


@dataclass
class Conditioning:
    embeds: torch.Tensor  # (B, L, D) cross-attention states
    pooled: Optional[torch.Tensor] = None  # (B, P) SDXL pooled text embedding
    time_ids: Optional[torch.Tensor] = None  # (B, 6) SDXL micro-conditioning

    @property
    def batch_size(self) -> int:
        return self.embeds.shape[0]

    def _map(self, fn) -> "Conditioning":
        return replace(self, **{f.name: (None if getattr(self, f.name) is None else fn(getattr(self, f.name)))
                                for f in fields(self)})

    def __getitem__(self, index) -> "Conditioning":
        return self._map(lambda x: x[index])

    def to(self, *args, **kwargs) -> "Conditioning":
        """Move to a device; a dtype argument applies to the float fields only (time_ids stay exact)."""

        def move(x: torch.Tensor) -> torch.Tensor:
            if x.is_floating_point():
                return x.to(*args, **kwargs)
            # an empty probe parses (device, dtype, ...) exactly as Tensor.to does; keep only its device
            return x.to(torch.empty(0, device=x.device).to(*args, **kwargs).device)

        return self._map(move)

    def repeat(self, n: int) -> "Conditioning":
        """Repeat each sample ``n`` times along the batch (a,a,b,b for n=2)."""
        return self._map(lambda x: x.repeat_interleave(n, dim=0))

    def expand(self, batch: int) -> "Conditioning":
        """Broadcast a batch-1 conditioning (the empty prompt) to ``batch`` samples."""
        if self.batch_size == batch:
            return self
        if self.batch_size != 1:
            raise ValueError(f"can only expand a batch-1 conditioning, got batch {self.batch_size}")
        return self._map(lambda x: x.expand(batch, *x.shape[1:]))

    def detach(self) -> "Conditioning":
        return self._map(lambda x: x.detach())

    @staticmethod
    def cat(items: list["Conditioning"]) -> "Conditioning":
        first = items[0]
        kwargs = {}
        for f in fields(first):
            vals = [getattr(c, f.name) for c in items]
            if any(v is None for v in vals):
                if not all(v is None for v in vals):
                    raise ValueError(f"cannot concatenate conditioning: field {f.name!r} missing in some items")
                kwargs[f.name] = None
            else:
                kwargs[f.name] = torch.cat(vals)
        return Conditioning(**kwargs)

    def where(self, mask: torch.Tensor, other: "Conditioning") -> "Conditioning":
        """Per-sample choice: ``other`` where mask is True (prompt dropout for CFG training)."""
        other = other.expand(self.batch_size)
        kwargs = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a is None:
                kwargs[f.name] = None
                continue
            m = mask.to(a.device).reshape(-1, *([1] * (a.dim() - 1)))
            kwargs[f.name] = torch.where(m, b.to(a.dtype), a)
        return Conditioning(**kwargs)
