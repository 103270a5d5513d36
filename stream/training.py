"""The online training step: pure logic over a parameter server and frozen towers.

Per micro-batch of valid interactions:

* positives (view/click/like/purchase) form a sampled softmax over the batch's
  items plus sampled negatives (``negative_sampler``: uniform over the item table,
  or by the streaming positive counts), with log-Q correction from a streaming
  frequency estimate (Yi et al., RecSys 2019);
* skips push their pair's score down with a logistic loss;
* optionally (``session_weight``), a skip-gram over each session's consecutive
  positives in the batch pulls co-consumed items together (item rows only);
* gradients flow through the frozen towers into the embedding rows only, and
  the parameter server applies them (row-wise Adagrad, server-side).

Serving blends: an item's vector is its behaviour (item tower over its row) and
its content (the frozen projection of its text embedding, in the ``content``
table) mixed by ``a(n) = n / (n + blend_k)`` for ``n`` positive events; a user's
is its behaviour mixed, by its update count, with the mean of the items of its
current session. Training itself uses the unblended behaviour vectors, so an
id's row learns at full speed while serving leans on content. Optionally a young item's
velocity (:mod:`stream.velocity`) adds to its score in the content's share, ``(1 - a)``.

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
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from paramserver.config import TableConfig
from paramserver.optim import make_optimizer
from paramserver.ps import ParameterServer, ParamServerAPI
from stream.frequency import ItemFrequency
from stream.model import TwoTower, freeze
from stream.schemas import DEFAULT_TYPE_WEIGHTS, Interaction, training_weight
from stream.similarity import (
    Moments,
    Similarity,
    blend_weight,
    calibrated_items,
    calibrated_users,
    unit,
)
from stream.velocity import Velocity

USERS, ITEMS, CONTENT, TASTE = "users", "items", "content", "taste"
# calibrated serving: the catalogue's moments are estimated from this many rows of each half,
# drawn afresh after this many steps and content arrivals (a read of the PS; no state)
MOMENTS_SAMPLE = 4096
MOMENTS_EVERY = 64


@dataclass(frozen=True)
class TrainConfig:
    """The online step. ``optimizer`` runs in the PS; ``min_count``/``ttl_seconds``: admission
    and expiry of rows; expiry sweeps run every ``sweep_seconds`` of event time.

    ``similarity``/``norm_power``: see :mod:`stream.similarity`. ``blend_k``: content
    weighs as much as behaviour after that many interactions (0: no blending).
    ``session_weight``: weight of the session skip-gram objective (0: off).
    ``content_init``: an item whose content arrives before it has a row starts its row
    at the content row (with blending on).
    ``taste_weight``: with blending on, users get a content taste too (the ``taste`` table):
    the weighted sum of the served content vectors of the items they took, started at their
    bootstrap vector (the bootstrap trained user rows against content), and serving scores
    an item by ``a * cos(user, behaviour) + (1 - a) * taste_weight * cos(taste, content)``:
    served vectors are the two halves side by side (``served_dim`` = 2 * ``dim``;
    inner-product ranking, so not with ``l2``). 0: off. ``taste_decay``: a taste row is
    multiplied by it for each new positive, so the latest items weigh most (1: a plain sum).
    ``calibrate`` (with a taste): each half is scored by its z-score over the catalogue for
    that user, ``a * z(cos(user, behaviour)) + (1 - a) * taste_weight * z(cos(taste,
    content))``, so a young item's content half is weighed on the scale its behaviour half
    would be (:func:`~stream.similarity.calibrated_users`; ``served_dim`` = 2 * ``dim`` + 2).
    Serving only: training is the same either way.
    """

    dim: int = 32
    # 0.2: on the generator's validation replay the best recall@10 whose NDCG@10 is not
    # below the old default 0.1's (docs/learning.md): recall 0.4511 -> 0.4659, NDCG 0.3226 ->
    # 0.3327; softer still (0.5-2) gains recall but loses NDCG there
    temperature: float = 0.2
    negatives: int = 32
    # where the sampled negatives come from: "uniform" over the item table, or "frequency"
    # (in proportion to the streaming positive counts, as in-batch negatives of a big batch)
    negative_sampler: str = "uniform"
    logq: bool = True
    # 0.1: best of 0.2/0.1/0.05/0.02 on the generator's validation replay (docs/learning.md):
    # recall@10 0.4511 against 0.4345 at 0.2, the old default
    lr: float = 0.1
    optimizer: str = "rowwise_adagrad"
    init_scale: float = 0.1
    min_count: int = 1
    ttl_seconds: float | None = None
    sweep_seconds: float = 60.0
    seed: int = 0
    similarity: str = "cosine"
    norm_power: float = 1.0
    blend_k: float = 5.0
    # 0.5: on the generator's validation replay (temperature 0.2) weights 0/0.1/0.3/0.5/1 give
    # recall@10 0.4659/0.4722/0.4759/0.4775/0.4775, NDCG@10 0.3327/0.3358/0.3377/0.3369/0.3296
    # (the same rule as the temperature's); on MovieLens's it is neutral; ~no cost per step
    session_weight: float = 0.5
    content_init: bool = True
    # fold-in: users with fewer than `fold_in_below` updates get `fold_in` more steps on
    # their rows alone per batch (item vectors held fixed), so a new user is placed by their
    # first burst of events rather than one step from a random row (0: off)
    fold_in: int = 0
    fold_in_below: int = 3
    taste_weight: float = 0.0
    taste_decay: float = 1.0
    calibrate: bool = False
    # young items' velocity (stream.velocity): serving adds velocity_weight * (1 - a(n)) *
    # log(1 + v) to an item's score, v its positives' rate over the last velocity_window
    # positives (at most velocity_cap times its count); one more served coordinate, the
    # item's term against the user's 1. 0: off (and off without blending)
    velocity_weight: float = 0.0
    velocity_window: int = 5_000
    velocity_cap: float = 20.0
    type_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))

    def __post_init__(self) -> None:
        if not self.sweep_seconds > 0:
            raise ValueError(f"sweep_seconds must be positive, got {self.sweep_seconds}")
        if self.blend_k < 0 or self.session_weight < 0 or self.taste_weight < 0:
            raise ValueError("blend_k, session_weight and taste_weight must be non-negative")
        Similarity(self.similarity, self.norm_power)  # validates both
        if self.negative_sampler not in ("uniform", "frequency"):
            raise ValueError(f"negative_sampler must be uniform or frequency, "
                             f"got {self.negative_sampler!r}")  # fmt: skip
        if not 0.0 < self.taste_decay <= 1.0:
            raise ValueError(f"taste_decay must be in (0, 1], got {self.taste_decay}")
        if self.taste and self.similarity == "l2":
            raise ValueError("taste_weight > 0 scores by inner product: use cosine or dot, not l2")
        if self.calibrate and self.taste_weight <= 0:
            raise ValueError("calibrate weighs the content-taste half: it needs taste_weight > 0")
        if self.velocity_weight < 0 or self.velocity_window < 1 or self.velocity_cap < 1:
            raise ValueError("velocity_weight must be >= 0, velocity_window and velocity_cap "
                             ">= 1")  # fmt: skip
        if self.velocity and self.similarity == "l2":
            raise ValueError("velocity_weight > 0 adds to an inner product: use cosine or dot")

    @property
    def taste(self) -> bool:
        """Whether users have a content-taste row (``taste_weight > 0`` with blending on)."""
        return self.taste_weight > 0 and self.blend_k > 0

    @property
    def calibrated(self) -> bool:
        """Whether the halves are scored calibrated (``calibrate`` with a taste)."""
        return self.calibrate and self.taste

    @property
    def velocity(self) -> bool:
        """Whether young items' velocity is served (``velocity_weight > 0``, blending on)."""
        return self.velocity_weight > 0 and self.blend_k > 0

    @property
    def served_dim(self) -> int:
        """The length of served user and item vectors (what the index holds)."""
        halves = 2 * self.dim if self.taste else self.dim
        return halves + 2 * int(self.calibrated) + int(self.velocity)

    @property
    def sim(self) -> Similarity:
        return Similarity(self.similarity, self.norm_power)

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
        # content rows are set (put), never trained, never expired
        content = TableConfig(CONTENT, dim=self.dim, optimizer=make_optimizer("sgd", 1.0))
        # taste rows are sums (put), never trained; they expire with the users' rows
        taste = [replace(content, name=TASTE, ttl_seconds=self.ttl_seconds)] if self.taste else []
        return [self.table(USERS), self.table(ITEMS), content, *taste]


@dataclass(frozen=True)
class StepStats:
    """What one step did: counts, the weighted loss per unit weight, and the rows it changed.

    ``unadmitted`` counts events skipped because their user or item has no row yet.
    ``aged``: items outside the batch whose served vector moved all the same (their velocity
    level, as they age: see :mod:`stream.velocity`), to be published again with ``items``.
    """

    positives: int
    skips: int
    loss: float
    users: tuple[str, ...]
    items: tuple[str, ...]
    unadmitted: int = 0
    aged: tuple[str, ...] = ()


class OnlineTrainer:
    """Drives the parameter server's user and item tables through the frozen towers.

    Owns the item-frequency estimate, the negative-sampling RNG and the expiry
    schedule; :meth:`state` / :meth:`load_state` carry them across restarts so a
    resumed worker makes the same updates an uninterrupted one would.
    """

    def __init__(self, ps: ParamServerAPI, towers: TwoTower, config: TrainConfig) -> None:
        if ps.dim(USERS) != towers.dim or ps.dim(ITEMS) != towers.dim:
            raise ValueError("table and tower dimensions differ")
        if config.taste:
            try:
                taste_dim = ps.dim(TASTE)
            except KeyError:
                raise ValueError("taste_weight > 0 needs a taste table in the parameter "
                                 "server (TrainConfig.tables() has one)") from None  # fmt: skip
            if taste_dim != towers.dim:
                raise ValueError("table and tower dimensions differ")
        self.ps = ps
        self.towers = freeze(towers)
        self.config = config
        self.sim = config.sim
        self.frequency = ItemFrequency()
        self._rng = np.random.default_rng(config.seed)
        self.next_sweep: float | None = None
        self.bootstrapped = False  # rows and counts came from a bootstrap (checkpointed)
        self._changes = 0  # steps and content arrivals: when to re-estimate the moments
        self._moments: tuple[int, Moments, Moments] | None = None
        self.velocity = Velocity(config.velocity_window, config.velocity_cap)

    @classmethod
    def create(cls, config: TrainConfig, ps: ParamServerAPI | None = None) -> OnlineTrainer:
        """A trainer over ``ps`` (default: a fresh in-process :class:`ParameterServer`)."""
        ps = ps if ps is not None else ParameterServer(config.tables())
        return cls(ps, TwoTower.create(config.dim, seed=config.seed), config)

    def weight(self, event: Interaction) -> float:
        return training_weight(event, self.config.type_weights)

    def apply(self, events: Sequence[Interaction]) -> StepStats:
        """Train on one micro-batch. The rows' last-update time is the batch's latest event time."""
        weighted = [(e, self.weight(e)) for e in events]
        weighted = [(e, w) for e, w in weighted if w != 0.0]
        if not weighted:
            return StepStats(0, 0, 0.0, (), ())
        self._changes += 1
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
        sampled = [i for i in self._negatives() if i not in direct_set]
        candidates = direct + list(dict.fromkeys(sampled))

        user_pos = {u: n for n, u in enumerate(user_ids)}
        cand_pos = {i: n for n, i in enumerate(candidates)}
        u_idx = torch.tensor([user_pos[e.user_id] for e in batch])
        i_idx = torch.tensor([cand_pos[e.item_id] for e in batch])

        user_rows = torch.from_numpy(self.ps.pull(USERS, user_ids)[0]).requires_grad_()
        item_rows = torch.from_numpy(self.ps.pull(ITEMS, candidates)[0]).requires_grad_()
        u = self.sim.serve_users(self.towers.users(user_rows))[u_idx]
        v = self.sim.serve_items(self.towers.items(item_rows))
        scores = self.sim.scores(u, v) / self.config.temperature

        positive = w > 0
        taken = [e.item_id for e, p in zip(batch, positive.tolist(), strict=True) if p]
        aged: list[str] = []
        if self.config.velocity:  # arriving now: never taken (history counts are not young)
            firsts = list(dict.fromkeys(taken))  # and no content (it arrived with that)
            unseen = [i for i, c in zip(firsts, self.frequency.counts(firsts), strict=True)
                      if not c]  # fmt: skip
            new = [i for i, has in zip(unseen, self.ps.pull(CONTENT, unseen)[1], strict=True)
                   if not has]  # fmt: skip
            aged = [i for i in self.velocity.observe(taken, new) if i not in cand_pos]
        self.frequency.observe(taken)
        loss = torch.zeros(())
        if positive.any():
            loss = loss + self._softmax_loss(batch, positive, scores, i_idx, w, candidates)
        if (~positive).any():
            skip_scores = scores[~positive, i_idx[~positive]]
            loss = loss + (w[~positive].abs() * F.softplus(skip_scores)).sum()
        if self.config.session_weight > 0:
            loss = loss + self.config.session_weight * self._session_loss(
                batch, positive, v, cand_pos
            )
        loss.backward()

        cold_users: list[str] = []
        if self.config.fold_in > 0:
            updates, _ = self.ps.meta(USERS, user_ids)
            cold_users = [u for u, n in zip(user_ids, updates.tolist(), strict=True)
                          if n < self.config.fold_in_below]  # fmt: skip
        assert user_rows.grad is not None and item_rows.grad is not None
        self.ps.push(USERS, user_ids, user_rows.grad.numpy(), now=now)
        self.ps.push(ITEMS, candidates, item_rows.grad.numpy(), now=now)
        if cold_users:
            self._fold_in(batch, positive, w, cold_users, candidates, cand_pos, now)
        if self.config.taste:
            self._add_taste(batch, w, now)
        n_pos = int(positive.sum())
        return StepStats(
            positives=n_pos,
            skips=len(batch) - n_pos,
            loss=float(loss.detach()) / float(w.abs().sum()),
            users=tuple(user_ids),
            items=tuple(candidates),
            unadmitted=unadmitted,
            aged=tuple(aged),
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
        self.velocity.forget(evicted.get(ITEMS, ()))
        return evicted

    def state(self) -> dict[str, object]:
        """The trainer's own state (not the tables), JSON-serialisable: with it a resumed
        trainer makes the same updates, and serves the same calibrated vectors (the change
        count and the catalogue's moments as last estimated), as an uninterrupted one."""
        moments = None
        if self._moments is not None:
            at, behaviour, content = self._moments
            moments = {"at": at, "behaviour": behaviour.to_json(), "content": content.to_json()}
        velocity = self.velocity.to_json() if self.config.velocity else None
        return {"rng": self._rng.bit_generator.state, "next_sweep": self.next_sweep,
                "bootstrapped": self.bootstrapped, "changes": self._changes,
                "moments": moments, "velocity": velocity}  # fmt: skip

    def load_state(self, state: Mapping[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]
        sweep = state.get("next_sweep")
        self.next_sweep = None if sweep is None else float(sweep)
        self.bootstrapped = bool(state.get("bootstrapped", False))
        self._changes = int(state.get("changes", 0))  # checkpoints before it: re-estimated
        moments = state.get("moments")
        self._moments = None if moments is None else (
            int(moments["at"]), Moments.from_json(moments["behaviour"]),
            Moments.from_json(moments["content"]))  # fmt: skip
        # a checkpoint from before velocity was kept: every item is old
        self.velocity = Velocity(self.config.velocity_window, self.config.velocity_cap)
        velocity = state.get("velocity")
        if velocity is not None:
            self.velocity.load_json(velocity)

    def _negatives(self) -> list[str]:
        """This batch's sampled negatives (``negatives`` draws, with replacement)."""
        if self.config.negative_sampler == "frequency":
            return self.frequency.sample(self.config.negatives, self._rng)
        seed = int(self._rng.integers(2**63))
        return self.ps.sample(ITEMS, self.config.negatives, seed=seed)

    def _softmax_loss(
        self,
        batch: list[Interaction],
        positive: torch.Tensor,
        scores: torch.Tensor,
        i_idx: torch.Tensor,
        w: torch.Tensor,
        candidates: list[str],
    ) -> torch.Tensor:
        logits = scores[positive]
        labels = i_idx[positive]
        if self.config.logq:
            # expected appearances of each candidate: in-batch (by popularity) + sampled ones
            n_pos = int(positive.sum())
            p = self.frequency.probability(candidates)
            if self.config.negative_sampler == "frequency":
                q = (n_pos + self.config.negatives) * p
            else:
                q = n_pos * p + self.config.negatives / max(self.ps.size(ITEMS), 1)
            logits = logits - torch.from_numpy(np.log(q)).float()
        logits = logits.masked_fill(_others_liked(batch, positive, labels, logits.shape[1]),
                                    float("-inf"))  # fmt: skip
        ce = F.cross_entropy(logits, labels, reduction="none")
        return (w[positive] * ce).sum()

    def _add_taste(self, batch: list[Interaction], w: torch.Tensor, now: float) -> None:
        """Add each positive's weight times its item's served content vector to its user's
        taste row (a user's first one starts the row at zero), the row first decayed by
        ``taste_decay`` per new positive."""
        take = [(e, float(x)) for e, x in zip(batch, w.tolist(), strict=True) if x > 0]
        items = list(dict.fromkeys(e.item_id for e, _ in take))
        content, has = self._content(items)
        at = {i: n for n, i in enumerate(items)}
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for e, x in take:
            if has[at[e.item_id]]:
                sums[e.user_id] = sums.get(e.user_id, 0.0) + x * content[at[e.item_id]]
                counts[e.user_id] = counts.get(e.user_id, 0) + 1
        if not sums:
            return
        users = list(sums)
        rows, _ = self.ps.pull(TASTE, users)
        updates, _ = self.ps.meta(TASTE, users)  # the positives a taste row holds
        added = np.stack([sums[u] for u in users])
        new = np.array([counts[u] for u in users])
        n = np.maximum(updates, 0) + new
        rows = rows * (self.config.taste_decay**new)[:, None]
        self.ps.put(TASTE, users, rows + added, now=now, updates=n)

    def _fold_in(
        self,
        batch: list[Interaction],
        positive: torch.Tensor,
        w: torch.Tensor,
        users: list[str],
        candidates: list[str],
        cand_pos: dict[str, int],
        now: float,
    ) -> None:
        """``fold_in`` extra steps of the softmax loss on ``users``' rows only."""
        cold = set(users)
        keep = [n for n, (e, p) in enumerate(zip(batch, positive.tolist(), strict=True))
                if p and e.user_id in cold]  # fmt: skip
        if not keep:
            return
        events = [batch[n] for n in keep]
        at = {u: n for n, u in enumerate(users)}
        u_idx = torch.tensor([at[e.user_id] for e in events])
        i_idx = torch.tensor([cand_pos[e.item_id] for e in events])
        weights = w[keep]
        everyone = torch.ones(len(events), dtype=torch.bool)
        with torch.no_grad():
            v = self.sim.serve_items(self.towers.items(torch.from_numpy(
                self.ps.pull(ITEMS, candidates)[0])))  # fmt: skip
        for _ in range(self.config.fold_in):
            rows = torch.from_numpy(self.ps.pull(USERS, users)[0]).requires_grad_()
            u = self.sim.serve_users(self.towers.users(rows))[u_idx]
            scores = self.sim.scores(u, v) / self.config.temperature
            loss = self._softmax_loss(events, everyone, scores, i_idx, weights, candidates)
            loss.backward()
            assert rows.grad is not None
            self.ps.push(USERS, users, rows.grad.numpy(), now=now)

    def _session_loss(
        self,
        batch: list[Interaction],
        positive: torch.Tensor,
        v: torch.Tensor,
        cand_pos: dict[str, int],
    ) -> torch.Tensor:
        """Skip-gram over sessions: each positive predicts the session's next positive item."""
        last: dict[str, int] = {}
        context, target = [], []
        for e, p in sorted(zip(batch, positive.tolist(), strict=True), key=lambda ep: ep[0].ts):
            if not p or e.session_id is None:
                continue
            here = cand_pos[e.item_id]
            prev = last.get(e.session_id)
            if prev is not None and prev != here:
                context.append(prev)
                target.append(here)
            last[e.session_id] = here
        if not context:
            return torch.zeros(())
        logits = self.sim.scores(v[context], v) / self.config.temperature
        logits[torch.arange(len(context)), torch.tensor(context)] = float("-inf")
        return F.cross_entropy(logits, torch.tensor(target), reduction="sum")

    def add_content(self, ids: Sequence[str], text: np.ndarray, *, now: float) -> list[str]:
        """Store items' content rows (the frozen projection of their text embeddings).

        With blending on, an item that has no row yet gets one at its content row: the
        projection maps text into the row space, so the item's behaviour starts where
        its content puts it and online updates learn what the text does not say. (This
        bypasses admission: an item with content is catalogue, not a stray id.) Returns
        the ids that got a row.
        """
        with torch.inference_mode():
            rows = self.towers.content(torch.from_numpy(np.asarray(text, np.float32))).numpy()
        if self.config.velocity:  # arriving: no content yet, never taken; its age starts
            had = self.ps.pull(CONTENT, ids)[1]
            counts = self.frequency.counts(ids)
            self.velocity.arrive(i for i, h, c in zip(ids, had, counts, strict=True)
                                 if not h and not c)  # fmt: skip
        self.ps.put(CONTENT, ids, rows, now=now)
        self._changes += 1
        if self.config.blend_k <= 0 or not self.config.content_init:
            return []
        _, hit = self.ps.pull(ITEMS, ids)
        new = np.flatnonzero(~hit)
        fresh = [ids[i] for i in new.tolist()]
        if fresh:
            self.ps.put(ITEMS, fresh, rows[new], now=now)
        return fresh

    def _content(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Served content vectors (item tower over the content rows) and which ids have one."""
        rows, has = self.ps.pull(CONTENT, ids)
        with torch.inference_mode():
            return self.sim.serve_items(self.towers.items(torch.from_numpy(rows))).numpy(), has

    def _item_parts(
        self, ids: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Behaviour and content vectors, behaviour's weight ``a`` (n, 1), row hit, content hit."""
        rows, hit = self.ps.pull(ITEMS, ids)
        behaviour = self.sim.serve_items(self.towers.items(torch.from_numpy(rows))).numpy()
        if self.config.blend_k <= 0:
            return behaviour, behaviour, np.ones((len(ids), 1)), hit, np.zeros(len(ids), bool)
        content, has_content = self._content(ids)
        if not has_content.any():  # behaviour alone: no blend weights to count
            return behaviour, content, np.ones((len(ids), 1)), hit, has_content
        a = blend_weight(self.frequency.counts(ids), self.config.blend_k)[:, None]
        a = np.where(hit[:, None], a, 0.0)  # content only, until the item has a row
        a = np.where(has_content[:, None], a, 1.0)
        return behaviour, content, a, hit, has_content

    @torch.inference_mode()
    def item_vectors(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Served item vectors (behaviour blended with content) and the hit mask.

        An item is served once it has a row or content; reads create nothing. With
        ``taste``: ``[a * behaviour, (1 - a) * taste_weight * content]`` (``served_dim``);
        with ``velocity``, one more coordinate: ``velocity_weight * (1 - a) * level``.
        """
        behaviour, content, a, hit, has_content = self._item_parts(ids)
        if self.config.calibrated:
            served = calibrated_items(a, behaviour, content)
        elif self.config.taste:
            halves = (a * behaviour, (1.0 - a) * self.config.taste_weight * content)
            served = np.concatenate(halves, axis=1).astype(np.float32)
        elif not has_content.any():
            served = behaviour
        else:
            served = self._mix(a, behaviour, content)
        if self.config.velocity:  # the young item's term, against the user's 1
            term = self.config.velocity_weight * (1.0 - a[:, 0]) * self.velocity.levels(ids)
            served = np.concatenate([served, term[:, None].astype(np.float32)], axis=1)
        return served, hit | has_content

    @torch.inference_mode()
    def user_vectors(
        self, ids: Sequence[str], recent: Mapping[str, Sequence[str]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Served user vectors and the hit mask.

        ``recent``: a user's items in the current session. A user with few updates is
        blended with the mean of those items' vectors (a user with no row at all is
        served that mean); with neither, there is no vector (popularity is the caller's
        fallback). With ``taste``: ``[user, taste]``, each half blended with its own
        session mean (the items' blended vectors; their content vectors); ``calibrated``:
        those halves standardised by the catalogue's moments; ``velocity``: a last 1.
        """
        served, hit = self._user_halves(ids, recent)
        if self.config.calibrated:
            behaviour, content = self._catalogue()
            d = self.config.dim
            served = calibrated_users(served[:, :d], served[:, d:], behaviour, content,
                                      self.config.taste_weight)  # fmt: skip
        if self.config.velocity:
            served = np.concatenate([served, np.ones((len(ids), 1), np.float32)], axis=1)
        return served, hit

    def _catalogue(self) -> tuple[Moments, Moments]:
        """The moments of the catalogue's served behaviour and content vectors, estimated
        from a uniform sample of each table's rows, re-drawn every ``MOMENTS_EVERY`` changes
        (seeded by the change count, so a replay draws the same)."""
        if self._moments is None or self._changes - self._moments[0] >= MOMENTS_EVERY:
            rng = np.random.default_rng([self.config.seed, self._changes])
            items, texts = (self.ps.sample(t, MOMENTS_SAMPLE, seed=int(rng.integers(2**63)))
                            for t in (ITEMS, CONTENT))  # fmt: skip
            with torch.inference_mode():
                rows = torch.from_numpy(self.ps.pull(ITEMS, items)[0])
                behaviour = self.sim.serve_items(self.towers.items(rows)).numpy()
            content, _ = self._content(texts)
            self._moments = (self._changes, Moments.of(behaviour), Moments.of(content))
        return self._moments[1], self._moments[2]

    def _user_halves(
        self, ids: Sequence[str], recent: Mapping[str, Sequence[str]] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Served user vectors before calibration (see :meth:`user_vectors`)."""
        rows, hit = self.ps.pull(USERS, ids)
        vectors = self.sim.serve_users(self.towers.users(torch.from_numpy(rows))).numpy()
        taste = self.config.taste
        if taste:
            t_rows, t_hit = self.ps.pull(TASTE, ids)
            tastes = np.where(t_hit[:, None], unit(t_rows), vectors)
        if not recent or self.config.blend_k <= 0:
            return (np.concatenate([vectors, tastes], axis=1) if taste else vectors), hit
        prior = np.zeros_like(vectors)
        prior_taste = np.zeros_like(vectors)
        has_prior = np.zeros(len(ids), dtype=bool)
        union = list(dict.fromkeys(i for user in ids for i in recent.get(user, ())))
        if union:  # one pull for every user's session items
            behaviour, content, a, item_hit, has_content = self._item_parts(union)
            blended = self._mix(a, behaviour, content)
            item_hit = item_hit | has_content
            at = {item: n for n, item in enumerate(union)}
            for n, user in enumerate(ids):
                picked = [at[i] for i in dict.fromkeys(recent.get(user, ())) if item_hit[at[i]]]
                if picked:
                    prior[n] = self.sim.serve_users(blended[picked].mean(axis=0))
                    has_prior[n] = True
                    if taste:
                        with_text = [j for j in picked if has_content[j]]
                        mean = content[with_text] if with_text else blended[picked]
                        prior_taste[n] = self.sim.serve_users(mean.mean(axis=0))
        updates, _ = self.ps.meta(USERS, ids)
        a_user = blend_weight(np.maximum(updates, 0), self.config.blend_k)[:, None]
        a_user = np.where(hit[:, None], a_user, 0.0)
        a_user = np.where(has_prior[:, None], a_user, 1.0)
        served = self._mix(a_user, vectors, prior)
        if taste:
            served = np.concatenate([served, unit(self._mix(a_user, tastes, prior_taste))], axis=1)
        return served, hit | has_prior

    def _mix(self, a: np.ndarray, behaviour: np.ndarray, prior: np.ndarray) -> np.ndarray:
        out = (a * behaviour + (1.0 - a) * prior).astype(np.float32)
        if self.sim.kind == "cosine":  # a blend of unit vectors is shorter: serve it unit again
            out = self.sim.serve_items(out)  # (under cosine both sides are served unit)
        return out


def _others_liked(
    batch: Sequence[Interaction], positive: torch.Tensor, labels: torch.Tensor, n_candidates: int
) -> torch.Tensor:
    """For each positive event (a row), the candidates its user took in *other* positive
    events of the batch: they are not negatives for that user (``labels``: each positive
    row's own candidate).

    >>> batch = [Interaction(f"e{n}", u, i, "click", 0.0) for n, (u, i) in
    ...          enumerate([("a", "x"), ("b", "x"), ("a", "y"), ("a", "y")])]
    >>> _others_liked(batch, torch.ones(4, dtype=torch.bool), torch.tensor([0, 0, 1, 1]), 3).int()
    tensor([[0, 1, 0],
            [0, 0, 0],
            [1, 0, 0],
            [1, 0, 0]], dtype=torch.int32)
    """
    users: dict[str, int] = {}
    rows = [users.setdefault(e.user_id, len(users))
            for e, p in zip(batch, positive.tolist(), strict=True) if p]  # fmt: skip
    row_user = torch.tensor(rows, dtype=torch.long)
    took = torch.zeros((len(users), n_candidates), dtype=torch.bool)
    took[row_user, labels] = True
    mask = took[row_user]
    mask[torch.arange(len(rows)), labels] = False
    return mask
