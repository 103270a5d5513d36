"""``streambed demo``: the whole pipeline on generated data, showing recommendations move.

1. bootstrap offline on the first 40% of a generated history: towers, content projection
   (item titles through all-MiniLM-L6-v2) and first rows, then frozen;
2. start a local KRaft broker (unless ``--bootstrap``), the topics, a worker started from
   that bootstrap, and an API;
3. replay the rest of the history through Kafka, with a progress bar, until it is learnt;
4. publish a brand-new item (title only, no interactions) and show it searchable at once;
5. pick an active user and, round after round, send a few clicks/likes on items of
   a theme that user has not been recommended, printing how that theme's share of the
   user's top-10 grows and how long after the events the recommendations changed.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from services.datagen import GeneratorConfig, InteractionGenerator, ItemInfo
from services.datagen.generator import THEMES
from services.local import LocalPipeline, PipelineConfig
from services.producer import EventProducer
from services.prometheus import LocalPrometheus
from stream.schemas import Interaction

TOP_K = 10


@dataclass(frozen=True)
class DemoConfig:
    events: int = 20_000
    bootstrap: str | None = None
    state_dir: Path = Path(".streambed/demo")
    seed: int = 0
    rounds: int = 8
    events_per_round: int = 4
    keep_running: bool = False
    wait_timeout: float = 120.0
    history_share: float = 0.4  # of the generated records, used offline by the bootstrap
    prometheus_port: int | None = None  # start Debian's Prometheus here, scraping the pipeline


def wait_until_learnt(pipe: LocalPipeline, expected: int, timeout: float) -> float:
    """Block until the worker has consumed ``expected`` records; returns the seconds it took."""
    started = time.monotonic()
    done = 0.0
    with tqdm(total=expected, desc="learning", unit="ev") as bar:
        while time.monotonic() - started < timeout:
            done = pipe.consumed()
            bar.update(int(done) - bar.n)
            if done >= expected:
                return time.monotonic() - started
            time.sleep(0.25)
    raise TimeoutError(f"worker consumed {done:.0f} of {expected} events in {timeout:.0f}s")


def content(info: ItemInfo) -> dict[str, object]:
    """The ``items`` record of a generated item (its arrival in event time)."""
    return {"title": info.title, "tags": list(info.tags), "ts": info.ts}


def theme_share(gen: InteractionGenerator, items: list[dict], cluster: int) -> float:
    return sum(gen.cluster_of(i["item_id"]) == cluster for i in items) / max(1, len(items))


# what a demo run leaves in its state directory besides the bootstrap: the local broker's
# log, the worker's RocksDB checkpoint (with its exactly-once record of event ids) and the
# replica's save
RUN_STATE = ("kafka", "worker", "api")


def fresh_state(state_dir: Path) -> list[Path]:
    """Remove an earlier demo run's broker, worker and replica state; returns what went.

    The demo's event ids repeat from run to run (a seeded generator, fixed live-round ids),
    so a worker resumed from the last run's checkpoint would drop them all as duplicates
    and nothing would move. The bootstrap file is kept.
    """
    gone = [state_dir / name for name in RUN_STATE if (state_dir / name).exists()]
    for path in gone:
        shutil.rmtree(path)
    return gone


def bootstrap_offline(gen: InteractionGenerator, history: list, path: Path) -> None:
    """Train and save the bootstrap (kept: a second demo run reuses it)."""
    if path.exists():
        print(f"using the bootstrap in {path}")
        return
    from evaluation.data import ItemArrival, Record
    from evaluation.run import CachedEncoder, run_bootstrap
    from stream.bootstrap import BootstrapConfig
    from stream.content import MiniLM, item_text

    print("bootstrap: loading the content encoder (all-MiniLM-L6-v2, offline) ...")
    encode = CachedEncoder(MiniLM().encode)
    records: list[Record] = [
        ItemArrival(i.item_id, item_text(i.title, i.tags), i.ts) for i in gen.catalogue()
    ]
    for rec in history:
        records.append(ItemArrival(rec.item_id, item_text(rec.title, rec.tags), rec.ts)
                       if isinstance(rec, ItemInfo) else rec)  # fmt: skip
    boot = run_bootstrap(records, encode, BootstrapConfig(seed=gen.config.seed))
    boot.save(path)
    print(f"bootstrap: {len(boot.users)} users, {len(boot.items)} items, loss "
          f"{boot.losses[0]:.2f} -> {boot.losses[-1]:.2f}; saved to {path}")  # fmt: skip


def run_demo(cfg: DemoConfig) -> int:
    from evaluation.run import DATASET_TRAIN
    from stream.training import TrainConfig

    train = TrainConfig(**DATASET_TRAIN["generator"])  # the worker's CLI defaults otherwise
    gen = InteractionGenerator(GeneratorConfig(seed=cfg.seed))
    records = list(gen.replay(cfg.events))
    cut = int(len(records) * cfg.history_share)
    boot_path = cfg.state_dir / "bootstrap.pt"
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    if gone := fresh_state(cfg.state_dir):
        print(f"cleared the last run's {', '.join(p.name for p in gone)} in {cfg.state_dir}")
    bootstrap_offline(gen, records[:cut], boot_path)
    prefix = f"demo{int(time.time())}-" if cfg.bootstrap else ""
    pipe_cfg = PipelineConfig(
        cfg.state_dir, bootstrap=cfg.bootstrap, topic_prefix=prefix,
        app_id=f"{prefix}streambed-worker",
        # users' content tastes at the generator's validated weight (docs/learning.md): the
        # served vectors are then twice --dim long, and the replica must know
        worker_args=("--init-from", str(boot_path), "--taste-weight", str(train.taste_weight)),
        api_args=("--dim", str(train.served_dim)),
    )  # fmt: skip
    print("starting Kafka (KRaft), the stream worker and the retrieval API ...")
    with LocalPipeline(pipe_cfg) as pipe, contextlib.ExitStack() as stack:
        print(f"  broker {pipe.bootstrap} | API {pipe.api_url}/docs | "
              f"worker metrics {pipe.worker_metrics_url}")  # fmt: skip
        print(f"  live page {pipe.api_url}/live")
        if cfg.prometheus_port is not None:
            prom = LocalPrometheus(cfg.state_dir / "prometheus", pipe.metrics_targets,
                                   port=cfg.prometheus_port)  # fmt: skip
            stack.enter_context(prom)
            print(f"  Prometheus {prom.url} (scraping {', '.join(pipe.metrics_targets)})")
        activity: Counter[str] = Counter()
        with EventProducer(pipe.bootstrap, pipe_cfg.topics) as producer:
            described: set[str] = set()  # items whose content was sent
            for info in gen.catalogue():
                producer.send_item(info.item_id, content(info))
                described.add(info.item_id)
            started = time.monotonic()
            live_events = 0
            for rec in records[:cut]:
                if isinstance(rec, ItemInfo):  # arrived during the history: content too
                    producer.send_item(rec.item_id, content(rec))
                    described.add(rec.item_id)
                else:
                    activity[rec.user_id] += 1
            for rec in tqdm(records[cut:], desc="producing", unit="rec"):
                if isinstance(rec, ItemInfo):
                    producer.send_item(rec.item_id, content(rec))
                    described.add(rec.item_id)
                else:
                    producer.send(rec)
                    activity[rec.user_id] += 1
                    live_events += 1
            producer.flush()
            seconds = wait_until_learnt(pipe, live_events, cfg.wait_timeout)
            total = time.monotonic() - started
            print(f"{live_events} events after the bootstrap produced and learnt in {total:.1f}s "
                  f"({live_events / total:.0f} events/s end to end; {seconds:.1f}s after the "
                  f"last send)")  # fmt: skip
            replay = pipe.get("/stats")
            # the catalogue's titles are encoded on the worker beside the events; wait for
            # them, or the new item below would queue behind them (measured: 9.4-10.5 s
            # after its send instead of ~0.1 s, once the events were learnt faster than that)
            wait_for_content(pipe, len(described), cfg.wait_timeout)
            time.sleep(1.0)  # let the replica apply the last vectors
            _show_new_item(pipe, producer, gen)
            live_from = time.time()
            _show_user_moving(pipe, producer, gen, activity, cfg)
        live = pipe.get(f"/stats?since={live_from}")
        print(f"freshness (event produced -> vector searchable), index of {live['items']} items:")
        for label, stats in (("replaying the backlog", replay), ("live rounds", live)):
            f = stats["freshness_seconds"]
            if f["samples"]:
                print(f"  {label:>21}: p50 {f['p50']:.3f}s  p95 {f['p95']:.3f}s  "
                      f"p99 {f['p99']:.3f}s  ({f['samples']} vectors)")  # fmt: skip
        if cfg.keep_running:
            print("running; Ctrl-C to stop")
            try:
                while pipe.alive("worker") and pipe.alive("api"):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    print("stopped")
    return 0


def wait_for_content(pipe: LocalPipeline, items: int, timeout: float) -> None:
    """Block until the worker has embedded at least ``items`` items' content (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pipe.worker_metric("streambed_worker_content_items_total") >= items:
            return
        time.sleep(0.25)
    print(f"the worker had not embedded {items} items' content within {timeout:.0f}s")


def _show_new_item(pipe: LocalPipeline, producer: EventProducer, gen: InteractionGenerator) -> None:
    """A new item, no interactions yet: its title alone makes it retrievable."""
    theme = THEMES[0]
    title = f"limited edition {theme[1]} {theme[2]} {theme[3]}"
    item = f"new-{int(time.time())}"
    sent = time.monotonic()
    producer.send_item(item, {"title": title, "tags": list(theme[:2]), "ts": time.time()})
    producer.flush()
    similar = None
    while similar is None and time.monotonic() - sent < 30:
        try:
            similar = pipe.get(f"/items/{item}/similar?k=5")
        except OSError:
            time.sleep(0.05)
    if similar is None:
        print(f"\nnew item {item!r}: not searchable within 30 s (see the worker log)")
        return
    ms = (time.monotonic() - sent) * 1000
    near = [i["item_id"] for i in similar["items"]]
    same = sum(gen.cluster_of(i) == 0 for i in near if i[1:].isdigit())
    print(
        f"\nnew item {item!r} ('{title}'), no interactions: searchable {ms:.0f} ms after "
        f"its content was sent; nearest items {near} ({same}/5 '{theme[0]}' items)"
    )


def _show_user_moving(
    pipe: LocalPipeline,
    producer: EventProducer,
    gen: InteractionGenerator,
    activity: Counter[str],
    cfg: DemoConfig,
) -> None:
    # a user with some history but not a heavy one: row-wise Adagrad's accumulator makes
    # heavy users' rows move slowly (docs/architecture.md, "Where the code argued with the
    # design")
    moderate = [u for u, n in activity.items() if 8 <= n <= 30] or list(activity)
    user = max(moderate, key=lambda u: (activity[u], u))
    recs = pipe.get(f"/recommendations/{user}?k={TOP_K}")["items"]
    shares = {c: theme_share(gen, recs, c) for c in range(gen.config.clusters)}
    target = min(shares, key=lambda c: (shares[c], c))
    theme = THEMES[target][0]
    popular = sorted(gen.items_in_cluster(target), key=lambda i: -gen.item_pop[int(i[1:])])
    print(f"\nuser {user} ({activity[user]} events so far): top-{TOP_K} by theme now "
          f"{ {THEMES[c][0]: f'{s:.0%}' for c, s in shares.items() if s} }")  # fmt: skip
    print(f"sending {cfg.events_per_round} clicks/likes per round on '{theme}' items ...")
    last_ts = time.time()
    for rnd in range(1, cfg.rounds + 1):
        before = [i["item_id"] for i in recs]
        sent_at, sent_wall = time.monotonic(), time.time()
        for n in range(cfg.events_per_round):
            item = popular[(rnd * cfg.events_per_round + n) % min(len(popular), 12)]
            last_ts += 1.0
            kind = "like" if n % 2 else "click"
            producer.send(Interaction(f"demo-{user}-{rnd}-{n}", user, item, kind, last_ts))
        producer.flush()
        # the round is live once its vectors are searchable: one per event's item + the user's
        fresh = pipe.get(f"/stats?since={sent_wall}")["freshness_seconds"]
        while fresh["samples"] < cfg.events_per_round + 1 and time.monotonic() - sent_at < 5.0:
            time.sleep(0.02)
            fresh = pipe.get(f"/stats?since={sent_wall}")["freshness_seconds"]
        recs = pipe.get(f"/recommendations/{user}?k={TOP_K}")["items"]
        changed = "changed" if [i["item_id"] for i in recs] != before else "unchanged"
        when = (
            f"{changed}; its vectors searchable {fresh['p50'] * 1000:.0f} ms (p50) / "
            f"{fresh['p99'] * 1000:.0f} ms (p99) after produce"
            if fresh["samples"] else "no vector arrived within 5 s"
        )  # fmt: skip
        print(f"  round {rnd}: '{theme}' share of top-{TOP_K} = "
              f"{theme_share(gen, recs, target):.0%}  ({when})")  # fmt: skip
