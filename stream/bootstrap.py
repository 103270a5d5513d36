"""Offline bootstrap: train the towers, the content projection and the first rows on a history.

In-batch softmax (InfoNCE) with log-Q correction: every positive event's user is
scored against the batch's distinct items, and each item's logit is lowered by
the log of its expected share of the batch (its frequency in the history), so
popular items are not over-penalised as negatives (Yi et al., RecSys 2019).
A second InfoNCE term scores the same users against the items' *content*
vectors (text embedding -> projection), which is what trains the projection to
land new items where their future audience is.

After :func:`bootstrap` the towers and projection are frozen for good:
:func:`load_into` hands them to an :class:`~stream.training.OnlineTrainer`,
which only ever moves embedding rows.

Examples
--------
>>> import numpy as np
>>> from stream.schemas import Interaction
>>> events = [Interaction(f"e{n}", f"u{n % 4}", f"i{n % 4}", "click", float(n)) for n in range(64)]
>>> boot = bootstrap(events, {}, BootstrapConfig(dim=8, epochs=3, batch_size=16))
>>> len(boot.users), len(boot.items), boot.losses[-1] < boot.losses[0]
(4, 4, True)
>>> any(p.requires_grad for p in boot.towers.parameters())
False
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from stream.model import CONTENT_DIM, TwoTower, freeze
from stream.schemas import DEFAULT_TYPE_WEIGHTS, Interaction, training_weight
from stream.similarity import Similarity
from stream.training import ITEMS, TASTE, USERS, OnlineTrainer

FORMAT_VERSION = 1


@dataclass(frozen=True)
class BootstrapConfig:
    dim: int = 32
    epochs: int = 8
    batch_size: int = 512
    lr: float = 0.01
    temperature: float = 0.1
    init_scale: float = 0.1
    content_weight: float = 1.0
    similarity: str = "cosine"
    norm_power: float = 1.0
    seed: int = 0
    type_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("need epochs >= 1 and batch_size >= 2")


@dataclass
class Bootstrapped:
    """The result: frozen towers, the trained rows, and what the history counted."""

    towers: TwoTower
    users: list[str]
    user_rows: np.ndarray
    user_counts: np.ndarray  # positive events per user in the history
    items: list[str]
    item_rows: np.ndarray
    item_counts: np.ndarray  # positive events per item in the history
    last_ts: float
    losses: list[float]
    config: BootstrapConfig

    def save(self, path: Path) -> None:
        """One file: tower weights, rows and counts (loadable with ``weights_only``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        cfg = asdict(self.config)
        cfg["type_weights"] = dict(self.config.type_weights)
        torch.save(
            {
                "version": FORMAT_VERSION,
                "config": cfg,
                "hidden": self.towers.users.inner.out_features,
                "content_dim": self.towers.content.in_features,
                "towers": self.towers.state_dict(),
                "users": self.users,
                "user_rows": torch.from_numpy(self.user_rows),
                "user_counts": torch.from_numpy(self.user_counts),
                "items": self.items,
                "item_rows": torch.from_numpy(self.item_rows),
                "item_counts": torch.from_numpy(self.item_counts),
                "last_ts": self.last_ts,
                "losses": self.losses,
            },
            path,
        )

    @classmethod
    def load(cls, path: Path) -> Bootstrapped:
        if not path.exists():
            raise FileNotFoundError(f"no bootstrap checkpoint at {path}")
        raw: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        if raw.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: bootstrap format {raw.get('version')}, expected 1")
        config = BootstrapConfig(**raw["config"])
        towers = TwoTower(config.dim, int(raw["hidden"]), int(raw["content_dim"]))
        towers.load_state_dict(raw["towers"])
        return cls(
            towers=freeze(towers),
            users=list(raw["users"]),
            user_rows=raw["user_rows"].numpy(),
            user_counts=raw["user_counts"].numpy(),
            items=list(raw["items"]),
            item_rows=raw["item_rows"].numpy(),
            item_counts=raw["item_counts"].numpy(),
            last_ts=float(raw["last_ts"]),
            losses=list(raw["losses"]),
            config=config,
        )


def bootstrap(
    events: Sequence[Interaction],
    content: Mapping[str, np.ndarray],
    config: BootstrapConfig,
    progress: Callable[[int, float], None] | None = None,
) -> Bootstrapped:
    """Train on the positive events of ``events``; ``content``: item id -> text embedding.

    ``progress(epoch, mean_loss)`` is called after each epoch.
    """
    weights = config.type_weights
    positives = [e for e in events if training_weight(e, weights) > 0]
    if len(positives) < 2:
        raise ValueError(f"the history has {len(positives)} positive events; need at least 2")
    torch.manual_seed(config.seed)
    users = list(dict.fromkeys(e.user_id for e in positives))
    items = list(dict.fromkeys(e.item_id for e in positives))
    user_at = {u: n for n, u in enumerate(users)}
    item_at = {i: n for n, i in enumerate(items)}
    u_idx = torch.tensor([user_at[e.user_id] for e in positives])
    i_idx = torch.tensor([item_at[e.item_id] for e in positives])
    w = torch.tensor([training_weight(e, weights) for e in positives])
    item_counts = np.bincount(i_idx.numpy(), minlength=len(items)).astype(np.float64)
    log_p = torch.from_numpy(np.log(item_counts / item_counts.sum())).float()

    content_dim = next((len(v) for v in content.values()), CONTENT_DIM)
    text = torch.zeros(len(items), content_dim)
    has_text = torch.zeros(len(items), dtype=torch.bool)
    for item, vec in content.items():
        if item in item_at:
            text[item_at[item]] = torch.as_tensor(np.asarray(vec, dtype=np.float32))
            has_text[item_at[item]] = True

    towers = TwoTower.create(config.dim, seed=config.seed, content_dim=content_dim)
    user_emb = nn.Embedding(len(users), config.dim, sparse=True)
    item_emb = nn.Embedding(len(items), config.dim, sparse=True)
    for emb in (user_emb, item_emb):
        nn.init.normal_(emb.weight, std=config.init_scale)
    dense = torch.optim.Adam(towers.parameters(), lr=config.lr)
    sparse = torch.optim.SparseAdam([user_emb.weight, item_emb.weight], lr=config.lr)
    sim = Similarity(config.similarity, config.norm_power)
    losses = []
    gen = torch.Generator().manual_seed(config.seed)
    for epoch in range(config.epochs):
        order = torch.randperm(len(positives), generator=gen)
        total, batches = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            take = order[start : start + config.batch_size]
            if len(take) < 2:
                continue
            batch_items, labels = torch.unique(i_idx[take], return_inverse=True)
            u = sim.serve_users(towers.users(user_emb(u_idx[take])))
            logq = log_p[batch_items] + float(np.log(len(take)))
            logits = sim.scores(u, sim.serve_items(towers.items(item_emb(batch_items))))
            loss = _weighted_ce(logits / config.temperature - logq, labels, w[take])
            if config.content_weight > 0 and has_text[batch_items].any():
                v_text = sim.serve_items(towers.items(towers.content(text[batch_items])))
                c_logits = sim.scores(u, v_text) / config.temperature - logq
                c_logits = c_logits.masked_fill(~has_text[batch_items], float("-inf"))
                keep = has_text[batch_items][labels]
                if keep.any():
                    c_loss = _weighted_ce(c_logits[keep], labels[keep], w[take][keep])
                    loss = loss + config.content_weight * c_loss
            dense.zero_grad()
            sparse.zero_grad()
            loss.backward()
            dense.step()
            sparse.step()
            total += float(loss.detach())
            batches += 1
        losses.append(total / max(batches, 1))
        if progress is not None:
            progress(epoch, losses[-1])
    user_counts = np.bincount(u_idx.numpy(), minlength=len(users)).astype(np.float64)
    return Bootstrapped(
        towers=freeze(towers),
        users=users,
        user_rows=user_emb.weight.detach().numpy().copy(),
        user_counts=user_counts,
        items=items,
        item_rows=item_emb.weight.detach().numpy().copy(),
        item_counts=item_counts,
        last_ts=max(e.ts for e in events),
        losses=losses,
        config=config,
    )


def _weighted_ce(logits: torch.Tensor, labels: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (w * F.cross_entropy(logits, labels, reduction="none")).sum() / w.sum()


def load_into(trainer: OnlineTrainer, boot: Bootstrapped, *, rows: bool = True) -> None:
    """Install a bootstrap into an online trainer: its towers, and (``rows``) rows and counts.

    The trainer's towers take the bootstrap's weights and stay frozen. With ``rows``
    (a fresh start, not a restart from a checkpoint that already holds them), the
    rows go into the parameter server with fresh optimizer state and the
    item-frequency estimate (log-Q and blending counts) starts from the history's.
    """
    if trainer.towers.dim != boot.config.dim:
        raise ValueError(f"bootstrap dim {boot.config.dim} != trainer dim {trainer.towers.dim}")
    ours, theirs = trainer.config.sim, Similarity(boot.config.similarity, boot.config.norm_power)
    if ours != theirs:
        raise ValueError(f"the bootstrap was trained for {theirs}, the trainer uses {ours}: "
                         "pass the same --similarity/--norm-power to both")  # fmt: skip
    trainer.towers.load_state_dict(boot.towers.state_dict())
    freeze(trainer.towers)
    if not rows:
        return
    now = boot.last_ts
    trainer.ps.put(USERS, boot.users, boot.user_rows, now=now, updates=boot.user_counts)
    if trainer.config.taste:  # the bootstrap trained user rows against content too: a user's
        # taste starts at their served vector, weighing as much as their history's positives
        with torch.inference_mode():
            served = trainer.sim.serve_users(trainer.towers.users(torch.from_numpy(boot.user_rows)))
        taste = served.numpy() * boot.user_counts[:, None]
        trainer.ps.put(TASTE, boot.users, taste, now=now, updates=boot.user_counts)
    trainer.ps.put(ITEMS, boot.items, boot.item_rows, now=now, updates=boot.item_counts)
    trainer.frequency.add(dict(zip(boot.items, boot.item_counts.tolist(), strict=True)))
    trainer.bootstrapped = True
