"""A seeded generator of realistic interaction streams, for the demo, tests and benchmarks.

The world: items belong to latent clusters (themes) with Zipf popularity inside
each cluster and themed titles; users have a primary and a secondary taste
cluster and an activity level; they browse in sessions that mostly stay on one
theme, click/like/purchase what fits, and skip what does not. Over time users'
tastes drift and new items arrive (with titles, before their first interaction).

Examples
--------
>>> gen = InteractionGenerator(GeneratorConfig(users=20, items=50, clusters=3, seed=7))
>>> records = list(gen.replay(200))
>>> events = [r for r in records if isinstance(r, Interaction)]
>>> len(events), all(a.ts <= b.ts for a, b in zip(events, events[1:]))
(200, True)
>>> records == list(InteractionGenerator(gen.config).replay(200))   # seeded: reproducible
True
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from stream.schemas import Interaction

THEMES: tuple[tuple[str, ...], ...] = (
    ("jazz", "vinyl", "saxophone", "bebop", "record", "trumpet", "swing", "blues"),
    ("hiking", "tent", "trail", "backpack", "summit", "camping", "compass", "boots"),
    ("kitchen", "skillet", "knife", "espresso", "baking", "recipe", "spice", "cast-iron"),
    ("football", "jersey", "stadium", "goalkeeper", "league", "cleats", "match", "trophy"),
    ("python", "laptop", "keyboard", "monitor", "compiler", "server", "terminal", "gpu"),
    ("garden", "tulip", "seeds", "compost", "greenhouse", "orchid", "shovel", "soil"),
    ("yoga", "mat", "meditation", "pilates", "stretch", "breathing", "retreat", "balance"),
    ("poetry", "novel", "paperback", "author", "fiction", "mystery", "library", "saga"),
    ("drone", "camera", "lens", "tripod", "photography", "film", "zoom", "aperture"),
    ("puppy", "leash", "kibble", "aquarium", "kitten", "collar", "terrier", "grooming"),
)
ADJECTIVES = ("classic", "compact", "deluxe", "vintage", "modern", "essential", "pro", "handmade")
TYPE_PROBS_ON_THEME = {"view": 0.55, "click": 0.28, "like": 0.1, "purchase": 0.05, "skip": 0.02}
TYPE_PROBS_OFF_THEME = {"view": 0.45, "click": 0.05, "like": 0.0, "purchase": 0.0, "skip": 0.5}


@dataclass(frozen=True)
class GeneratorConfig:
    users: int = 500
    items: int = 2000
    clusters: int = 8
    seed: int = 0
    item_zipf: float = 1.1
    user_zipf: float = 0.8
    session_length: float = 6.0
    explore: float = 0.1  # share of session events on a random (off-theme) item
    drift: float = 0.02  # chance per session that the user's primary taste moves
    new_items: float = 0.2  # share of the catalogue that arrives during the stream
    start_ts: float = 1_700_000_000.0
    sessions_per_second: float = 2.0
    # each user has a favourite tag per theme; an item carrying it is picked (1 + this) times
    # as often by that user (0: off, the stream is then as before). Makes titles say more
    # than the theme: what the content encoder can see now predicts who will click.
    tag_affinity: float = 0.0

    def __post_init__(self) -> None:
        if self.users < 1 or self.items < self.clusters or self.clusters < 1:
            raise ValueError("need users >= 1 and items >= clusters >= 1")
        if self.clusters > len(THEMES):
            raise ValueError(f"at most {len(THEMES)} clusters (themes)")


@dataclass(frozen=True)
class ItemInfo:
    """Content for the ``items`` topic: what a new item looks like before anyone interacts."""

    item_id: str
    title: str
    tags: tuple[str, ...]
    cluster: int
    ts: float


class InteractionGenerator:
    """Deterministic for a given config: the same seed gives the same catalogue and stream."""

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        n_items, k = config.items, config.clusters
        self.item_cluster = rng.integers(0, k, size=n_items)
        self.item_cluster[:k] = np.arange(k)  # every cluster has at least one item
        ranks = rng.permutation(n_items) + 1
        self.item_pop = ranks.astype(np.float64) ** -config.item_zipf
        n_new = int(n_items * config.new_items)
        self.is_new = np.zeros(n_items, dtype=bool)
        self.is_new[
            rng.choice(np.arange(k, n_items), size=min(n_new, n_items - k), replace=False)
        ] = True
        self.user_primary = rng.integers(0, k, size=config.users)
        self.user_secondary = rng.integers(0, k, size=config.users)
        self.user_activity = (rng.permutation(config.users) + 1.0) ** -config.user_zipf
        self.user_activity /= self.user_activity.sum()
        self._titles = [self._title(rng, int(c)) for c in self.item_cluster]
        self._rng_seed = int(rng.integers(0, 2**63 - 1))
        # a separate stream, so tag_affinity=0 leaves every other draw as it was
        words = np.random.default_rng([config.seed, 1]).integers(0, 8, size=(config.users, k))
        self.user_tag = [[THEMES[c][int(w)] for c, w in enumerate(row)] for row in words]

    @staticmethod
    def _title(rng: np.random.Generator, cluster: int) -> tuple[str, tuple[str, ...]]:
        words = THEMES[cluster]
        picks = rng.choice(len(words), size=3, replace=False)
        adjective = ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]
        tags = tuple(words[i] for i in picks)
        return f"{adjective} {tags[0]} {tags[1]} {tags[2]}", tags

    def item_id(self, index: int) -> str:
        return f"i{index}"

    def cluster_of(self, item_id: str) -> int:
        return int(self.item_cluster[int(item_id[1:])])

    def items_in_cluster(self, cluster: int) -> list[str]:
        return [self.item_id(int(i)) for i in np.flatnonzero(self.item_cluster == cluster)]

    def info(self, index: int, ts: float) -> ItemInfo:
        title, tags = self._titles[index]
        return ItemInfo(self.item_id(index), title, tags, int(self.item_cluster[index]), ts)

    def preference(self, user: int, available: np.ndarray) -> np.ndarray:
        """The chance that ``user``'s next event is on each item, from the user's *initial*
        tastes (drift is not known to it), over the ``available`` items (a bool mask).

        What :meth:`replay` draws from, less the drift: used as an oracle contender, to
        show how well any model could do on this stream (a Bayes ceiling, roughly).
        """
        cfg = self.config
        weights = np.where(available, self.item_pop, 0.0)
        p = cfg.explore * weights / max(weights.sum(), 1e-300)
        for theme, share in ((self.user_primary[user], 0.8), (self.user_secondary[user], 0.2)):
            w = np.where(self.item_cluster == theme, weights, 0.0)
            if cfg.tag_affinity > 0:
                fav = self.user_tag[user][int(theme)]
                has = np.fromiter((fav in tags for _, tags in self._titles), bool, len(w))
                w = w * (1.0 + cfg.tag_affinity * has)
            if w.sum() > 0:
                p += (1.0 - cfg.explore) * share * w / w.sum()
        return p

    def catalogue(self) -> list[ItemInfo]:
        """Items available from the start (the rest arrive during :meth:`replay`)."""
        ts = self.config.start_ts
        return [self.info(int(i), ts) for i in np.flatnonzero(~self.is_new)]

    def replay(self, n_events: int) -> Iterator[ItemInfo | Interaction]:
        """The time-ordered stream: new-item arrivals interleaved with ``n_events`` interactions."""
        cfg = self.config
        rng = np.random.default_rng(self._rng_seed)
        primary = self.user_primary.copy()
        tags = [set(t) for _, t in self._titles] if cfg.tag_affinity > 0 else None
        pickers = _Pickers(self.item_cluster, self.item_pop, ~self.is_new, cfg.clusters,
                           tags, cfg.tag_affinity)  # fmt: skip
        pending = list(rng.permutation(np.flatnonzero(self.is_new)))
        # spread arrivals evenly over the stream
        arrive_every = max(1, n_events // (len(pending) + 1)) if pending else 0
        user_cdf = np.cumsum(self.user_activity)
        kinds_on, cdf_on = _cdf(TYPE_PROBS_ON_THEME)
        kinds_off, cdf_off = _cdf(TYPE_PROBS_OFF_THEME)
        ts = cfg.start_ts
        produced = 0
        session = 0
        while produced < n_events:
            ts += float(rng.exponential(1.0 / cfg.sessions_per_second))
            user = min(int(np.searchsorted(user_cdf, rng.random() * user_cdf[-1])), cfg.users - 1)
            if rng.random() < cfg.drift:
                primary[user] = int(rng.integers(cfg.clusters))
            theme = int(primary[user] if rng.random() < 0.8 else self.user_secondary[user])
            length = 1 + int(rng.poisson(cfg.session_length - 1))
            session += 1
            for _ in range(min(length, n_events - produced)):
                if pending and arrive_every and produced % arrive_every == 0:
                    new = int(pending.pop())
                    pickers.add(new)
                    yield self.info(new, ts)
                on_theme = rng.random() >= cfg.explore
                favourite = self.user_tag[user][theme] if on_theme else None
                item = pickers.pick(rng, theme if on_theme else None, favourite)
                cluster = self.item_cluster[item]
                fits = cluster == primary[user] or cluster == self.user_secondary[user]
                kinds, cdf = (kinds_on, cdf_on) if fits else (kinds_off, cdf_off)
                kind = kinds[min(int(np.searchsorted(cdf, rng.random())), len(kinds) - 1)]
                ts += float(rng.exponential(5.0))
                yield Interaction(
                    event_id=f"g{cfg.seed}-{produced}",
                    user_id=f"u{user}",
                    item_id=self.item_id(item),
                    type=kind,
                    ts=round(ts, 3),
                    session_id=f"s{cfg.seed}-{session}",
                )
                produced += 1


def _cdf(probs: dict[str, float]) -> tuple[list[str], np.ndarray]:
    cdf = np.cumsum(list(probs.values()))
    return list(probs), cdf / cdf[-1]


class _Pickers:
    """Popularity-weighted sampling of available items, per cluster and overall; with tag
    affinity, per (cluster, favourite tag) too."""

    def __init__(
        self,
        cluster: np.ndarray,
        pop: np.ndarray,
        available: np.ndarray,
        k: int,
        tags: list[set[str]] | None = None,
        affinity: float = 0.0,
    ) -> None:
        self.cluster, self.pop, self.available = cluster, pop, available.copy()
        self.tags, self.affinity = tags, affinity
        self._tables: dict[tuple[int | None, str | None], tuple[np.ndarray, np.ndarray]] = {}
        for key in [None, *range(k)]:
            self._rebuild(key)

    def _keys(self, cluster: int | None) -> list[str | None]:
        if cluster is None or self.tags is None:
            return [None]
        return [None, *THEMES[cluster]]

    def _rebuild(self, cluster: int | None) -> None:
        mask = self.available if cluster is None else self.available & (self.cluster == cluster)
        if not mask.any():
            mask = self.available
        candidates = np.flatnonzero(mask)
        for word in self._keys(cluster):
            weight = self.pop[candidates]
            if word is not None and self.tags is not None:
                has = np.array([word in self.tags[i] for i in candidates.tolist()])
                weight = weight * (1.0 + self.affinity * has)
            self._tables[(cluster, word)] = (candidates, np.cumsum(weight))

    def add(self, item: int) -> None:
        self.available[item] = True
        self._rebuild(None)
        self._rebuild(int(self.cluster[item]))

    def pick(self, rng: np.random.Generator, theme: int | None, word: str | None = None) -> int:
        key = (theme, word if self.tags is not None and theme is not None else None)
        candidates, cdf = self._tables[key]
        at = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        return int(candidates[min(at, len(candidates) - 1)])
