"""The online training step: pure logic over a parameter server and frozen towers.

Per micro-batch of valid interactions:

* positives (view/click/like/purchase) form a sampled softmax over the batch's
  items plus uniformly sampled negatives from the item table, with log-Q
  correction from a streaming frequency estimate (Yi et al., RecSys 2019);
* skips push their pair's score down with a logistic loss;
* gradients flow through the frozen towers into the embedding rows only, and
  the parameter server applies them (row-wise Adagrad, server-side).

Examples
--------
>>> from stream.schemas import Interaction
>>> trainer = OnlineTrainer.create(TrainConfig(dim=8, negatives=4))
>>> batch = [Interaction(f"e{i}", "u1", f"i{i % 3}", "click", 10.0 + i) for i in range(6)]
>>> stats = trainer.apply(batch)
>>> stats.positives, sorted(stats.users), sorted(stats.items)
(6, ['u1'], ['i0', 'i1', 'i2'])
>>> any(p.requires_grad for p in trainer.towers.parameters())
False
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from paramserver.config import TableConfig
from paramserver.optim import make_optimizer
from paramserver.ps import ParameterServer, ParamServerAPI
from stream.frequency import ItemFrequency
from stream.model import TwoTower, freeze
from stream.schemas import DEFAULT_TYPE_WEIGHTS, Interaction

USERS, ITEMS = "users", "items"


@dataclass(frozen=True)
class TrainConfig:
    """The online step. ``optimizer`` runs in the PS; ``min_count``/``ttl_seconds``: admission
    and expiry of rows; expiry sweeps run every ``sweep_seconds`` of event time."""

    dim: int = 32
    temperature: float = 0.1
    negatives: int = 32
    logq: bool = True
    lr: float = 0.2
    optimizer: str = "rowwise_adagrad"
    init_scale: float = 0.1
    min_count: int = 1
    ttl_seconds: float | None = None
    sweep_seconds: float = 60.0
    seed: int = 0
    type_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))

    def __post_init__(self) -> None:
        if not self.sweep_seconds > 0:
            raise ValueError(f"sweep_seconds must be positive, got {self.sweep_seconds}")

    def table(self, name: str) -> TableConfig:
        return TableConfig(
            name,
            dim=self.dim,
            optimizer=make_optimizer(self.optimizer, self.lr),
            init_scale=self.init_scale,
            min_count=self.min_count,
            ttl_seconds=self.ttl_seconds,
            seed=self.seed,
        )

    def tables(self) -> list[TableConfig]:
        return [self.table(USERS), self.table(ITEMS)]


@dataclass(frozen=True)
class StepStats:
    """What one step did: counts, the weighted loss per unit weight, and the rows it changed.

    ``unadmitted`` counts events skipped because their user or item has no row yet.
    """

    positives: int
    skips: int
    loss: float
    users: tuple[str, ...]
    items: tuple[str, ...]
    unadmitted: int = 0


class OnlineTrainer:
    """Drives the parameter server's user and item tables through the frozen towers.

    Owns the item-frequency estimate, the negative-sampling RNG and the expiry
    schedule; :meth:`state` / :meth:`load_state` carry them across restarts so a
    resumed worker makes the same updates an uninterrupted one would.
    """

    def __init__(self, ps: ParamServerAPI, towers: TwoTower, config: TrainConfig) -> None:
        if ps.dim(USERS) != towers.dim or ps.dim(ITEMS) != towers.dim:
            raise ValueError("table and tower dimensions differ")
        self.ps = ps
        self.towers = freeze(towers)
        self.config = config
        self.frequency = ItemFrequency()
        self._rng = np.random.default_rng(config.seed)
        self.next_sweep: float | None = None

    @classmethod
    def create(cls, config: TrainConfig, ps: ParamServerAPI | None = None) -> OnlineTrainer:
        """A trainer over ``ps`` (default: a fresh in-process :class:`ParameterServer`)."""
        ps = ps if ps is not None else ParameterServer(config.tables())
        return cls(ps, TwoTower.create(config.dim, seed=config.seed), config)

    def weight(self, event: Interaction) -> float:
        return self.config.type_weights.get(event.type, 0.0) * (
            1.0 if event.weight is None else event.weight
        )

    def apply(self, events: Sequence[Interaction]) -> StepStats:
        """Train on one micro-batch. The rows' last-update time is the batch's latest event time."""
        weighted = [(e, self.weight(e)) for e in events]
        weighted = [(e, w) for e, w in weighted if w != 0.0]
        if not weighted:
            return StepStats(0, 0, 0.0, (), ())
        now = max(e.ts for e, _ in weighted)
        # admission: every sighting counts; only events whose user and item have rows train
        user_ok = self.ps.admit(USERS, [e.user_id for e, _ in weighted], now=now)
        item_ok = self.ps.admit(ITEMS, [e.item_id for e, _ in weighted], now=now)
        admitted = [ew for ew, u, i in zip(weighted, user_ok, item_ok, strict=True) if u and i]
        unadmitted = len(weighted) - len(admitted)
        if not admitted:
            return StepStats(0, 0, 0.0, (), (), unadmitted)
        batch = [e for e, _ in admitted]
        w = torch.tensor([w for _, w in admitted], dtype=torch.float32)

        user_ids = list(dict.fromkeys(e.user_id for e in batch))
        direct = list(dict.fromkeys(e.item_id for e in batch))
        direct_set = set(direct)
        seed = int(self._rng.integers(2**63))
        sampled = [
            i
            for i in self.ps.sample(ITEMS, self.config.negatives, seed=seed)
            if i not in direct_set
        ]
        candidates = direct + list(dict.fromkeys(sampled))

        user_pos = {u: n for n, u in enumerate(user_ids)}
        cand_pos = {i: n for n, i in enumerate(candidates)}
        u_idx = torch.tensor([user_pos[e.user_id] for e in batch])
        i_idx = torch.tensor([cand_pos[e.item_id] for e in batch])

        user_rows = torch.from_numpy(self.ps.pull(USERS, user_ids)[0]).requires_grad_()
        item_rows = torch.from_numpy(self.ps.pull(ITEMS, candidates)[0]).requires_grad_()
        u = self.towers.users(user_rows)[u_idx]
        v = self.towers.items(item_rows)
        scores = u @ v.T / self.config.temperature

        positive = w > 0
        self.frequency.observe(
            e.item_id for e, p in zip(batch, positive.tolist(), strict=True) if p
        )
        loss = torch.zeros(())
        if positive.any():
            loss = loss + self._softmax_loss(
                batch, positive, scores, i_idx, w, candidates, cand_pos
            )
        if (~positive).any():
            skip_scores = scores[~positive, i_idx[~positive]]
            loss = loss + (w[~positive].abs() * F.softplus(skip_scores)).sum()
        loss.backward()

        assert user_rows.grad is not None and item_rows.grad is not None
        self.ps.push(USERS, user_ids, user_rows.grad.numpy(), now=now)
        self.ps.push(ITEMS, candidates, item_rows.grad.numpy(), now=now)
        n_pos = int(positive.sum())
        return StepStats(
            positives=n_pos,
            skips=len(batch) - n_pos,
            loss=float(loss.detach()) / float(w.abs().sum()),
            users=tuple(user_ids),
            items=tuple(candidates),
            unadmitted=unadmitted,
        )

    def expire_due(self, now: float) -> dict[str, list[str]]:
        """Run the expiry sweep if one is due at event time ``now``; the evicted ids per table.

        Sweeps are scheduled in event time, so a replay evicts exactly what the
        original run did.
        """
        if self.config.ttl_seconds is None:
            return {}
        if self.next_sweep is None:
            self.next_sweep = now + self.config.sweep_seconds
        if now < self.next_sweep:
            return {}
        self.next_sweep = now + self.config.sweep_seconds
        evicted = self.ps.expire(now=now)
        self.frequency.forget(evicted.get(ITEMS, ()))
        return evicted

    def state(self) -> dict[str, object]:
        """The trainer's own state (not the tables), JSON-serialisable."""
        return {"rng": self._rng.bit_generator.state, "next_sweep": self.next_sweep}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]
        sweep = state.get("next_sweep")
        self.next_sweep = None if sweep is None else float(sweep)

    def _softmax_loss(
        self,
        batch: list[Interaction],
        positive: torch.Tensor,
        scores: torch.Tensor,
        i_idx: torch.Tensor,
        w: torch.Tensor,
        candidates: list[str],
        cand_pos: dict[str, int],
    ) -> torch.Tensor:
        logits = scores[positive]
        labels = i_idx[positive]
        if self.config.logq:
            # expected appearances of each candidate: in-batch (by popularity) + uniform samples
            n_pos = int(positive.sum())
            p = self.frequency.probability(candidates)
            q = n_pos * p + self.config.negatives / max(self.ps.size(ITEMS), 1)
            logits = logits - torch.from_numpy(np.log(q)).float()
        # a user's other positives in this batch are not negatives for them
        pos_events = [e for e, p in zip(batch, positive.tolist(), strict=True) if p]
        liked: dict[str, set[int]] = {}
        for e in pos_events:
            liked.setdefault(e.user_id, set()).add(cand_pos[e.item_id])
        mask = torch.zeros_like(logits, dtype=torch.bool)
        for row, e in enumerate(pos_events):
            others = liked[e.user_id] - {cand_pos[e.item_id]}
            if others:
                mask[row, list(others)] = True
        logits = logits.masked_fill(mask, float("-inf"))
        ce = F.cross_entropy(logits, labels, reduction="none")
        return (w[positive] * ce).sum()

    @torch.inference_mode()
    def item_vectors(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Served item vectors (item tower output) and the hit mask. Reads create nothing."""
        rows, hit = self.ps.pull(ITEMS, ids)
        return self.towers.items(torch.from_numpy(rows)).numpy(), hit

    @torch.inference_mode()
    def user_vectors(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        rows, hit = self.ps.pull(USERS, ids)
        return self.towers.users(torch.from_numpy(rows)).numpy(), hit
