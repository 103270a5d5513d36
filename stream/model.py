"""The two towers: frozen torch modules that map embedding rows into the shared space.

Online learning never touches tower weights; only the embedding rows held by the
parameter server move. ``freeze`` makes that a property of the module, not a
convention: every parameter has ``requires_grad=False``, so a gradient can only
reach the row tensors fed in.

Examples
--------
>>> import torch
>>> towers = freeze(TwoTower.create(dim=8, seed=0))
>>> any(p.requires_grad for p in towers.parameters())
False
>>> rows = torch.randn(3, 8, requires_grad=True)
>>> out = towers.items(rows)
>>> out.shape, bool(torch.allclose(out.norm(dim=1), torch.ones(3)))
(torch.Size([3, 8]), True)
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn


class Tower(nn.Module):
    """A residual MLP: ``normalize(x + W2 tanh(W1 x))``; output on the unit sphere."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, hidden)
        self.outer = nn.Linear(hidden, dim)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        out = rows + self.outer(torch.tanh(self.inner(rows)))
        return nn.functional.normalize(out, dim=-1)


class TwoTower(nn.Module):
    """A user tower and an item tower of the same output dimension."""

    users: Tower
    items: Tower

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.dim = dim
        self.users = Tower(dim, hidden)
        self.items = Tower(dim, hidden)

    @classmethod
    def create(cls, dim: int, hidden: int | None = None, seed: int = 0) -> TwoTower:
        """Seeded towers. Until ``bootstrap`` trains them, they are small random residual maps."""
        gen = torch.Generator().manual_seed(seed)
        towers = cls(dim, hidden or 2 * dim)
        with torch.no_grad():
            for p in towers.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (0.1 / p.shape[-1] ** 0.5))
        return towers


M = TypeVar("M", bound=nn.Module)


def freeze(module: M) -> M:
    """Freeze for good: no parameter takes gradients and the module is in eval mode."""
    module.requires_grad_(False)
    module.eval()
    return module
