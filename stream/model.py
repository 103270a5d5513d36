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
>>> towers.items(rows).shape, towers.content(torch.randn(3, CONTENT_DIM)).shape
(torch.Size([3, 8]), torch.Size([3, 8]))
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

CONTENT_DIM = 384  # all-MiniLM-L6-v2


class Tower(nn.Module):
    """A residual MLP, ``x + W2 tanh(W1 x)``. Raw output: the similarity decides on norms."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, hidden)
        self.outer = nn.Linear(hidden, dim)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return rows + self.outer(torch.tanh(self.inner(rows)))


class TwoTower(nn.Module):
    """A user tower and an item tower of the same output dimension, and the content projection.

    ``content`` maps a frozen text encoder's embedding of an item (its title and
    tags) into the *row* space: the item tower turns it into a served vector like
    any row, so a new item can be served, blended, and start its own row from it,
    before it has a single interaction.
    """

    users: Tower
    items: Tower
    content: nn.Linear

    def __init__(self, dim: int, hidden: int, content_dim: int = CONTENT_DIM) -> None:
        super().__init__()
        self.dim = dim
        self.users = Tower(dim, hidden)
        self.items = Tower(dim, hidden)
        self.content = nn.Linear(content_dim, dim)

    @classmethod
    def create(
        cls, dim: int, hidden: int | None = None, seed: int = 0, content_dim: int = CONTENT_DIM
    ) -> TwoTower:
        """Seeded towers. Until ``bootstrap`` trains them, they are small random residual maps."""
        gen = torch.Generator().manual_seed(seed)
        towers = cls(dim, hidden or 2 * dim, content_dim)
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
