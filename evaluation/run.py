"""``streambed evaluate``: bootstrap on a history, then replay the rest prequentially.

One run, one stream, every contender: online updates, the bootstrap frozen, the
online learner without content blending, popularity, and ``implicit`` ALS
retrained at intervals. Writes results.json, table.md and two PNG plots.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from evaluation import report
from evaluation.data import ItemArrival, Record, generated_stream, read_jsonl, split
from evaluation.models import (
    ALS,
    GeneratorOracle,
    ItemKNN,
    Popularity,
    SplitStreambed,
    Streambed,
)
from evaluation.prequential import EvalConfig, Model, prequential
from services.datagen import GeneratorConfig, InteractionGenerator
from stream.batching import BATCH_SIZE
from stream.bootstrap import BootstrapConfig, Bootstrapped, bootstrap
from stream.frequency import POPULAR_WINDOW
from stream.schemas import Interaction
from stream.training import TrainConfig

# the online learning rate per dataset: the best of 0.2/0.1/0.05/0.02 for the online learner
# in `streambed evaluate --validation` (history only; docs/learning.md); the generator's
# is the worker's default. MovieLens rechecked after the fallback fix (8fcfa77; 10k window,
# mix 2): 0.01/0.02/0.03/0.05/0.08 0.0364/0.0416/0.0425/0.0421/0.0410 (NDCG 0.0207 at 0.03)
DATASET_LR = {"generator": TrainConfig.lr, "movielens": 0.03}
# and at the worker's own cadence (`evaluate --batch-ms`, batches of ~1 event), chosen the
# same way on the live validation replays: MovieLens 0.015/0.03/0.06/0.1/0.2 0.0409/0.0496/
# 0.0545/0.0545/0.0548 (NDCG 0.0207/0.0238/0.0262/0.0269/0.0269; a plateau from 0.06, 0.1
# its middle): per-event steps want a larger rate, since a user's burst no longer adds up
# in one row-wise Adagrad step. It does not carry to the test part (docs/learning.md: 0.0756 against
# 0.03's 0.0770, cold hits 2 against 21). The generator's stays: 0.05/0.1/0.2 0.5194/
# 0.5248/0.5243 (NDCG 0.3647/0.3651/0.3565)
DATASET_LR_LIVE = {"movielens": 0.1}
# where the online learner's sampled negatives come from at the worker's cadence (TrainConfig.
# negative_sampler), chosen on the live validation replays: a live batch holds one user's
# burst, so in-batch negatives (the popularity-shaped ones log-Q corrects) are nearly gone
# and uniform draws over the catalogue push every film away from everyone
# (docs/learning.md). MovieLens
# at lr 0.1, uniform / frequency: recall@10 0.0545 / 0.0565, NDCG 0.0269 / 0.0277, cold hits
# 41 / 47 (frequency with its draws in dict order, before they were sorted: 0.0574 / 0.0278,
# the size of the noise); with it, lr 0.06 / 0.1 / 0.2 0.0536 / 0.0565 / 0.0554 (NDCG 0.0260 /
# 0.0277 / 0.0274): 0.1 stays. The generator's: 0.5248 / 0.5234 (NDCG 0.3651 / 0.3692):
# recall decides, so uniform stays there
DATASET_NEGATIVES_LIVE = {"movielens": "frequency"}
# calibrated serving (TrainConfig.calibrate: each half scored by its z-score over the
# catalogue for that user) and the taste weight it runs at, per dataset at the worker's
# cadence, chosen on the live validation replay (docs/learning.md, "Calibrated halves"): MovieLens
# (lr 0.1, frequency negatives), off at 0.6 / on at 0.6 / 1 / 1.5: recall@10 0.0565 / 0.0573 /
# 0.0585 / 0.0538, NDCG 0.0277 / 0.0278 / 0.0286 / 0.0266
# velocity_weight (TrainConfig: young items' velocity, one more served coordinate), at the
# worker's cadence, chosen on the live validation replays (docs/learning.md, "Young items'
# velocity"):
# the generator, beta 0 / 0.1 / 0.15 / 0.2: recall@10 0.5248 / 0.5280 / 0.5248 / 0.5217, NDCG
# 0.3651 / 0.3641 / 0.3620 / 0.3584, cold hits@10 against no blending 1/3, 4/3, 10/3 (p =
# 0.09), 15/3 (p = 0.0075): 0.2, the smallest that meets the cold bar there, for 0.31 points
# of recall (by recall alone 0.1 would be chosen, and misses it); MovieLens 0 / 0.2: 0.0586 /
# 0.0586 (NDCG 0.0286 both), cold hits 29 / 34 against no blending's 5: 0.2 as well
DATASET_TRAIN_LIVE: dict[str, dict[str, Any]] = {
    "generator": {"velocity_weight": 0.2},
    "movielens": {"calibrate": True, "taste_weight": 1.0, "velocity_weight": 0.2},
}
# the online learner's other per-dataset settings, chosen the same way: on MovieLens, where
# most users arrive during the stream with a burst of ratings, 10 fold-in steps for users
# with < 5 updates (validation recall@10 0.0307 -> 0.0326; on the generator it costs 0.2)
# and temperature 1.0 (0.0326 -> 0.0392, NDCG@10 up too; on the generator 1.0 loses NDCG)
# taste_weight, users' content tastes (TrainConfig): the best recall@10 of 0.5/0.7/1 on the
# generator's validation replay (0.4775 off -> 0.4810 at 0.5, 0.4677 at 0.7; rechecked with
# worker-sized batches: 0.4797 / 0.4811 / 0.4705 at 0 / 0.5 / 0.7). MovieLens, re-chosen with
# worker-sized batches (the evaluator had cut a batch at every arrival, median 3 events):
# weight 0.5/0.6/0.7/0.8 with decay 1 (a plain sum) 0.0404/0.0407/0.0402/0.0385, NDCG
# 0.0193/0.0196/0.0194/0.0187; 0.7 with decay 0.97 (the old choice) 0.0397 / 0.0191; off
# 0.0386. On the generator's the decay costs (0.4810 -> 0.4710 at 0.97), so 1 there too.
# session_weight (the skip-gram), rechecked on MovieLens with worker-sized batches: 0 / 0.3 /
# 0.5 / 1 / 1.5 / 2: 0.0400 / 0.0400 / 0.0407 / 0.0410 / 0.0410 / 0.0408, NDCG 0.0192 /
# 0.0194 / 0.0196 / 0.0196 / 0.0194 / 0.0193; and again after the fallback fix at lr 0.03,
# mix 2: 0.5 / 1 / 1.5 / 2 / 3 / 4: 0.0416 / 0.0425 / 0.0430 / 0.0431 / 0.0429 / 0.0423, NDCG
# 0.0204 / 0.0207 / 0.0207 / 0.0208 / 0.0207 / 0.0205: 2 by the rule (each step a few
# targets of 13,863: noise-sized). Rechecked with it, kept: taste 0.5 / 0.6 / 0.7 0.0425 /
# 0.0425 / 0.0407 (NDCG 0.0206 / 0.0207 / 0.0199), fold-in 5 / 10 / 20 0.0422 / 0.0425 /
# 0.0426 (0.0203 / 0.0207 / 0.0209; 20 with skip-gram 1.5: 0.0423), temperature 0.7 / 1 /
# 1.5 0.0417 / 0.0421 / 0.0421 (0.0204 / 0.0205 / 0.0203, at lr 0.05). Fold-in 20 was
# better by one target alone and worse with the skip-gram raised, so 10 stays
DATASET_TRAIN: dict[str, dict[str, Any]] = {
    "generator": {"taste_weight": 0.5},
    "movielens": {
        "fold_in": 10,
        "fold_in_below": 5,
        "temperature": 1.0,
        "taste_weight": 0.6,
        "session_weight": 2.0,
    },
}
# serving's popularity mix (the API's --popular-mix) per dataset, chosen the same way: best
# of off/interleave at 5/20 and all-popular below 5/20 updates on MovieLens's validation
# replay (0.0392 -> 0.0399, NDCG 0.0185 -> 0.0187); on the generator's it costs 0.8 points.
# Rechecked after the fallback fix (10k window): m 2 / 5 / 10 / off 0.0421 / 0.0421 / 0.0411 /
# 0.0368 (NDCG 0.0205 / 0.0203 / 0.0200 / 0.0180); at lr 0.03 2 / 5 0.0425 / 0.0421 -> 2
DATASET_POPULAR_MIX = {"movielens": 2.0}
# what "popular" counts: the last N positives, for the popularity baseline and for every
# model's fallback and mix alike (a replica's --popular-window). Chosen for the popularity
# baseline on each validation replay by the rule in docs/learning.md (recall@10, NDCG not
# below the old
# 20k's): MovieLens 1k/2k/5k/10k/20k/40k 0.0271/0.0330/0.0361/0.0377/0.0322/0.0270 (NDCG
# 0.0134/0.0167/0.0172/0.0184/0.0156/0.0134); generator 0.3410/0.3461/0.3433/0.3428/0.3419/
# 0.3419 (NDCG 0.1891/0.1892/0.1902/0.1897/0.1893/0.1894: 2k's NDCG is below 20k's, so 5k)
DATASET_POPULAR_WINDOW = {"generator": 5_000, "movielens": 10_000}
# item kNN's popularity exponent (ItemKNN: 0.5 is cosine, lower leans to popular items), the
# best recall@10 on each validation replay: generator 0/0.1/0.2/0.3/0.5 0.4831/0.4865/
# 0.4761/0.3954/0.1969; MovieLens 0/0.2/0.3/0.4/0.5 0.0356/0.0381/0.0384/0.0368/0.0341
DATASET_KNN_ALPHA = {"generator": 0.1, "movielens": 0.3}


@dataclass(frozen=True)
class RunConfig:
    out: Path = Path("reports/eval")
    events_file: Path | None = None  # None: ``dataset``
    dataset: str = "generator"  # or "movielens" (ml-latest-small, from ``data_dir``)
    data_dir: Path | None = None  # None: evaluation.movielens.DEFAULT_DIR
    # drop what a user has interacted with from the lists; None: on for movielens (a movie
    # is rated once), off for the generator (its users come back to items)
    exclude_seen: bool | None = None
    # evaluate on the history alone (bootstrap on its first history_share, replay the rest):
    # settings are chosen here, never on the evaluated part of the stream
    validation: bool = False
    # only the online learner, its no-blending twin and popularity: the two bars' comparisons,
    # about three times faster, for sweeping a setting
    sweep: bool = False
    # > 0: also the learner split as the scale-out worker splits it, its item view this
    # many steps old (evaluation.models.SplitStreambed)
    split_lag: int = 0
    # the online learner's; None: DATASET_LR, or DATASET_LR_LIVE with batch_ms (chosen on
    # validation at that cadence)
    lr: float | None = None
    # the online learner's TrainConfig.negative_sampler; None: DATASET_NEGATIVES_LIVE with
    # batch_ms, else uniform
    negative_sampler: str | None = None
    # the online learner's TrainConfig.calibrate (where it has a content taste); None:
    # DATASET_TRAIN_LIVE's with batch_ms, else off
    calibrate: bool | None = None
    # the online learner's TrainConfig.velocity_weight; None: DATASET_TRAIN_LIVE's with
    # batch_ms, else off
    velocity: float | None = None
    events: int = 60_000
    users: int = 500
    items: int = 2_000
    clusters: int = 8
    tag_affinity: float = 0.0
    seed: int = 0
    history_share: float = 0.4
    dim: int = 32
    epochs: int = 8
    k: int = 10
    batch_size: int = BATCH_SIZE
    # cut batches also by event time, as the worker's window does live (None: by size alone)
    batch_ms: float | None = None
    blend_k: float = 5.0
    session_weight: float | None = None  # the online learner's; None: TrainConfig's
    taste_weight: float | None = None  # the online learner's; None: the dataset's, else off
    taste_decay: float | None = None  # the online learner's; None: the dataset's, else 1
    # a user with n updates gets n / (n + m) of the list from their vector, the rest from
    # popularity (the API's --popular-mix); None: DATASET_POPULAR_MIX (0: off)
    popular_mix: float | None = None
    popular_window: int | None = None  # None: DATASET_POPULAR_WINDOW (else POPULAR_WINDOW)
    als_every: int = 5_000
    # best of factors 8/16/32/64 on the generated stream (tuned in ALS's favour: 8 themes)
    als_factors: int = 8
    knn_alpha: float | None = None  # None: DATASET_KNN_ALPHA (else cosine, 0.5)
    similarity: str = "cosine"
    norm_power: float = 1.0
    save_bootstrap: Path | None = None

    def dataset_lr(self) -> float:
        """The online rate chosen on validation for this dataset at this cadence."""
        chosen = DATASET_LR.get(self.dataset, TrainConfig.lr)
        return chosen if self.batch_ms is None else DATASET_LR_LIVE.get(self.dataset, chosen)

    def dataset_sampler(self) -> str:
        """Where the online learner's sampled negatives come from (``negative_sampler``, else
        the one chosen on validation for this dataset at this cadence)."""
        if self.negative_sampler is not None:
            return self.negative_sampler
        if self.batch_ms is None:
            return TrainConfig.negative_sampler
        return DATASET_NEGATIVES_LIVE.get(self.dataset, TrainConfig.negative_sampler)

    def train(self, **overrides: Any) -> TrainConfig:
        """The online learner's config (overrides: e.g. ``blend_k=0``)."""
        base: dict[str, Any] = {
            "dim": self.dim, "blend_k": self.blend_k, "seed": self.seed,
            "lr": self.dataset_lr() if self.lr is None else self.lr,
            "negative_sampler": self.dataset_sampler(),
            "similarity": self.similarity, "norm_power": self.norm_power,
        }  # fmt: skip
        chosen = {**DATASET_TRAIN.get(self.dataset, {})}
        if self.batch_ms is not None:
            chosen.update(DATASET_TRAIN_LIVE.get(self.dataset, {}))
        given = {} if self.session_weight is None else {"session_weight": self.session_weight}
        if self.calibrate is not None:
            given["calibrate"] = self.calibrate
        if self.taste_weight is not None:
            given["taste_weight"] = self.taste_weight
        if self.taste_decay is not None:
            given["taste_decay"] = self.taste_decay
        if self.velocity is not None:
            given["velocity_weight"] = self.velocity
        config = {**base, **chosen, **given, **overrides}
        # calibration weighs the taste half: without one (taste_weight=0) it has nothing to do
        config["calibrate"] = config.get("calibrate", False) and config.get("taste_weight", 0) > 0
        return TrainConfig(**config)

    @property
    def mix(self) -> float:
        """The online learner's popularity mix (``popular_mix``, else the dataset's)."""
        if self.popular_mix is not None:
            return self.popular_mix
        return DATASET_POPULAR_MIX.get(self.dataset, 0.0)

    @property
    def window(self) -> int:
        """What popularity counts: the last ``window`` positives (``popular_window``, else
        the dataset's)."""
        if self.popular_window is not None:
            return self.popular_window
        return DATASET_POPULAR_WINDOW.get(self.dataset, POPULAR_WINDOW)

    @property
    def alpha(self) -> float:
        """Item kNN's popularity exponent (``knn_alpha``, else the dataset's)."""
        if self.knn_alpha is not None:
            return self.knn_alpha
        return DATASET_KNN_ALPHA.get(self.dataset, 0.5)

    @property
    def generated(self) -> bool:
        """Whether the stream is the generator's (seeded), not a fixed dataset's."""
        return self.events_file is None and self.dataset == "generator"

    def generator(self) -> GeneratorConfig:
        return GeneratorConfig(users=self.users, items=self.items, clusters=self.clusters,
                               seed=self.seed, tag_affinity=self.tag_affinity)  # fmt: skip

    def eval_config(self) -> EvalConfig:
        exclude = self.dataset == "movielens" if self.exclude_seen is None else self.exclude_seen
        return EvalConfig(k=self.k, batch_size=self.batch_size, batch_ms=self.batch_ms,
                          exclude_seen=exclude)  # fmt: skip

    def boot(self) -> BootstrapConfig:
        return BootstrapConfig(dim=self.dim, epochs=self.epochs, seed=self.seed,
                               similarity=self.similarity, norm_power=self.norm_power)  # fmt: skip


class CachedEncoder:
    """Embeds each distinct text once (item titles repeat across models and runs)."""

    def __init__(self, encode: Callable[[list[str]], np.ndarray]) -> None:
        self._encode = encode
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            for text, vec in zip(todo, self._encode(todo), strict=True):
                self._cache[text] = vec
        return np.stack([self._cache[t] for t in texts])


def load_stream(cfg: RunConfig) -> list[Record]:
    if cfg.events_file is not None:
        return read_jsonl(cfg.events_file)
    if cfg.dataset == "movielens":
        from evaluation import movielens

        return movielens.convert(cfg.data_dir or movielens.DEFAULT_DIR)
    if cfg.dataset != "generator":
        raise ValueError(f"unknown dataset {cfg.dataset!r}: generator or movielens")
    g = cfg.generator()
    return generated_stream(users=g.users, items=g.items, clusters=g.clusters, events=cfg.events,
                            seed=g.seed, tag_affinity=g.tag_affinity)  # fmt: skip


def run_bootstrap(
    history: Sequence[Record], encode: Callable[[list[str]], np.ndarray], cfg: BootstrapConfig
) -> Bootstrapped:
    arrivals = {r.item_id: r.text for r in history if isinstance(r, ItemArrival)}
    texts = list(arrivals.values())
    vectors = encode(texts) if texts else np.zeros((0, 384), dtype=np.float32)
    content = dict(zip(arrivals, vectors, strict=True))
    events = [r for r in history if isinstance(r, Interaction)]
    with tqdm(total=cfg.epochs, desc="bootstrap", unit="epoch") as bar:

        def progress(epoch: int, loss: float) -> None:
            bar.set_postfix(loss=f"{loss:.3f}")
            bar.update(1)

        return bootstrap(events, content, cfg, progress)


def build_models(boot: Bootstrapped, history: list[Record], cfg: RunConfig) -> list[Model]:
    events = [r for r in history if isinstance(r, Interaction)]
    popularity = Popularity(cfg.window)
    popularity.learn(events)
    # every model's popular list is the baseline's: same window, the history included
    common: dict[str, Any] = {"history": events, "popular_window": cfg.window}
    mixed = {**common, "popular_mix": cfg.mix}
    learners: list[Model] = [
        Streambed("online", boot, cfg.train(), **mixed),
        Streambed("online, no blending", boot, cfg.train(blend_k=0.0), **mixed),
    ]
    if cfg.split_lag > 0:  # what the scale-out worker's split costs
        learners.append(SplitStreambed(f"online, split in two stages (lag {cfg.split_lag})",
                                       boot, cfg.train(), lag=cfg.split_lag, **mixed))  # fmt: skip
    if cfg.sweep:
        return [*learners, popularity]
    models: list[Model] = [
        *learners,
        Streambed("frozen bootstrap", boot, cfg.train(), online=False, **common),
        popularity,
        ALS(
            events,
            factors=cfg.als_factors,
            retrain_every=cfg.als_every,
            seed=cfg.seed,
            name=f"ALS (implicit, {cfg.als_factors} factors, every {cfg.als_every})",
            popular_window=cfg.window,
        ),  # fmt: skip
        ItemKNN(
            events,
            alpha=cfg.alpha,
            name=f"item kNN (alpha {cfg.alpha:g})",
            popular_window=cfg.window,
        ),  # fmt: skip
    ]
    if cfg.generated:
        models.append(GeneratorOracle(InteractionGenerator(cfg.generator())))
    if cfg.train().session_weight > 0:  # what the skip-gram adds, as blending's row shows
        plain = cfg.train(session_weight=0.0)
        models.insert(1, Streambed("online, no session skip-gram", boot, plain, **mixed))
    if cfg.train().taste:  # what the content-taste rows add
        models.insert(1, Streambed("online, no content taste", boot, cfg.train(taste_weight=0.0),
                                   **mixed))  # fmt: skip
    if cfg.mix > 0:  # what the popularity mix adds
        models.insert(1, Streambed("online, no popularity mix", boot, cfg.train(), **common))
    return models


def run(cfg: RunConfig, encode: Callable[[list[str]], np.ndarray] | None = None) -> dict[str, Any]:
    started = time.monotonic()
    if encode is None:
        from stream.content import MiniLM

        print("loading the content encoder (all-MiniLM-L6-v2, offline) ...")
        encode = MiniLM().encode
    cached = CachedEncoder(encode)
    stream = load_stream(cfg)
    if cfg.validation:
        stream, _ = split(stream, cfg.history_share)
        print("validation: the evaluated part is the history's tail; the rest is not read")
    history, rest = split(stream, cfg.history_share)
    n_hist = sum(isinstance(r, Interaction) for r in history)
    n_rest = sum(isinstance(r, Interaction) for r in rest)
    print(f"stream: {n_hist} history events (bootstrap), {n_rest} evaluated prequentially")
    boot = run_bootstrap(history, cached, cfg.boot())
    if cfg.save_bootstrap is not None:
        boot.save(cfg.save_bootstrap)
    models = build_models(boot, history, cfg)
    prior = dict(zip(boot.items, boot.item_counts.astype(int).tolist(), strict=True))
    # items that arrived during the history are candidates from the start
    seed_items = [r for r in history if isinstance(r, ItemArrival)]
    with tqdm(total=n_rest, desc="prequential", unit="ev") as bar:
        result = prequential(
            seed_items + rest, models, cached, cfg.eval_config(),
            prior_counts=prior, progress=lambda n: bar.update(n - bar.n),
            prior_seen=[r for r in history if isinstance(r, Interaction)],
        )  # fmt: skip
    meta: dict[str, Any] = {k: str(v) for k, v in asdict(cfg).items()}
    online = cfg.train()
    meta.update(online_lr=online.lr, online_temperature=online.temperature,
                online_negatives=online.negative_sampler, calibrated=online.calibrated,
                online_velocity=online.velocity_weight if online.velocity else 0.0,
                fold_in=online.fold_in, popular_mix=cfg.mix, popular_window=cfg.window,
                history_events=n_hist, evaluated_events=n_rest, batches=result.batches,
                seconds=round(time.monotonic() - started, 1))  # fmt: skip
    paths = report.write(result, meta, cfg.out)
    print(report.table(result, meta))
    print("wrote " + ", ".join(str(p) for p in paths))
    return {"summary": result.summary(), "cold_start": result.cold_start(), "paths": paths,
            "paired": report.paired(result)}  # fmt: skip


def check_seeds(cfg: RunConfig, seeds: Sequence[int]) -> None:
    """Refuse what :func:`run_seeds` cannot pool (ValueError, with the reason)."""
    if len(set(seeds)) < 2:
        raise ValueError(f"--seeds needs at least two different seeds, got {list(seeds)}")


# what may differ between runs pooled over seeds: the seed, where a run went and what it
# took, and --sweep (fewer models, the same online learner: pooled over the common models)
POOL_FREE = {"seed", "out", "seconds", "batches", "history_events", "evaluated_events",
             "sweep", "save_bootstrap"}  # fmt: skip


def _runs_of(cfg: RunConfig, dirs: dict[int, Path]) -> dict[int, dict[str, Any]]:
    """The saved results of runs to pool, by seed. They must be of the stream ``cfg`` names
    (else, say, MovieLens runs would be pooled as independent generated streams), and ran at
    the same settings but for the seed (``POOL_FREE``): ValueError, naming what differs."""
    runs: dict[int, dict[str, Any]] = {}
    for seed, directory in dirs.items():
        path = directory / "results.json"
        if not path.exists():
            raise ValueError(f"{path} is missing: run that seed first")
        runs[seed] = json.loads(path.read_text())
        meta = runs[seed]["meta"]
        ran = (meta.get("dataset"), meta.get("events_file"))
        want = (cfg.dataset, str(cfg.events_file))
        if ran != want:
            raise ValueError(f"{directory} is a run of dataset={ran[0]}, events_file={ran[1]}; "
                             f"pass the same --dataset / --events-file to pool it")  # fmt: skip
        if int(meta.get("seed", seed)) != seed:
            raise ValueError(f"{directory} holds a run of seed {meta.get('seed')}, not {seed}")
    first, *rest = sorted(runs)
    for seed in rest:
        a, b = runs[first]["meta"], runs[seed]["meta"]
        differ = sorted(k for k in (set(a) | set(b)) - POOL_FREE if a.get(k) != b.get(k))
        if differ:
            shown = ", ".join(f"{k}: {a.get(k)} / {b.get(k)}" for k in differ)
            raise ValueError(f"the runs of seeds {first} and {seed} differ in more than the "
                             f"seed ({shown}): run them at the same settings")  # fmt: skip
    return runs


def run_seeds(
    cfg: RunConfig,
    seeds: Sequence[int],
    encode: Callable[[list[str]], np.ndarray] | None = None,
    *,
    pool_only: bool = False,
) -> dict[str, Any]:
    """:func:`run` once per seed (into ``out/seed-N``), then the runs pooled (``out/pooled.json``,
    ``out/pooled.md``). On the generator each seed is another stream, so its targets are
    independent of the others' and paired counts add up (:func:`report.pool`). A fixed
    dataset (MovieLens, an events file) has the same targets in every run, where only the
    learners' draws differ: it is pooled target by target (:func:`report.pool_targets`).
    ``pool_only``: pool the runs already in ``out/seed-N`` (run side by side, say) without
    running anything."""
    check_seeds(cfg, seeds)
    seeds = list(dict.fromkeys(seeds))
    dirs = {seed: cfg.out / f"seed-{seed}" for seed in seeds}
    runs: dict[int, dict[str, Any]] = {}
    if pool_only:
        runs = _runs_of(cfg, dirs)
    else:
        if encode is None:
            from stream.content import MiniLM

            encode = MiniLM().encode  # loaded once for every run
        for n, seed in enumerate(seeds, 1):
            print(f"--- seed {seed} ({n} of {len(seeds)}) ---")
            runs[seed] = run(replace(cfg, seed=seed, out=dirs[seed]), encode)
    pooled = report.pool(runs) if cfg.generated else report.pool_targets(dirs)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "pooled.json").write_text(json.dumps(pooled, indent=2) + "\n")
    text = report.pooled_table(pooled, cfg.k)
    (cfg.out / "pooled.md").write_text(text)
    print(text)
    print(f"wrote {cfg.out / 'pooled.json'}, {cfg.out / 'pooled.md'}")
    return pooled
